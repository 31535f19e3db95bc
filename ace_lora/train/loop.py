"""The training loop: epochs of steps, the evaluation after each epoch, checkpoints at their ends and on a stop.

`Trainer(args, context, resume_state).fit()` runs it on the parts `ace_lora.train.build.build_training` makes
(model, loss, data, optimiser, schedule); one optimisation step is `ace_lora.train.step.train_step`, the
checkpoints are written and restored by `ace_lora.train.run_state`, the logs by `ace_lora.train.loggers.RunLog`.

Reproducibility: Python, NumPy and torch are seeded with seed + rank; the data order depends only on
(seed, epoch) (see ace_lora/data/train_dataset.py); a resume checkpoint holds the optimizer, scheduler,
scaler, counters, the running loss sums and every rank's RNG states, so an interrupted CPU run resumed
from `checkpoints/last.pt` ends bit-identical to an uninterrupted one.
"""
import json
import math
import os
import signal
import time
from typing import List, Optional, Tuple

from tqdm import tqdm

from ace_lora.data.train_dataset import iterate_batches
from ace_lora.errors import RunInterrupted, TrainingDiverged
from ace_lora.evaluation.retrieval import evaluate_retrieval
from ace_lora.evaluation.tasks import RETRIEVAL, parse_eval_specs
from ace_lora.evaluation.zero_shot import evaluate
from ace_lora.io import write_resolved_config
from ace_lora.params.training import DEFAULT_LR
from ace_lora.train.build import build_training
from ace_lora.train.distributed import DistributedContext, all_ranks_true, barrier, run_on_main, sum_over_ranks
from ace_lora.train.interrupts import StopNow, StopRequest
from ace_lora.train.loggers import RunLog
from ace_lora.train.run_state import (
    CHECKPOINT_DIR,
    RunState,
    data_identity,
    restore_checkpoint,
    save_checkpoints,
)
from ace_lora.train.step import train_step


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


def improved_best(best: Optional[dict], record: dict, metric: str) -> Optional[dict]:
    """The new best {"metric", "value", "epoch"} when `record` beats `best` on `metric` (higher AUROC, lower
    loss; a best of another metric is always beaten), else None."""
    value = record.get(metric)
    if value is None:
        return None
    if best is not None and best["metric"] == metric:
        better = value > best["value"] if metric == "val_auroc" else value < best["value"]
        if not better:
            return None
    return {"metric": metric, "value": value, "epoch": record["epoch"]}


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """One training run on the parts `build_training` makes; `fit()` runs it."""

    def __init__(self, args, context: DistributedContext, resume_state: Optional[dict] = None):
        """`args` passed `check_run_args`; `resume_state` is `read_resume_state`'s checkpoint (or None)."""
        self.context, self.device = context, context.device
        self.resume_state = resume_state
        self.parts = parts = build_training(args, context)
        self.args = args = parts.settings  # the flags with what they resolved to
        self.raw_model, self.model, self.steps_per_epoch = parts.raw_model, parts.model, parts.steps_per_epoch
        self.eval_specs = parse_eval_specs(args.eval_datasets)
        self.has_eval = bool(args.val_dataset or self.eval_specs)
        self.out_dir = args.output_dir
        self.checkpoint_dir = os.path.join(self.out_dir, CHECKPOINT_DIR)
        self.run = RunState(settings=json.loads(json.dumps(vars(args), default=str)),
                            model_config=parts.config.to_dict(),
                            data=data_identity(args.train_csv, parts.dataset.image_paths),
                            world_size=context.world_size, steps_per_epoch=self.steps_per_epoch,
                            architecture=self.raw_model.architecture)
        if resume_state is not None:
            self.run.check_continues(resume_state)
        self.images_per_step = args.batch_size * context.world_size
        self.stop = StopRequest()
        self.log = RunLog(self.out_dir, context.is_main)

    # ---- checkpoints ----------------------------------------------------------------------
    def save(self, best: bool = False) -> None:
        """last.pt (and best.pt), collective; a diverged state is not saved and stops the run with advice."""
        parts = self.parts
        try:
            save_checkpoints(self.run, self.raw_model, parts.optimizer, parts.scheduler, parts.scaler, self.context,
                             self.out_dir, parts.loss.name, best)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} at step {self.run.step}; {self._after_divergence()}") from None

    def resume(self) -> None:
        parts, state = self.parts, self.resume_state
        restore_checkpoint(self.run, state, self.raw_model, parts.optimizer, parts.scheduler, parts.scaler,
                           self.context.rank)
        if self.context.is_main:
            self.log.truncate(self.run.step)
            print(f"resumed from {state['path']}: epoch {self.run.epoch + 1}, step {self.run.step} "
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

    # ---- the loop -------------------------------------------------------------------------
    def _max_steps_reached(self) -> bool:
        return self.args.max_steps is not None and self.run.step >= self.args.max_steps

    def _train_epoch(self) -> Tuple[bool, float, int]:
        """Train until the epoch ends (True) or --max-steps stops it (False); also (seconds, steps run)."""
        args, ctx = self.args, self.context
        loader = self.parts.loader.epoch(self.run.epoch, self.run.step_in_epoch)
        self.model.train()
        bar = tqdm(total=self.steps_per_epoch, initial=self.run.step_in_epoch, unit="step", leave=False,
                   desc=f"epoch {self.run.epoch + 1}/{args.epochs}", disable=not (ctx.is_main and args.progress))
        start, steps_run = time.perf_counter(), 0
        for batch in iterate_batches(loader):
            if self._stop_requested():
                bar.close()
                self._save_and_stop()
            try:
                parts = self.parts
                loss, lr = train_step(self.model, batch, parts.optimizer, parts.scheduler, parts.scaler,
                                      device=self.device, precision=args.precision, loss_fn=parts.loss,
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
                self.log.step({"step": self.run.step, "epoch": self.run.epoch + 1,
                               "loss": self.run.log_loss[0] / self.run.log_loss[1], "lr": lr},
                              self.raw_model.logit_scale.item())
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
                  "lr": self.parts.scheduler.get_last_lr()[0], "time_s": seconds,
                  "images_per_s": steps_run * self.images_per_step / seconds if seconds > 0 else None}
        self.run.step_in_epoch, self.run.epoch_loss = 0, [0.0, 0]
        if self.has_eval:
            self.save()  # last.pt before evaluating: a failing evaluation loses no training
        record.update(self._evaluate_on_main())
        improved = False
        if self.context.is_main:
            best = improved_best(self.run.best, record, "val_auroc" if self.args.val_dataset else "train_loss")
            improved = best is not None
            if improved:
                self.run.best = best
            record["best"] = improved
            self.log.epoch(record)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            self.log.plot_curves()
        self.save(best=improved)  # last.pt again (the best so far, the RNG after evaluating), best.pt if improved
        return record

    def _validate_partial_epoch(self) -> None:
        """Stopped mid-epoch by --max-steps: validate the final weights too (once). Rank 0 only."""
        records = self.log.epochs()
        if not records or records[-1]["step"] != self.run.step:
            epoch = self.run.epoch + self.run.step_in_epoch / self.steps_per_epoch
            self.log.epoch({"epoch": epoch, "step": self.run.step, "partial_epoch": True, **self.evaluate()})

    def fit(self) -> dict:
        args, ctx = self.args, self.context
        if ctx.is_main:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            write_resolved_config(args, self.out_dir)
        if self.resume_state is not None:
            self.resume()
        self.log.open_scalar_loggers(args.tensorboard, args.wandb, vars(args),
                                     resume_step=self.run.step if self.resume_state is not None else None)
        try:
            return self._fit()
        finally:
            self.log.close()

    def _fit(self) -> dict:
        args, ctx = self.args, self.context
        if self.resume_state is None and args.val_before_training and self.has_eval:
            self.log.epoch({"epoch": 0, "step": 0, **self._evaluate_on_main()})
        barrier(ctx)
        if ctx.is_main:
            print(f"training {self.raw_model.num_trainable()} parameters on {len(self.parts.dataset)} image-report "
                  f"pairs: {self.steps_per_epoch} steps/epoch x {args.epochs} epochs, {ctx.world_size} process(es), "
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
            self.log.plot_curves()
            reason = (f"stopped at --max-steps {args.max_steps}" if self.run.epoch < args.epochs
                      else f"finished {args.epochs} epochs")
            print(f"{reason} (step {self.run.step}); weights: {os.path.join(self.checkpoint_dir, 'last.pt')} and "
                  f"{os.path.join(self.checkpoint_dir, 'best.pt')}", flush=True)
        barrier(ctx)
        return {"epoch": self.run.epoch, "step": self.run.step, "best": self.run.best}


