"""A training run's state: what goes into a checkpoint (`save_checkpoints`), what `--resume` checks, what it
restores (`restore_checkpoint`).

A resumed run must be the run that wrote the checkpoint: every flag that shapes it (model, optimisation,
schedule) and the data (CSV path, row count, a fingerprint of the image paths) are compared, and each
difference is named; then the counters, loss sums, best metric and every rank's RNG states come back
(RunState). A run that already reached its end says so (RunFinished) instead of training.
"""
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from ace_lora.errors import UserInputError
from ace_lora.io import atomic_save
from ace_lora.model.checkpoint import (
    check_finite_optimizer_state,
    check_finite_trainables,
    load_checkpoint_file,
    load_trainable_state_dict,
    save_released_checkpoint,
    trainable_state_dict,
)
from ace_lora.model.config import AceLoRAConfig, declared_settings, setting_default, setting_dest
from ace_lora.model.methods import get_method
from ace_lora.model.model import AceLoRAModel
from ace_lora.train.distributed import DistributedContext, gather_objects

CHECKPOINT_FORMAT = "ace-lora-training-1"
CHECKPOINT_DIR = "checkpoints"  # <output-dir>/checkpoints/last.pt and best.pt
# Flags that shape a run (model, optimisation, schedule): a resumed run must keep every one: each declared model
# setting (ace_lora.model.config) and these. The data is compared by identity (CSV path, row count, fingerprint of
# the image paths), see `data_identity`.
MODEL_SETTING_DEFAULTS = {setting_dest(spec): setting_default(spec) for spec in declared_settings()}
RUN_SHAPING_FLAGS = ("model", "method", "peft_config", *MODEL_SETTING_DEFAULTS, "loss", "init_from", "split",
                     "uncertain_policy", "batch_size", "epochs", "lr", "weight_decay", "betas", "warmup_epochs", "seed",
                     "gather_negatives", "fast_decode")


def data_identity(csv_path: str, image_paths: List[str]) -> dict:
    """What makes a training set the same one: its CSV, its size and the images it lists, in order."""
    digest = hashlib.sha256("\n".join(os.path.abspath(p) for p in image_paths).encode("utf-8")).hexdigest()
    return {"csv": os.path.abspath(csv_path), "rows": len(image_paths), "images_sha256": digest[:16]}


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


AUTO = "auto"  # a flag left at auto resolves from the model, so on the same model as the saved run's value


def compare_run_settings(path: str, saved: dict, args) -> None:
    """A resumed run must be the same run: every shaping flag as saved (one error naming each). A model setting
    the checkpoint predates was its default."""
    current = json.loads(json.dumps(vars(args), default=str))
    saved = {**MODEL_SETTING_DEFAULTS, **saved}
    differs = [f"--{key.replace('_', '-')} {_shown(saved.get(key))} (now {_shown(current.get(key))})"
               for key in RUN_SHAPING_FLAGS
               if key in saved and current.get(key) != AUTO and saved.get(key) != current.get(key)]
    if differs:
        raise UserInputError(f"--resume {path}: the run was started with other settings: {', '.join(differs)}; "
                             "resume with the same flags, or start a new run from its weights with --init-from")


class RunFinished(Exception):
    """--resume of a run that has nothing left to do (not an error)."""


def resume_path(args) -> Optional[str]:
    """The checkpoint --resume names: a path, 'latest' (<output-dir>/checkpoints/last.pt, which must exist)
    or 'auto' (last.pt when there is one, else a new run: what a requeued job wants)."""
    if not args.resume:
        return None
    if args.resume in ("latest", "auto"):
        path = os.path.join(args.output_dir, CHECKPOINT_DIR, "last.pt")
        if os.path.isfile(path):
            return path
        if args.resume == "latest":
            raise UserInputError(f"--resume latest: no checkpoint at {path}")
        return None
    if os.path.isdir(args.resume):
        last = os.path.join(args.resume, CHECKPOINT_DIR, "last.pt")
        what = (f"that run's checkpoint is --resume {last}" if os.path.isfile(last) else
                "an export or weights folder holds no training state (optimiser, schedule, data position): start a "
                "new run from trained weights with --init-from WEIGHTS.pt")
        raise UserInputError(f"--resume {args.resume} is a folder, not a checkpoint: --resume takes a training "
                             f"checkpoint file (a run's checkpoints/last.pt) or latest / auto; {what}")
    return args.resume


def read_resume_state(args) -> Optional[dict]:
    """The checkpoint to continue from, checked against the flags before anything is built or written.

    Raises RunFinished when the run already reached --epochs (or --max-steps)."""
    path = resume_path(args)
    if path is None:
        return None
    state = load_resume_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserInputError(f"{path} is not an ACE-LoRA training checkpoint (format {state.get('format')!r})")
    compare_run_settings(path, state.get("config", {}), args)
    if state["epoch"] >= args.epochs or (args.max_steps is not None and state["step"] >= args.max_steps):
        limit = f"--max-steps {args.max_steps}" if state["epoch"] < args.epochs else f"{args.epochs} epochs"
        raise RunFinished(f"{path}: this run is finished ({limit} reached at step {state['step']}); nothing to do")
    state["path"] = path
    return state


# ---- RNG states (one per rank in a checkpoint) ------------------------------------------------------
def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]  # weights_only-safe
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the run state -------------------------------------------------------------------------------
@dataclass
class RunState:
    """A training run's identity and progress: the one object that goes into every checkpoint
    (`checkpoint`), is checked when a run continues (`check_continues`: model, data, processes, epoch
    length) and is restored from it (`restore`). The flags are compared earlier, before anything is
    built (`read_resume_state`)."""

    settings: dict  # the resolved flags (as JSON values)
    model_config: dict
    data: dict  # data_identity
    world_size: int
    steps_per_epoch: int
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    step_in_epoch: int = 0
    epoch_loss: List[float] = field(default_factory=lambda: [0.0, 0])  # this rank's (sum, count) this epoch
    log_loss: List[float] = field(default_factory=lambda: [0.0, 0])  # (sum, count) since the last steps.jsonl line
    best: Optional[dict] = None  # {"metric", "value", "epoch"}
    architecture: Optional[dict] = None  # the backbone's towers (ace_lora.model.towers), recorded for loading
    saved_step: Optional[int] = None  # the step of checkpoints/last.pt (not saved: it is the saved step)

    def checkpoint(self, trainable: dict, optimizer: dict, scheduler: dict, scaler: dict,
                   rng_states: List[dict]) -> dict:
        """The resume checkpoint: this state, the trained tensors, the optimiser's and every rank's RNG."""
        return {"format": CHECKPOINT_FORMAT, "trainable": trainable, "model_config": self.model_config,
                "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler,
                "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
                "steps_per_epoch": self.steps_per_epoch, "epoch_loss": list(self.epoch_loss),
                "log_loss": list(self.log_loss), "rng": rng_states, "best": self.best, "data": self.data,
                "config": self.settings, "architecture": self.architecture}

    def check_continues(self, saved: dict) -> None:
        """`saved` (a resume checkpoint, with its `path`) was written by this run: else one error naming
        what differs."""
        path = saved["path"]
        old_data = saved.get("data")
        if old_data and old_data != self.data:
            differs = ", ".join(f"{k} {old_data.get(k)} (now {v})" for k, v in self.data.items()
                                if old_data.get(k) != v)
            raise UserInputError(f"--resume {path}: the run was trained on other data: {differs}; resume on the "
                                 "same training CSV and images")
        old_model = AceLoRAConfig.from_dict(saved["model_config"], path).to_dict()  # settings it predates: defaults
        differs = sorted(k for k, v in self.model_config.items() if old_model.get(k) != v)
        if differs:
            raise UserInputError(f"{path} was trained with a different model: "
                                 + ", ".join(f"{k}={old_model.get(k)} (now {self.model_config[k]})" for k in differs))
        if len(saved["rng"]) != self.world_size:
            raise UserInputError(f"{path} was written by {len(saved['rng'])} process(es), this run has "
                                 f"{self.world_size}: resume with the same number of processes (each rank "
                                 "restores its own RNG state)")
        if saved["step_in_epoch"] and saved["steps_per_epoch"] != self.steps_per_epoch:
            raise UserInputError(f"{path} stopped mid-epoch with {saved['steps_per_epoch']} steps per epoch, this "
                                 f"run has {self.steps_per_epoch}: keep the data, --batch-size and the number of "
                                 "processes")

    def restore(self, saved: dict, rank: int) -> None:
        """Counters, loss sums and best from `saved`; this rank's RNG states."""
        self.epoch, self.step, self.step_in_epoch = saved["epoch"], saved["step"], saved["step_in_epoch"]
        self.epoch_loss, self.log_loss = list(saved["epoch_loss"]), list(saved["log_loss"])
        self.best, self.saved_step = saved["best"], saved["step"]
        restore_rng_state(saved["rng"][rank])


def load_resume_checkpoint(path: str) -> dict:
    state = load_checkpoint_file(path) if path else None
    if not isinstance(state, dict) or "trainable" not in state:
        raise UserInputError(f"{path} is not a resume checkpoint (no 'trainable' entry)")
    return state


# ---- writing and reading the run's checkpoints ------------------------------------------------------------
RELEASED_NAME = "ACE-LoRA_weights_{}.pt"  # the released weight format beside them, for our own LoRA methods


def save_checkpoints(run: RunState, model: AceLoRAModel, optimizer, scheduler, scaler, context: DistributedContext,
                     out_dir: str, loss_name: str, best: bool = False) -> None:
    """checkpoints/last.pt (and best.pt) plus, for our own LoRA methods, the released-format weights (the other
    methods have no released format: their checkpoints load everywhere). Collective in DDP (every rank's RNG
    state). Nothing is written when a trained tensor or an optimiser moment is not finite (TrainingDiverged)."""
    rng_states = gather_objects(rng_state(), context)
    check_finite_trainables(model)
    check_finite_optimizer_state(optimizer)
    if context.is_main:
        state = run.checkpoint(trainable_state_dict(model), optimizer.state_dict(), scheduler.state_dict(),
                               scaler.state_dict(), rng_states)
        for name in ("last", "best") if best else ("last",):
            atomic_save(state, os.path.join(out_dir, CHECKPOINT_DIR, f"{name}.pt"))
            if get_method(model.config.method).released_format:
                save_released_checkpoint(model, os.path.join(out_dir, RELEASED_NAME.format(name)), loss=loss_name)
    run.saved_step = run.step


def restore_checkpoint(run: RunState, saved: dict, model: AceLoRAModel, optimizer, scheduler, scaler,
                       rank: int) -> None:
    """Continue from the checkpoint `check_continues` accepted: tensors, optimiser, schedule, scaler, run state
    and this rank's RNG."""
    path = saved["path"]
    load_trainable_state_dict(model, saved["trainable"], path)
    try:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
    except (ValueError, KeyError) as err:
        raise UserInputError(f"{path}: optimizer state does not fit this model ({err})") from err
    run.restore(saved, rank)
