"""Training ACE-LoRA: the Trainer (epoch loop, checkpoints, validation, logs).

ace_lora.launch builds it from the command line; train.py and train_multi_gpu.py differ only in the
DistributedContext they pass. The optimisation step is ace_lora.train_step.train_step.

Reproducibility: Python, NumPy and torch are seeded with seed + rank; the data order depends only on
(seed, epoch) (see ace_lora/data/train_dataset.py); a resume checkpoint holds the optimizer, scheduler,
scaler, counters, the running loss sums and every rank's RNG states, so an interrupted CPU run resumed
from `checkpoints/last.pt` ends bit-identical to an uninterrupted one.
"""
import json
import math
import os
import random
import signal
import time
from typing import List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import (
    check_finite_optimizer_state,
    check_finite_trainables,
    init_trainables_from,
    load_trainable_state_dict,
    save_released_checkpoint,
    trainable_state_dict,
)
from .config import AceLoRAConfig
from .data.train_dataset import (
    TokenizingCollate,
    TrainingLoader,
    build_training_dataset,
    iterate_batches,
    steps_per_epoch,
)
from .distributed import DistributedContext, all_ranks_true, barrier, gather_objects, run_on_main, sum_over_ranks
from .errors import RunInterrupted, TrainingDiverged, UserInputError
from .evaluation.figures import plot_training_curves
from .evaluation.retrieval import evaluate_retrieval
from .evaluation.tasks import RETRIEVAL, parse_eval_specs
from .evaluation.zero_shot import evaluate
from .factory import build_model
from .interrupts import StopNow, StopRequest
from .io import append_jsonl, atomic_save, read_jsonl, write_resolved_config
from .loggers import ScalarLoggers
from .loss import create_loss
from .methods import get_method, peft_config_for
from .model import AceLoRAModel
from .params.training import DEFAULT_LR
from .run_state import AUTO, RunState, data_identity, rng_state
from .train_step import train_step, warmup_cosine_schedule, wrap_ddp

METRICS_FILE = "metrics.jsonl"  # one record per epoch (and epoch 0 / a final partial epoch)
STEPS_FILE = "steps.jsonl"  # mean loss and learning rate every --log-every-steps
CURVES_FILE = "training_curves.png"
RELEASED_NAME = "ACE-LoRA_weights_{}.pt"
# --------------------------------------------------------------------------- building blocks


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also every CUDA device


def model_config(args) -> AceLoRAConfig:
    """The model of the training flags; --method decides what trains besides the scale (ace_lora.methods)."""
    own_lora = get_method(args.method).own_lora
    return AceLoRAConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                         params=list(args.params) if own_lora else [], position=args.position, topk=args.topk,
                         hidden_features=args.hidden_features, apply_gnn_encoders=args.apply_gnn_encoders,
                         method=args.method, peft=peft_config_for(args.method, args.lora_r, args.lora_alpha,
                                                                  args.lora_dropout, args.peft_config))


def finite_or_none(value) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def validation_metrics(model, sets: List[Tuple[str, str, str, Optional[str]]], *, batch_size: int,
                       num_workers: int, precision: str, progress: bool) -> dict:
    """What a run logs after each epoch: zero-shot AUROC / accuracy of each validation set and the
    retrieval metrics of a `retrieval` set (metrics.jsonl keys `<prefix>_auroc`, `retrieval_i2t_recall@1`, ...).
    `sets`: (key prefix, task, CSV, data root); the model is evaluated where it is, LoRA not merged."""
    out = {}
    for prefix, task, csv, root in sets:
        if task == RETRIEVAL:
            metrics = evaluate_retrieval(model, csv, root, batch_size=batch_size, num_workers=num_workers,
                                         precision=precision, progress=progress).metrics
            out.update({f"retrieval_{k}": v for k, v in metrics.items() if k.startswith(("i2t", "t2i"))})
            continue
        result = evaluate(model, task, csv, root, batch_size=batch_size, num_workers=num_workers, device=None,
                          precision=precision, n_bootstrap=0, progress=progress)
        out[f"{prefix}_auroc"] = finite_or_none(result.metrics["auroc"])
        if "accuracy" in result.metrics:
            out[f"{prefix}_accuracy"] = finite_or_none(result.metrics["accuracy"])
    return out


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
        self.loss = create_loss(None if args.loss == AUTO else args.loss,  # resolved once, handed to every step
                                has_logit_bias=self.raw_model.logit_bias is not None)
        args.loss = self.loss.name  # the run records what trained
        if self.raw_model.logit_bias is not None and not self.loss.sigmoid:
            self.raw_model.logit_bias.requires_grad_(False)  # unused by InfoNCE: trained, it would stall DDP
            self.raw_model.method_parameter_count = self.raw_model.num_trainable()
        if args.init_from:
            init_trainables_from(self.raw_model, args.init_from)  # trainables only: a fresh optimiser and schedule
        self.model = self.raw_model
        if context.is_distributed:
            self.model = wrap_ddp(self.raw_model, self.device)

        self.dataset = build_training_dataset(
            args.train_csv, self.raw_model.preprocess, args.data_root, args.label_csv, args.split,
            args.uncertain_policy, quiet=not context.is_main, fast_decode=args.fast_decode,
            image_cache=args.image_cache, image_cache_rebuild=args.image_cache_rebuild, num_workers=args.num_workers,
            skip_unreadable=None, progress=args.progress,
            run_on_main=lambda work: run_on_main(work, context, "building the image cache"))
        self.collate = TokenizingCollate(self.raw_model.tokenizer)
        self.loader = TrainingLoader(self.dataset, self.collate, batch_size=args.batch_size, seed=args.seed,
                                     rank=context.rank, world_size=context.world_size, num_workers=args.num_workers,
                                     pin_memory=self.device.type == "cuda")
        self.steps_per_epoch = steps_per_epoch(len(self.dataset), args.batch_size, context.world_size)
        if self.steps_per_epoch == 0:
            raise UserInputError(f"{args.train_csv}: {len(self.dataset)} training rows, fewer than one global batch "
                                 f"({args.batch_size} x {context.world_size} processes); lower --batch-size")
        self.total_steps = self.steps_per_epoch * args.epochs
        self.run = RunState(settings=json.loads(json.dumps(vars(args), default=str)),
                            model_config=self.config.to_dict(),
                            data=data_identity(args.train_csv, self.dataset.image_paths),
                            world_size=context.world_size, steps_per_epoch=self.steps_per_epoch,
                            architecture=self.raw_model.architecture)
        if resume_state is not None:
            self.run.check_continues(resume_state)  # before the optimiser exists: a wrong run fails at once

        self.optimizer = torch.optim.AdamW(self.raw_model.trainable_parameters(), lr=args.lr,
                                           weight_decay=args.weight_decay, betas=tuple(args.betas))
        self.scheduler = warmup_cosine_schedule(self.optimizer, round(args.warmup_epochs * self.steps_per_epoch),
                                                self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.precision == "fp16")

        self.images_per_step = args.batch_size * context.world_size
        self.stop = StopRequest()
        self.loggers: Optional[ScalarLoggers] = None  # TensorBoard / W&B, rank 0 (created in fit)

    # ---- paths and files ------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def _write_record(self, name: str, record: dict) -> None:
        """Append to steps.jsonl / metrics.jsonl and send the same numbers to TensorBoard / W&B (rank 0)."""
        if not self.context.is_main:
            return
        append_jsonl(self._path(name), record)
        if self.loggers is not None:
            if name == STEPS_FILE:
                self.loggers.log({"loss": record["loss"], "lr": record["lr"],
                                  "logit_scale": self.raw_model.logit_scale.item()}, record["step"], "train")
            else:
                self.loggers.log({k: v for k, v in record.items() if k not in ("epoch", "step")}, record["step"],
                                 "epoch")

    def _truncate_logs(self, step: int) -> None:
        """Drop log records after the checkpoint we resume from (written before an interruption)."""
        for name in (METRICS_FILE, STEPS_FILE):
            kept = [r for r in read_jsonl(self._path(name)) if r["step"] <= step]
            with open(self._path(name), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    # ---- checkpoints ----------------------------------------------------------------------
    def save(self, best: bool = False) -> None:
        """checkpoints/last.pt (and best.pt) plus, for our own LoRA methods, the released-format weights
        (the other methods have no released format: their checkpoints load everywhere); collective in DDP."""
        rng_states = gather_objects(rng_state(), self.context)
        try:
            check_finite_trainables(self.raw_model)
            check_finite_optimizer_state(self.optimizer)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} at step {self.run.step}; {self._after_divergence()}") from None
        if self.context.is_main:
            state = self.run.checkpoint(trainable_state_dict(self.raw_model), self.optimizer.state_dict(),
                                        self.scheduler.state_dict(), self.scaler.state_dict(), rng_states)
            for name in ("last", "best") if best else ("last",):
                atomic_save(state, os.path.join(self.checkpoint_dir, f"{name}.pt"))
                if get_method(self.config.method).released_format:
                    save_released_checkpoint(self.raw_model, self._path(RELEASED_NAME.format(name)),
                                             loss=self.loss.name)
        self.run.saved_step = self.run.step

    def resume(self) -> None:
        """Continue from the checkpoint `check_continues` accepted: tensors, optimiser, run state, RNG."""
        state, path = self.resume_state, self.resume_state["path"]
        load_trainable_state_dict(self.raw_model, state["trainable"], path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError) as err:
            raise UserInputError(f"{path}: optimizer state does not fit this model ({err})") from err
        self.run.restore(state, self.context.rank)
        if self.context.is_main:
            self._truncate_logs(self.run.step)
            print(f"resumed from {path}: epoch {self.run.epoch + 1}, step {self.run.step} "
                  f"({self.run.step_in_epoch} of {self.steps_per_epoch} done in this epoch)")

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Validation metrics of the current model (rank 0 only); eval mode and no_grad, LoRA not merged."""
        sets = ([("val", self.args.val_dataset, self.args.val_csv, self.args.val_data_root)]
                if self.args.val_dataset else [])
        sets += [(task, task, csv, root) for task, csv, root in self.eval_specs]
        return validation_metrics(self.raw_model, sets, batch_size=self.args.batch_size,
                                  num_workers=self.args.num_workers, precision=self.args.precision,
                                  progress=self.args.progress)

    def _evaluate_on_main(self) -> dict:
        """`evaluate()` on rank 0 ({} elsewhere); a failure there stops every rank (collective)."""
        return run_on_main(self.evaluate, self.context, "evaluation") or {}

    def _is_improvement(self, record: dict) -> bool:
        metric = "val_auroc" if self.args.val_dataset else "train_loss"
        value = record.get(metric)
        if value is None:
            return False
        if self.run.best is None or self.run.best["metric"] != metric:
            better = True
        else:
            better = value > self.run.best["value"] if metric == "val_auroc" else value < self.run.best["value"]
        if better:
            self.run.best = {"metric": metric, "value": value, "epoch": record["epoch"]}
        return better

    # ---- the loop -------------------------------------------------------------------------
    def _max_steps_reached(self) -> bool:
        return self.args.max_steps is not None and self.run.step >= self.args.max_steps

    def _train_epoch(self) -> Tuple[bool, float, int]:
        """Train until the epoch ends (True) or --max-steps stops it (False); also (seconds, steps run)."""
        args, ctx = self.args, self.context
        loader = self.loader.epoch(self.run.epoch, self.run.step_in_epoch)
        self.model.train()
        bar = tqdm(total=self.steps_per_epoch, initial=self.run.step_in_epoch, unit="step", leave=False,
                   desc=f"epoch {self.run.epoch + 1}/{args.epochs}", disable=not (ctx.is_main and args.progress))
        start, steps_run = time.perf_counter(), 0
        for batch in iterate_batches(loader):
            if self._stop_requested():
                bar.close()
                self._save_and_stop()
            try:
                loss, lr = train_step(self.model, batch, self.optimizer, self.scheduler, self.scaler,
                                      device=self.device, precision=args.precision,
                                      loss_fn=self.loss,
                                      gather_negatives=args.gather_negatives, context=ctx)
            except TrainingDiverged as err:
                bar.close()
                raise TrainingDiverged(f"{err} at step {self.run.step + 1} (epoch {self.run.epoch + 1}); stopped "
                                       f"without saving it; {self._after_divergence()}") from None
            self.run.step += 1
            self.run.step_in_epoch += 1
            steps_run += 1
            for acc in (self.run.epoch_loss, self.run.log_loss):
                acc[0] += loss
                acc[1] += 1
            if args.log_every_steps and self.run.step % args.log_every_steps == 0:
                self._write_record(STEPS_FILE, {"step": self.run.step, "epoch": self.run.epoch + 1,
                                                "loss": self.run.log_loss[0] / self.run.log_loss[1], "lr": lr})
                self.run.log_loss = [0.0, 0]
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            bar.update()
            epoch_done = self.run.step_in_epoch == self.steps_per_epoch
            if self._max_steps_reached() and not epoch_done:
                bar.close()
                # no epoch has ended yet: the final weights are the best known, and best.pt is what evaluations read
                self.save(best=not os.path.isfile(os.path.join(self.checkpoint_dir, "best.pt")))
                return False, time.perf_counter() - start, steps_run
            if args.save_every_steps and self.run.step % args.save_every_steps == 0 and not epoch_done:
                self.save()
        bar.close()
        return True, time.perf_counter() - start, steps_run

    def _stop_requested(self) -> bool:
        """A signal reached this or another rank (collective: every rank stops at the same step)."""
        return not all_ranks_true(self.stop.signum is None, self.context)

    def _kept(self) -> str:
        """What a stopped run leaves to continue from (every checkpoint written holds finite weights only)."""
        if self.run.saved_step is not None:
            last = os.path.join(self.checkpoint_dir, "last.pt")
            return (f"the last checkpoint, {last} (step {self.run.saved_step}), holds finite weights; continue from "
                    "it with --resume latest")
        return "nothing was saved, so start again with --overwrite"

    def _after_divergence(self) -> str:
        """What a diverged run leaves, and the command that continues. Every checkpoint written holds finite
        weights and optimiser state, but resuming one with the same flags repeats the divergence (training is
        deterministic, and a resume keeps --lr), and weights grown under too high a rate may diverge under a
        lower one too: the command given starts over with a lower --lr (a tenth, at most the default)."""
        lower = f"--lr {min(self.args.lr / 10, DEFAULT_LR):g}"
        if self.run.saved_step is not None:
            last = os.path.join(self.checkpoint_dir, "last.pt")
            return (f"the last checkpoint, {last} (step {self.run.saved_step}), holds finite weights and optimiser "
                    f"state, but resuming it would repeat this: start again with a lower learning rate, --overwrite "
                    f"{lower} (or keep what it learned: --init-from {last} {lower} --output-dir NEW_FOLDER)")
        return f"nothing was saved: start again with a lower learning rate, --overwrite {lower}"

    def _save_and_stop(self) -> None:
        self.save()
        signum = self.stop.signum or signal.SIGTERM
        raise RunInterrupted(f"interrupted at step {self.run.step}; resume with --resume latest", 128 + int(signum))

    def _end_epoch(self, seconds: float, steps_run: int) -> dict:
        loss_sum, count = sum_over_ranks(self.run.epoch_loss, self.context)
        self.run.epoch += 1
        record = {"epoch": self.run.epoch, "step": self.run.step, "train_loss": loss_sum / count,
                  "lr": self.scheduler.get_last_lr()[0], "time_s": seconds,
                  "images_per_s": steps_run * self.images_per_step / seconds if seconds > 0 else None}
        self.run.step_in_epoch, self.run.epoch_loss = 0, [0.0, 0]
        if self.has_eval:
            self.save()  # last.pt before evaluating: a failing evaluation loses no training
        record.update(self._evaluate_on_main())
        improved = False
        if self.context.is_main:
            improved = self._is_improvement(record)
            record["best"] = improved
            self._write_record(METRICS_FILE, record)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            self._plot_curves()
        self.save(best=improved)  # last.pt again (the best so far, the RNG after evaluating), best.pt if improved
        return record

    def _validate_partial_epoch(self) -> None:
        """Stopped mid-epoch by --max-steps: validate the final weights too (once). Rank 0 only."""
        records = read_jsonl(self._path(METRICS_FILE))
        if not records or records[-1]["step"] != self.run.step:
            epoch = self.run.epoch + self.run.step_in_epoch / self.steps_per_epoch
            self._write_record(METRICS_FILE, {"epoch": epoch, "step": self.run.step, "partial_epoch": True,
                                              **self.evaluate()})

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
        if ctx.is_main and (args.tensorboard or args.wandb):
            self.loggers = ScalarLoggers(self.out_dir, args.tensorboard, args.wandb, vars(args),
                                         resume_step=self.run.step if self.resume_state is not None else None)
        try:
            return self._fit()
        finally:
            if self.loggers is not None:
                self.loggers.close()

    def _fit(self) -> dict:
        args, ctx = self.args, self.context
        if self.resume_state is None and args.val_before_training and self.has_eval:
            self._write_record(METRICS_FILE, {"epoch": 0, "step": 0, **self._evaluate_on_main()})
        barrier(ctx)
        if ctx.is_main:
            print(f"training {self.raw_model.num_trainable()} parameters on {len(self.dataset)} image-report pairs: "
                  f"{self.steps_per_epoch} steps/epoch x {args.epochs} epochs, {ctx.world_size} process(es), "
                  f"batch {args.batch_size} per process, {args.precision} on {self.device}")
        try:
            with self.stop:
                while self.run.epoch < args.epochs and not self._max_steps_reached():
                    epoch_done, seconds, steps_run = self._train_epoch()
                    if epoch_done:
                        self._end_epoch(seconds, steps_run)
        except StopNow as stop:
            raise RunInterrupted(f"{stop}: stopped at once during step {self.run.step + 1}; {self._kept()}",
                                 128 + stop.signum) from None
        if self.run.step_in_epoch and self.has_eval:
            run_on_main(self._validate_partial_epoch, ctx, "evaluation")
        if ctx.is_main:
            self._plot_curves()
            reason = (f"stopped at --max-steps {args.max_steps}" if self.run.epoch < args.epochs
                      else f"finished {args.epochs} epochs")
            print(f"{reason} (step {self.run.step}); weights: {os.path.join(self.checkpoint_dir, 'last.pt')} and "
                  f"{os.path.join(self.checkpoint_dir, 'best.pt')}", flush=True)
        barrier(ctx)
        return {"epoch": self.run.epoch, "step": self.run.step, "best": self.run.best}


