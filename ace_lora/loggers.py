"""Training logs people can watch: TensorBoard scalars (`--tensorboard`) and Weights & Biases (`--wandb`).

The same numbers as steps.jsonl (train/loss, train/lr, train/logit_scale at each logged step) and
metrics.jsonl (epoch/<key>: loss, learning rate, throughput and every validation metric). Rank 0 only.
"""
import importlib.util
import os
from typing import Optional

from .errors import UserInputError

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
