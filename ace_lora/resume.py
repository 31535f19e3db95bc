"""Continuing a run: which checkpoint `--resume` names, and whether it is the same run.

A resumed run must be the run that wrote the checkpoint: every flag that shapes it (model, optimisation,
schedule) and the data (CSV path, row count, a fingerprint of the image paths) are compared, and each
difference is named. A run that already reached its end says so (RunFinished) instead of training.
"""
import hashlib
import json
import os
from typing import List, Optional

from .checkpoint import load_resume_checkpoint
from .errors import UserInputError

CHECKPOINT_FORMAT = "ace-lora-training-1"
# Flags that shape a run (model, optimisation, schedule): a resumed run must keep every one. The data is
# compared by identity (CSV path, row count, fingerprint of the image paths), see `data_identity`.
RUN_SHAPING_FLAGS = ("model", "method", "peft_config", "lora_r", "lora_alpha", "lora_dropout", "params", "position",
                     "topk", "hidden_features", "apply_gnn_encoders", "loss", "init_from", "split", "uncertain_policy",
                     "batch_size", "epochs", "lr", "weight_decay", "betas", "warmup_epochs", "seed",
                     "gather_negatives")


def data_identity(csv_path: str, image_paths: List[str]) -> dict:
    """What makes a training set the same one: its CSV, its size and the images it lists, in order."""
    digest = hashlib.sha256("\n".join(os.path.abspath(p) for p in image_paths).encode("utf-8")).hexdigest()
    return {"csv": os.path.abspath(csv_path), "rows": len(image_paths), "images_sha256": digest[:16]}


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def compare_run_settings(path: str, saved: dict, args) -> None:
    """A resumed run must be the same run: every shaping flag as saved (one error naming each)."""
    current = json.loads(json.dumps(vars(args), default=str))
    differs = [f"--{key.replace('_', '-')} {_shown(saved.get(key))} (now {_shown(current.get(key))})"
               for key in RUN_SHAPING_FLAGS if key in saved and saved.get(key) != current.get(key)]
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
        path = os.path.join(args.output_dir, "checkpoints", "last.pt")
        if os.path.isfile(path):
            return path
        if args.resume == "latest":
            raise UserInputError(f"--resume latest: no checkpoint at {path}")
        return None
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
