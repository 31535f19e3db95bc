"""From a parsed training command line to a run: --demo, --dry-run, or the checks, the resume state,
the output folder and its lock, then the Trainer. What train.py and train_multi_gpu.py call."""
import argparse
import os
import time
from typing import Dict, List, Optional, Tuple

import pandas as pd

from ace_lora.data.images import set_max_image_pixels
from ace_lora.data.paths import data_root_for
from ace_lora.data.tables import separator_hint
from ace_lora.errors import UserInputError
from ace_lora.evaluation.retrieval import retrieval_columns
from ace_lora.evaluation.tasks import RETRIEVAL, TASKS, parse_eval_specs
from ace_lora.folder_lock import FolderLock
from ace_lora.io import prepare_output_dir, with_values
from ace_lora.model.config import config_from_args
from ace_lora.model.factory import build_model
from ace_lora.model.methods import check_method_file, get_method
from ace_lora.params import check_runtime_args
from ace_lora.runtime import cpu_threads, resolve_precision
from ace_lora.train.demo import prepare_demo, write_demo_metrics
from ace_lora.train.distributed import DistributedContext, run_on_main
from ace_lora.train.loggers import check_logger_packages
from ace_lora.train.loop import Trainer
from ace_lora.train.run_folder import check_run_folder, clear_run_files
from ace_lora.train.run_state import RunFinished, read_resume_state


def check_eval_inputs(args, eval_specs: List[Tuple[str, str, Optional[str]]]) -> None:
    """Every validation / --eval-datasets CSV and image folder exists and each CSV has its task's columns.

    Checked at start-up (the CSV header only): a wrong path would otherwise surface after the first epoch.
    """
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
            raise UserInputError(f"{csv_flag} {csv}: not a readable CSV file ({str(error).splitlines()[0]})"
                                 f"{separator_hint(csv)}") from None
        if task == RETRIEVAL:
            retrieval_columns(header, source=f"{csv_flag} {csv}")
            continue
        missing = [name for name in TASKS[task].required_columns if name not in header]
        if missing:
            raise UserInputError(f"{csv_flag} {csv}: missing column(s) {', '.join(map(repr, missing))} that the "
                                 f"{task} task needs (found: {', '.join(header)}){separator_hint(csv)}")


def check_training_args(args) -> None:
    """Flag values that torch or NumPy would otherwise reject late, or accept and misuse."""
    if not get_method(args.method).trains:
        raise UserInputError("--method bare trains nothing: evaluate the backbone with the evaluation scripts "
                             "(no --checkpoint), or use it in a sweep")
    if args.peft_config and args.method != "peft":
        raise UserInputError("--peft-config goes with --method peft")
    check_method_file(args.peft_config)
    config_from_args(args).validate()  # the model settings, before any folder or model exists
    if not args.train_csv:
        raise UserInputError("--train-csv is required (or --demo, or --dry-run)")
    check_runtime_args(args)
    if args.epochs < 1:
        raise UserInputError(f"--epochs must be >= 1, got {args.epochs}")
    if args.max_steps is not None and args.max_steps < 1:
        raise UserInputError(f"--max-steps must be >= 1, got {args.max_steps}")
    for flag, value in (("--lr", args.lr), ("--weight-decay", args.weight_decay),
                        ("--warmup-epochs", args.warmup_epochs),
                        ("--save-every-steps", args.save_every_steps), ("--log-every-steps", args.log_every_steps)):
        if not value >= 0:  # also NaN
            raise UserInputError(f"{flag} must be >= 0, got {value}")
    if not all(0 <= beta < 1 for beta in args.betas):
        raise UserInputError(f"--betas must both be in [0, 1), got {' '.join(map(str, args.betas))}")
    if args.val_dataset and not args.val_csv:
        raise UserInputError("--val-dataset needs --val-csv")
    if args.val_csv and not args.val_dataset:
        raise UserInputError("--val-csv needs --val-dataset (which zero-shot task it is)")
    if args.resume and args.overwrite:
        raise UserInputError(f"--resume {args.resume} continues the run in --output-dir, --overwrite deletes it to "
                             "start over: give one")
    if args.init_from and args.resume:
        raise UserInputError("--init-from starts a new run from trained weights, --resume continues a run: give one")
    if args.init_from and not os.path.isfile(args.init_from):
        raise UserInputError(f"--init-from {args.init_from}: file not found")


def print_trainable_count(args, context: DistributedContext) -> int:
    check_method_file(args.peft_config)
    config_from_args(args).validate()  # before the backbone is loaded (or downloaded)
    count = 0 if not get_method(args.method).trains else build_model(args.model, config_from_args(args)).num_trainable()
    if context.is_main:
        print(f"trainable parameters: {count}")
    return count


def check_run_args(args, context: DistributedContext) -> argparse.Namespace:
    """Every check that needs neither the model nor the data: flags, precision, validation inputs. Returns the
    flags with --precision resolved for the device."""
    check_training_args(args)
    args = with_values(args, precision=resolve_precision(args.precision, context.device))
    if args.precision == "fp16" and context.device.type != "cuda":
        raise UserInputError("--precision fp16 needs CUDA; use fp32 (or bf16) on the CPU")
    check_eval_inputs(args, parse_eval_specs(args.eval_datasets))
    check_logger_packages(args.tensorboard, args.wandb)
    return args


def open_run_folder(args, resuming: bool, lock: FolderLock) -> None:
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
    set_max_image_pixels(args.max_image_pixels)
    if args.demo:
        return run_demo(args, context)
    if args.dry_run:
        print_trainable_count(args, context)
        return None
    return train_in_run_folder(args, context)


def train_in_run_folder(args, context: DistributedContext) -> Optional[Dict]:
    """Checks, resume state, the output folder and its lock, then the run (None if it was finished)."""
    args = check_run_args(args, context)
    try:
        state = read_resume_state(args)
    except RunFinished as finished:
        if context.is_main:
            print(finished)
        return None
    lock = FolderLock(args.output_dir)
    run_on_main(lambda: open_run_folder(args, state is not None, lock), context, "opening the output folder")
    try:
        return Trainer(args, context, state).fit()
    finally:
        lock.release()


def run_demo(args, context: DistributedContext):
    """The whole demo: data and model, training with validation, demo_metrics.json (rank 0)."""
    start = time.perf_counter()
    config_from_args(args).validate()  # before the demo writes its data and model
    with cpu_threads(1 if context.device.type == "cpu" else None):
        args, data = prepare_demo(args, context)
        if args.dry_run:
            print_trainable_count(args, context)
            return None
        summary = train_in_run_folder(args, context)
    if context.is_main and summary is not None:
        write_demo_metrics(args, data, time.perf_counter() - start)
    return summary
