"""A training run's logs (`RunLog`, rank 0): steps.jsonl (mean loss and learning rate every --log-every-steps),
metrics.jsonl (one record per epoch: loss, learning rate, throughput and every validation metric),
training_curves.png, and the same numbers as TensorBoard scalars (`--tensorboard`: train/loss, train/lr,
train/logit_scale, epoch/<key>) and Weights & Biases (`--wandb`).
"""
import importlib.util
import json
import os
from typing import List, Optional

from ace_lora.errors import UserInputError
from ace_lora.evaluation.figures import plot_training_curves
from ace_lora.io import append_jsonl, read_jsonl

METRICS_FILE = "metrics.jsonl"  # one record per epoch (and epoch 0 / a final partial epoch)
STEPS_FILE = "steps.jsonl"  # mean loss and learning rate every --log-every-steps
CURVES_FILE = "training_curves.png"

TENSORBOARD_DIR = "tensorboard"


def check_logger_packages(tensorboard: bool, wandb_project: Optional[str]) -> None:
    """At start-up: the packages the chosen loggers need are installed."""
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserInputError("--tensorboard needs the tensorboard package: pip install tensorboard")
    if wandb_project and importlib.util.find_spec("wandb") is None:
        raise UserInputError("--wandb needs the wandb package: pip install wandb (then wandb login)")


class ScalarLoggers:
    """TensorBoard and/or W&B writers; `log` sends numeric values only (None, bools and text are skipped)."""

    def __init__(self, output_dir: str, tensorboard: bool, wandb_project: Optional[str], config: dict,
                 resume_step: Optional[int] = None):
        self.tensorboard = self.wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # On resume, events after the checkpoint's step (written before an interruption) are dropped.
            self.tensorboard = SummaryWriter(os.path.join(output_dir, TENSORBOARD_DIR), purge_step=resume_step)
        if wandb_project:
            import wandb
            self.wandb = wandb.init(project=wandb_project, dir=output_dir, config=config,
                                    resume="allow" if resume_step else None)

    def log(self, values: dict, step: int, prefix: str) -> None:
        numbers = {f"{prefix}/{k}": float(v) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None and numbers:
            self.wandb.log(numbers, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


class RunLog:
    """The log files of one run in `out_dir`, written by rank 0 only (`active`), and the scalar loggers."""

    def __init__(self, out_dir: str, active: bool):
        self.out_dir, self.active = out_dir, active
        self.scalars: Optional[ScalarLoggers] = None

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def open_scalar_loggers(self, tensorboard: bool, wandb_project: Optional[str], config: dict,
                            resume_step: Optional[int]) -> None:
        if self.active and (tensorboard or wandb_project):
            self.scalars = ScalarLoggers(self.out_dir, tensorboard, wandb_project, config, resume_step)

    def close(self) -> None:
        if self.scalars is not None:
            self.scalars.close()

    def step(self, record: dict, logit_scale: float) -> None:
        """A steps.jsonl record: {step, epoch, loss, lr}."""
        if self.active:
            append_jsonl(self.path(STEPS_FILE), record)
            if self.scalars is not None:
                self.scalars.log({"loss": record["loss"], "lr": record["lr"], "logit_scale": logit_scale},
                                 record["step"], "train")

    def epoch(self, record: dict) -> None:
        """A metrics.jsonl record: {epoch, step, ...}."""
        if self.active:
            append_jsonl(self.path(METRICS_FILE), record)
            if self.scalars is not None:
                self.scalars.log({k: v for k, v in record.items() if k not in ("epoch", "step")}, record["step"],
                                 "epoch")

    def epochs(self) -> List[dict]:
        return read_jsonl(self.path(METRICS_FILE))

    def truncate(self, step: int) -> None:
        """Drop the records after `step` (written before an interruption, past the checkpoint resumed from)."""
        for name in (METRICS_FILE, STEPS_FILE):
            kept = [r for r in read_jsonl(self.path(name)) if r["step"] <= step]
            with open(self.path(name), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    def plot_curves(self) -> None:
        records = read_jsonl(self.path(STEPS_FILE))
        if records:
            plot_training_curves(records, self.path(CURVES_FILE))
