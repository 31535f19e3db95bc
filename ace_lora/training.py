"""Training ACE-LoRA: the optimisation step, the epoch loop, resume checkpoints and logs.

train.py and train_multi_gpu.py differ only in the DistributedContext they pass to `run_training`;
`train_step` is the one place where a batch becomes a parameter update.

Reproducibility: Python, NumPy and torch are seeded with seed + rank; the data order depends only on
(seed, epoch) (see ace_lora/data/train_dataset.py); a resume checkpoint holds the optimizer, scheduler,
scaler, counters, the running loss sums and every rank's RNG states, so an interrupted CPU run resumed
from `checkpoints/last.pt` ends bit-identical to an uninterrupted one.
"""
import hashlib
import inspect
import json
import math
import os
import random
import signal
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .io import append_jsonl, atomic_save, prepare_output_dir, read_jsonl, write_resolved_config
from .runtime import autocast, resolve_precision

from .checkpoint import (init_trainables_from, load_resume_checkpoint, load_trainable_state_dict,
                         restore_rng_state, rng_state, save_released_checkpoint, trainable_state_dict)
from .data.paths import data_root_for
from .data.train_dataset import (TokenizingCollate, build_training_dataset, epoch_loader, iterate_batches,
                                 steps_per_epoch)
from .distributed import (DistributedContext, all_ranks_true, barrier, gather_objects, run_on_main,
                          sum_over_ranks)
from .errors import RunInterrupted, UserInputError
from .evaluation.figures import plot_training_curves
from .factory import build_model
from .loss import gather_batch, label_guided_info_nce
from .config import AceLoRAConfig
from .model import AceLoRAModel
from .run_folder import RunLock, check_run_folder, clear_run_files

CHECKPOINT_FORMAT = "ace-lora-training-1"
METRICS_FILE = "metrics.jsonl"  # one record per epoch (and epoch 0 / a final partial epoch)
STEPS_FILE = "steps.jsonl"  # mean loss and learning rate every --log-every-steps
CURVES_FILE = "training_curves.png"
RELEASED_NAME = "ACE-LoRA_weights_{}.pt"
# Flags that shape a run (model, optimisation, schedule): a resumed run must keep every one. The data is
# compared by identity (CSV path, row count, fingerprint of the image paths), see `data_identity`.
RUN_SHAPING_FLAGS = ("model", "lora_r", "lora_alpha", "lora_dropout", "params", "position", "topk",
                     "hidden_features", "apply_gnn_encoders", "loss", "init_from", "split", "uncertain_policy",
                     "batch_size", "epochs", "lr", "weight_decay", "betas", "warmup_epochs", "seed",
                     "gather_negatives")


# --------------------------------------------------------------------------- building blocks


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also every CUDA device


def model_config(args) -> AceLoRAConfig:
    return AceLoRAConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, params=list(args.params),
                         position=args.position, topk=args.topk, hidden_features=args.hidden_features,
                         apply_gnn_encoders=args.apply_gnn_encoders)


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Per-step factor: linear from 0 over `warmup_steps`, then half a cosine down to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class NonFiniteLoss(UserInputError):
    """A NaN/inf loss: the run stops before the update, so the last checkpoint stays the last good one."""


def train_step(model, batch, optimizer, scheduler, scaler, *, device: torch.device, precision: str,
               use_labels: bool, gather_negatives: bool, context: DistributedContext) -> Tuple[float, float]:
    """One update from one batch (images (B, 3, H, W), token ids (B, L), labels (B, 14)).

    `model` is the AceLoRAModel or its DistributedDataParallel wrapper. With `gather_negatives` in DDP
    the loss is computed over the global batch on every rank (ace_lora.loss.gather_batch). A NaN/inf loss
    on any rank stops every rank before the update. Returns (loss, learning rate of this step).
    """
    images, ids, labels = (t.to(device, non_blocking=True) for t in batch)
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, precision):
        image_emb, text_emb, scale = model(images, ids)  # (B, D), (B, D), ()
    labels = labels if use_labels else None
    if gather_negatives and context.is_distributed:
        image_emb, text_emb, labels = gather_batch(image_emb, text_emb, labels)  # (world * B, D)
    loss = label_guided_info_nce(image_emb, text_emb, scale, labels)
    value = loss.item()
    if not all_ranks_true(math.isfinite(value), context):
        raise NonFiniteLoss(f"the training loss became {value} (on this or another rank)")
    lr = optimizer.param_groups[0]["lr"]
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return value, lr


def wrap_ddp(model: AceLoRAModel, device: torch.device) -> DistributedDataParallel:
    """DDP without per-step buffer broadcasts: every buffer belongs to the frozen backbone.

    Recent torch calls the switch `forward_sync_buffers` (and warns about `broadcast_buffers`); older
    versions know only `broadcast_buffers`.
    """
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **{no_sync: False})


def parse_eval_specs(specs: List[str]) -> List[Tuple[str, str, Optional[str]]]:
    """'TASK:CSV[:ROOT]' -> (task, csv, root or None)."""
    from .evaluation.tasks import TASKS
    parsed = []
    for spec in specs:
        parts = spec.split(":", 2)
        if len(parts) < 2 or parts[0] not in TASKS:
            raise UserInputError(f"--eval-datasets entry {spec!r} must be TASK:CSV[:ROOT] with TASK one of "
                                 f"{', '.join(TASKS)}")
        parsed.append((parts[0], parts[1], parts[2] if len(parts) == 3 else None))
    tasks = [task for task, _, _ in parsed]
    if len(set(tasks)) != len(tasks):
        raise UserInputError("--eval-datasets lists a task twice")
    return parsed


def check_eval_inputs(args, eval_specs: List[Tuple[str, str, Optional[str]]]) -> None:
    """Every validation / --eval-datasets CSV and image folder exists and each CSV has its task's columns.

    Checked at start-up (the CSV header only): a wrong path would otherwise surface after the first epoch.
    """
    from .evaluation.tasks import TASKS
    sets = ([("--val-csv", "--val-data-root", args.val_dataset, args.val_csv, args.val_data_root)]
            if args.val_dataset else [])
    sets += [(f"--eval-datasets {task}", f"--eval-datasets {task} root", task, csv, root)
             for task, csv, root in eval_specs]
    for csv_flag, root_flag, task, csv, root in sets:
        if not os.path.isfile(csv):
            raise UserInputError(f"{csv_flag} {csv}: file not found")
        root = data_root_for(csv, root)
        if not os.path.isdir(root):
            raise UserInputError(f"{root_flag} {root}: folder not found")
        try:
            header = [str(name).strip() for name in pd.read_csv(csv, nrows=0).columns]
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise UserInputError(f"{csv_flag} {csv}: not a readable CSV file ({str(error).splitlines()[0]})") from None
        missing = [name for name in TASKS[task].required_columns if name not in header]
        if missing:
            raise UserInputError(f"{csv_flag} {csv}: missing column(s) {', '.join(map(repr, missing))} that the "
                                 f"{task} task needs (found: {', '.join(header)})")


def check_training_args(args) -> None:
    """Flag values that torch or NumPy would otherwise reject late, or accept and misuse."""
    if not args.train_csv:
        raise UserInputError("--train-csv is required (or --demo, or --dry-run)")
    for flag, value in (("--batch-size", args.batch_size), ("--epochs", args.epochs)):
        if value < 1:
            raise UserInputError(f"{flag} must be >= 1, got {value}")
    if args.max_steps is not None and args.max_steps < 1:
        raise UserInputError(f"--max-steps must be >= 1, got {args.max_steps}")
    for flag, value in (("--lr", args.lr), ("--weight-decay", args.weight_decay),
                        ("--warmup-epochs", args.warmup_epochs), ("--num-workers", args.num_workers),
                        ("--save-every-steps", args.save_every_steps), ("--log-every-steps", args.log_every_steps)):
        if not value >= 0:  # also NaN
            raise UserInputError(f"{flag} must be >= 0, got {value}")
    if not all(0 <= beta < 1 for beta in args.betas):
        raise UserInputError(f"--betas must both be in [0, 1), got {' '.join(map(str, args.betas))}")
    if args.val_dataset and not args.val_csv:
        raise UserInputError("--val-dataset needs --val-csv")
    if args.val_csv and not args.val_dataset:
        raise UserInputError("--val-csv needs --val-dataset (which zero-shot task it is)")
    if args.init_from and args.resume:
        raise UserInputError("--init-from starts a new run from trained weights, --resume continues a run: give one")
    if args.init_from and not os.path.isfile(args.init_from):
        raise UserInputError(f"--init-from {args.init_from}: file not found")


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


def _finite_or_none(value):
    return float(value) if value is not None and math.isfinite(value) else None


class StopRequest:
    """SIGINT / SIGTERM during training (Ctrl-C, SLURM preemption): the trainer finishes the current step,
    saves checkpoints/last.pt and stops; a second signal stops at once. Handlers are installed only in
    the main thread and restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"{signal.Signals(signum).name}: finishing this step, then saving checkpoints/last.pt (send it again "
              "to stop at once)", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Holds the model, optimiser and counters of one training run; `fit()` runs it."""

    def __init__(self, args, context: DistributedContext, resume_state: Optional[dict] = None):
        """`args` passed `check_run_args`; `resume_state` is `read_resume_state`'s checkpoint (or None)."""
        self.args, self.context, self.device = args, context, context.device
        self.resume_state = resume_state
        self.eval_specs = parse_eval_specs(args.eval_datasets)
        self.has_eval = bool(args.val_dataset or self.eval_specs)
        self.out_dir = args.output_dir
        self.checkpoint_dir = os.path.join(self.out_dir, "checkpoints")
        seed_everything(args.seed + context.rank)

        self.config = model_config(args)
        self.raw_model: AceLoRAModel = build_model(args.model, self.config, self.device)
        if args.init_from:
            init_trainables_from(self.raw_model, args.init_from)  # trainables only: a fresh optimiser and schedule
        self.model = self.raw_model
        if context.is_distributed:
            self.model = wrap_ddp(self.raw_model, self.device)

        self.dataset = build_training_dataset(args.train_csv, self.raw_model.preprocess, args.data_root, args.label_csv,
                                              args.split, args.uncertain_policy, quiet=not context.is_main)
        self.data = data_identity(args.train_csv, self.dataset.image_paths)
        saved_data = (resume_state or {}).get("data")
        if saved_data and saved_data != self.data:
            differs = ", ".join(f"{k} {saved_data.get(k)} (now {v})" for k, v in self.data.items()
                                if saved_data.get(k) != v)
            raise UserInputError(f"--resume {resume_state['path']}: the run was trained on other data: {differs}; "
                                 "resume on the same training CSV and images")
        self.collate = TokenizingCollate(self.raw_model.tokenizer)
        self.steps_per_epoch = steps_per_epoch(len(self.dataset), args.batch_size, context.world_size)
        if self.steps_per_epoch == 0:
            raise UserInputError(f"{args.train_csv}: {len(self.dataset)} training rows, fewer than one global batch "
                                 f"({args.batch_size} x {context.world_size} processes); lower --batch-size")
        self.total_steps = self.steps_per_epoch * args.epochs

        self.optimizer = torch.optim.AdamW(self.raw_model.trainable_parameters(), lr=args.lr,
                                           weight_decay=args.weight_decay, betas=tuple(args.betas))
        self.scheduler = warmup_cosine_schedule(self.optimizer, round(args.warmup_epochs * self.steps_per_epoch),
                                                self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.precision == "fp16")

        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps completed
        self.step_in_epoch = 0
        self.epoch_loss = [0.0, 0]  # this rank's (sum, count) over the current epoch
        self.log_loss = [0.0, 0]  # (sum, count) since the last steps.jsonl record
        self.best: Optional[dict] = None  # {"metric", "value", "epoch"}
        self.images_per_step = args.batch_size * context.world_size
        self.stop = StopRequest()

    # ---- paths and files ------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def _write_record(self, name: str, record: dict) -> None:
        if self.context.is_main:
            append_jsonl(self._path(name), record)

    def _truncate_logs(self, step: int) -> None:
        """Drop log records after the checkpoint we resume from (written before an interruption)."""
        for name in (METRICS_FILE, STEPS_FILE):
            kept = [r for r in read_jsonl(self._path(name)) if r["step"] <= step]
            with open(self._path(name), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    # ---- checkpoints ----------------------------------------------------------------------
    def _state(self, rng_states: List[dict]) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "trainable": trainable_state_dict(self.raw_model),
            "model_config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_loss": list(self.epoch_loss), "log_loss": list(self.log_loss),
            "rng": rng_states,  # one per rank
            "best": self.best,
            "data": self.data,
            "config": json.loads(json.dumps(vars(self.args), default=str)),
        }

    def save(self, best: bool = False) -> None:
        """checkpoints/last.pt (and best.pt) plus the released-format weights; collective in DDP."""
        rng_states = gather_objects(rng_state(), self.context)
        if self.context.is_main:
            state = self._state(rng_states)
            use_labels = self.args.loss == "label_guided"
            for name in ("last", "best") if best else ("last",):
                atomic_save(state, os.path.join(self.checkpoint_dir, f"{name}.pt"))
                save_released_checkpoint(self.raw_model, self._path(RELEASED_NAME.format(name)), use_labels=use_labels)

    def resume(self) -> None:
        state, path = self.resume_state, self.resume_state["path"]
        saved = state["model_config"]
        differs = sorted(k for k, v in self.config.to_dict().items() if saved.get(k) != v)
        if differs:
            raise UserInputError(f"{path} was trained with a different model: "
                                 + ", ".join(f"{k}={saved.get(k)} (now {getattr(self.config, k)})" for k in differs))
        if len(state["rng"]) != self.context.world_size:
            raise UserInputError(f"{path} was written by {len(state['rng'])} process(es), this run has "
                                 f"{self.context.world_size}: resume with the same number of processes (each rank "
                                 "restores its own RNG state)")
        if state["step_in_epoch"] and state["steps_per_epoch"] != self.steps_per_epoch:
            raise UserInputError(f"{path} stopped mid-epoch with {state['steps_per_epoch']} steps per epoch, this run "
                                 f"has {self.steps_per_epoch}: keep the data, --batch-size and the number of processes")
        load_trainable_state_dict(self.raw_model, state["trainable"], path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError) as err:
            raise UserInputError(f"{path}: optimizer state does not fit this model ({err})") from err
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        self.epoch_loss, self.log_loss = list(state["epoch_loss"]), list(state["log_loss"])
        self.best = state["best"]
        restore_rng_state(state["rng"][self.context.rank])
        if self.context.is_main:
            self._truncate_logs(self.step)
            print(f"resumed from {path}: epoch {self.epoch + 1}, step {self.step} "
                  f"({self.step_in_epoch} of {self.steps_per_epoch} done in this epoch)")

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Zero-shot metrics of the current model (rank 0 only); eval mode and no_grad, LoRA not merged."""
        from .evaluation.zero_shot import evaluate
        out = {}
        sets = ([("val", self.args.val_dataset, self.args.val_csv, self.args.val_data_root)]
                if self.args.val_dataset else [])
        sets += [(task, task, csv, root) for task, csv, root in self.eval_specs]
        for prefix, task, csv, root in sets:
            result = evaluate(self.raw_model, task, csv, root, batch_size=self.args.batch_size,
                              num_workers=self.args.num_workers, device=None, precision=self.args.precision,
                              n_bootstrap=0, progress=self.args.progress)
            out[f"{prefix}_auroc"] = _finite_or_none(result.metrics["auroc"])
            if "accuracy" in result.metrics:
                out[f"{prefix}_accuracy"] = _finite_or_none(result.metrics["accuracy"])
        return out

    def _evaluate_on_main(self) -> dict:
        """`evaluate()` on rank 0 ({} elsewhere); a failure there stops every rank (collective)."""
        return run_on_main(self.evaluate, self.context, "evaluation") or {}

    def _is_improvement(self, record: dict) -> bool:
        metric = "val_auroc" if self.args.val_dataset else "train_loss"
        value = record.get(metric)
        if value is None:
            return False
        if self.best is None or self.best["metric"] != metric:
            better = True
        else:
            better = value > self.best["value"] if metric == "val_auroc" else value < self.best["value"]
        if better:
            self.best = {"metric": metric, "value": value, "epoch": record["epoch"]}
        return better

    # ---- the loop -------------------------------------------------------------------------
    def _max_steps_reached(self) -> bool:
        return self.args.max_steps is not None and self.step >= self.args.max_steps

    def _train_epoch(self) -> Tuple[bool, float, int]:
        """Train until the epoch ends (True) or --max-steps stops it (False); also (seconds, steps run)."""
        args, ctx = self.args, self.context
        loader = epoch_loader(self.dataset, self.collate, batch_size=args.batch_size, epoch=self.epoch,
                              seed=args.seed, rank=ctx.rank, world_size=ctx.world_size,
                              skip_batches=self.step_in_epoch, num_workers=args.num_workers,
                              pin_memory=self.device.type == "cuda")
        self.model.train()
        bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, unit="step", leave=False,
                   desc=f"epoch {self.epoch + 1}/{args.epochs}", disable=not (ctx.is_main and args.progress))
        start, steps_run = time.perf_counter(), 0
        for batch in iterate_batches(loader):
            if self._stop_requested():
                bar.close()
                self._save_and_stop()
            try:
                loss, lr = train_step(self.model, batch, self.optimizer, self.scheduler, self.scaler,
                                      device=self.device, precision=args.precision,
                                      use_labels=args.loss == "label_guided",
                                      gather_negatives=args.gather_negatives, context=ctx)
            except NonFiniteLoss as err:
                last = os.path.join(self.checkpoint_dir, "last.pt")
                kept = f"last good checkpoint: {last}" if os.path.isfile(last) else "no checkpoint was written yet"
                raise NonFiniteLoss(f"{err} at step {self.step + 1} (epoch {self.epoch + 1}); stopped before the "
                                    f"update, {kept}; try a lower --lr or --precision fp32") from None
            self.step += 1
            self.step_in_epoch += 1
            steps_run += 1
            for acc in (self.epoch_loss, self.log_loss):
                acc[0] += loss
                acc[1] += 1
            if args.log_every_steps and self.step % args.log_every_steps == 0:
                self._write_record(STEPS_FILE, {"step": self.step, "epoch": self.epoch + 1,
                                                "loss": self.log_loss[0] / self.log_loss[1], "lr": lr})
                self.log_loss = [0.0, 0]
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            bar.update()
            epoch_done = self.step_in_epoch == self.steps_per_epoch
            if self._max_steps_reached() and not epoch_done:
                bar.close()
                self.save()
                return False, time.perf_counter() - start, steps_run
            if args.save_every_steps and self.step % args.save_every_steps == 0 and not epoch_done:
                self.save()
        bar.close()
        return True, time.perf_counter() - start, steps_run

    def _stop_requested(self) -> bool:
        """A signal reached this or another rank (collective: every rank stops at the same step)."""
        return not all_ranks_true(self.stop.signum is None, self.context)

    def _save_and_stop(self) -> None:
        self.save()
        signum = self.stop.signum or signal.SIGTERM
        raise RunInterrupted(f"interrupted at step {self.step}; resume with --resume latest", 128 + int(signum))

    def _end_epoch(self, seconds: float, steps_run: int) -> dict:
        loss_sum, count = sum_over_ranks(self.epoch_loss, self.context)
        self.epoch += 1
        record = {"epoch": self.epoch, "step": self.step, "train_loss": loss_sum / count,
                  "lr": self.scheduler.get_last_lr()[0], "time_s": seconds,
                  "images_per_s": steps_run * self.images_per_step / seconds if seconds > 0 else None}
        self.step_in_epoch, self.epoch_loss = 0, [0.0, 0]
        if self.has_eval:
            self.save()  # last.pt BEFORE evaluating: a failing evaluation loses no training
        record.update(self._evaluate_on_main())
        improved = False
        if self.context.is_main:
            improved = self._is_improvement(record)
            record["best"] = improved
            append_jsonl(self._path(METRICS_FILE), record)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            self._plot_curves()
        self.save(best=improved)  # last.pt again (the best so far, the RNG after evaluating), best.pt if improved
        return record

    def _validate_partial_epoch(self) -> None:
        """Stopped mid-epoch by --max-steps: validate the final weights too (once). Rank 0 only."""
        records = read_jsonl(self._path(METRICS_FILE))
        if not records or records[-1]["step"] != self.step:
            append_jsonl(self._path(METRICS_FILE), {"epoch": self.epoch + self.step_in_epoch / self.steps_per_epoch,
                                                     "step": self.step, "partial_epoch": True, **self.evaluate()})

    def _plot_curves(self) -> None:
        records = read_jsonl(self._path(STEPS_FILE))
        if records:
            plot_training_curves(records, self._path(CURVES_FILE))

    def fit(self) -> dict:
        args, ctx = self.args, self.context
        if ctx.is_main:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            write_resolved_config(args, self.out_dir)
        if self.resume_state is not None:
            self.resume()
        elif args.val_before_training and self.has_eval:
            self._write_record(METRICS_FILE, {"epoch": 0, "step": 0, **self._evaluate_on_main()})
        barrier(ctx)
        if ctx.is_main:
            print(f"training {self.raw_model.num_trainable()} parameters on {len(self.dataset)} image-report pairs: "
                  f"{self.steps_per_epoch} steps/epoch x {args.epochs} epochs, {ctx.world_size} process(es), "
                  f"batch {args.batch_size} per process, {args.precision} on {self.device}")
        with self.stop:
            while self.epoch < args.epochs and not self._max_steps_reached():
                epoch_done, seconds, steps_run = self._train_epoch()
                if epoch_done:
                    self._end_epoch(seconds, steps_run)
        if self.step_in_epoch and self.has_eval:
            run_on_main(self._validate_partial_epoch, ctx, "evaluation")
        if ctx.is_main:
            self._plot_curves()
        barrier(ctx)
        return {"epoch": self.epoch, "step": self.step, "best": self.best}


def print_trainable_count(args, context: DistributedContext) -> int:
    model = build_model(args.model, model_config(args))
    count = model.num_trainable()
    if context.is_main:
        print(f"trainable parameters: {count}")
    return count


def check_run_args(args, context: DistributedContext) -> None:
    """Every check that needs neither the model nor the data: flags, precision, validation inputs."""
    check_training_args(args)
    args.precision = resolve_precision(args.precision, context.device)
    if args.precision == "fp16" and context.device.type != "cuda":
        raise UserInputError("--precision fp16 needs CUDA; use fp32 (or bf16) on the CPU")
    check_eval_inputs(args, parse_eval_specs(args.eval_datasets))


def open_run_folder(args, resuming: bool, lock: RunLock) -> None:
    """Refuse to mix runs (nothing touched), then create the folder and take its lock (rank 0)."""
    fresh_auto = args.resume == "auto" and not resuming  # a requeued job before its first checkpoint
    lock.check_free()
    check_run_folder(args.output_dir, resume=resuming, overwrite=args.overwrite or fresh_auto)
    prepare_output_dir(args.output_dir)
    lock.acquire()
    if not resuming:
        clear_run_files(args.output_dir)


def run_training(args, context: DistributedContext) -> Optional[Dict]:
    """What train.py and train_multi_gpu.py run once their process group (if any) is set up."""
    if args.demo:
        from .demo import run_demo
        return run_demo(args, context)
    if args.dry_run:
        print_trainable_count(args, context)
        return None
    return train_in_run_folder(args, context)


def train_in_run_folder(args, context: DistributedContext) -> Optional[Dict]:
    """Checks, resume state, the output folder and its lock, then the run (None if it was finished)."""
    check_run_args(args, context)
    try:
        state = read_resume_state(args)
    except RunFinished as finished:
        if context.is_main:
            print(finished)
        return None
    lock = RunLock(args.output_dir)
    run_on_main(lambda: open_run_folder(args, state is not None, lock), context, "opening the output folder")
    try:
        return Trainer(args, context, state).fit()
    finally:
        lock.release()
