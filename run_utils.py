"""Command-line plumbing shared by every entry point: YAML configs, common flags, one-line errors.

A YAML file given with `--config` supplies defaults (keys are flag names with '-' or '_'); flags on
the command line override it. The resolved configuration is written next to every result.
"""
import argparse
import contextlib
import functools
import json
import os
import sys
from typing import Callable, Optional, Sequence

import torch
import yaml

from ace_lora.backbone import BIOMEDCLIP_HUB, resolve_device
from ace_lora.errors import UserInputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def main_guard(main: Callable) -> Callable:
    """Run `main`, turning a UserInputError into `error: <message>` on stderr and exit status 2."""
    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    return guarded


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse argv; values from `--config FILE.yaml` become defaults that explicit flags override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        if not os.path.isfile(known.config):
            raise UserInputError(f"config file not found: {known.config}")
        with open(known.config, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise UserInputError(f"{known.config}: expected a mapping of flag names to values")
        dests = {a.dest for a in parser._actions}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - dests)
        if unknown:
            raise UserInputError(f"{known.config}: unknown keys {', '.join(unknown)}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file whose keys (flag names) set defaults; explicit flags win")


def add_model_args(group) -> None:
    group.add_argument("--model", default=BIOMEDCLIP_HUB,
                       help="open_clip model: hf-hub:ID (needs network once) or local-dir:PATH (offline; "
                            "see README 'A local BiomedCLIP folder')")


def add_runtime_args(group, batch_size: int = 64) -> None:
    group.add_argument("--device", default="auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1'")
    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="autocast precision; 'auto' = bf16 on CUDA, fp32 on CPU")
    group.add_argument("--batch-size", type=int, default=batch_size, help="images per batch (per GPU)")
    group.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """torch.autocast for bf16/fp16, a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def runtime_device(args: argparse.Namespace) -> torch.device:
    device = resolve_device(args.device)
    args.precision = resolve_precision(args.precision, device)
    return device


def write_resolved_config(args: argparse.Namespace, output_dir: str, name: str = "config.yaml") -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(json.loads(json.dumps(vars(args), default=str)), f, sort_keys=True)
    return path


# ---- training (train.py and train_multi_gpu.py share one command line) ----------------------
# Settings the demo uses unless given on the command line or in --config (chosen for a robust,
# < 3 minute CPU run; see ace_lora/demo.py).
DEMO_DEFAULTS = dict(output_dir="demo_output", epochs=12, batch_size=25, lr=2e-3, warmup_epochs=1, num_workers=0,
                     val_before_training=True, log_every_steps=1)


class TrainingHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script docstring as written, and every flag's default in its help."""


def _position_choices():
    from ace_lora.lora import LORA_POSITIONS
    return LORA_POSITIONS


def add_training_args(parser: argparse.ArgumentParser, distributed: bool) -> None:
    """Every flag of the training scripts, grouped by concern."""
    from ace_lora.data.train_dataset import UNCERTAIN_POLICIES
    from ace_lora.evaluation.tasks import TASKS
    from ace_lora.lora import LORA_PARAMS
    from ace_lora.loss import LOSS_CHOICES
    from ace_lora.model import GNN_CHOICES

    add_config_arg(parser)
    model = parser.add_argument_group("model")
    add_model_args(model)
    model.add_argument("--dry-run", action="store_true",
                       help="build the model, print 'trainable parameters: N' and exit (no data needed)")
    model.add_argument("--demo", action="store_true",
                       help="train on a synthetic data set generated in <output-dir>/demo_data with a tiny random "
                            "model (offline, CPU, < 3 min); replaces --model, --train-csv and the validation flags")

    lora = parser.add_argument_group("LoRA and ACE-HGNN")
    lora.add_argument("--lora-r", type=int, default=4, help="LoRA rank r")
    lora.add_argument("--lora-alpha", type=float, default=1.0, help="LoRA alpha; the update is scaled by alpha/sqrt(r)")
    lora.add_argument("--lora-dropout", type=float, default=0.1, help="dropout on the LoRA input")
    lora.add_argument("--params", nargs="+", default=["q", "k", "v"], choices=LORA_PARAMS,
                      help="attention projections that get LoRA (q k v, optionally o)")
    lora.add_argument("--position", default="all", choices=_position_choices(),
                      help="which layers of each tower get LoRA (bottom/mid/up = thirds, half-*, top = last, "
                           "top3 = last three)")
    lora.add_argument("--topk", type=int, default=5, help="hyperedge size: top-k related tokens per token")
    lora.add_argument("--hidden-features", type=int, default=128, help="hidden width of the ACE-HGNN adapters")
    lora.add_argument("--apply-gnn-encoders", default="both", choices=[c for c in GNN_CHOICES if c != "none"],
                      help="towers that get the hypergraph adapter")
    lora.add_argument("--loss", default="label_guided", choices=LOSS_CHOICES,
                      help="label_guided: same-label pairs are not negatives (needs labels); clip: plain InfoNCE")

    data = parser.add_argument_group("data and runtime")
    data.add_argument("--train-csv", help="training CSV: image_path, report, the 14 CheXpert labels, optional split")
    data.add_argument("--data-root", help="folder that relative image paths start from (default: the CSV's folder)")
    data.add_argument("--label-csv", help="CheXpert label CSV (mimic-cxr-2.0.0-chexpert.csv) joined on study_id, "
                                          "when the training CSV has no label columns")
    data.add_argument("--split", default="train",
                      help="train on the rows whose `split` column has this value (ignored without that column)")
    data.add_argument("--uncertain-policy", default="zeros", choices=UNCERTAIN_POLICIES,
                      help="uncertain (-1) labels become 0 (released method) or 1")
    add_runtime_args(data, batch_size=64)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=40, help="training epochs (the schedule spans all of them)")
    optim.add_argument("--max-steps", type=int,
                       help="stop after this many optimizer steps in total (the schedule still spans --epochs)")
    optim.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    optim.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    optim.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.999], help="AdamW betas")
    optim.add_argument("--warmup-epochs", type=float, default=1.0,
                       help="linear warm-up length in epochs, then cosine decay to 0 (updated every step)")
    optim.add_argument("--seed", type=int, default=1, help="seed for Python, NumPy, torch and the data order")
    optim.add_argument("--gather-negatives", action="store_true",
                       help="DDP: all-gather embeddings so each rank's loss uses the whole global batch as negatives"
                            + ("" if distributed else " (no effect in train.py's single process)"))

    logs = parser.add_argument_group("logging and checkpoints")
    logs.add_argument("--output-dir", default="runs/ace_lora", help="folder for checkpoints, metrics and figures")
    logs.add_argument("--save-every-steps", type=int, default=0,
                      help="also write checkpoints/last.pt every N steps (0: only at the end of each epoch)")
    logs.add_argument("--log-every-steps", type=int, default=20,
                      help="append the mean loss and the learning rate to steps.jsonl every N steps")
    logs.add_argument("--resume",
                      help="resume checkpoint to continue from, or 'latest' = <output-dir>/checkpoints/last.pt")
    logs.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bars")

    val = parser.add_argument_group("validation")
    val.add_argument("--val-dataset", choices=sorted(TASKS),
                     help="zero-shot data set evaluated after every epoch; best.pt = highest AUROC on it")
    val.add_argument("--val-csv", help="CSV of the validation data set (the layout its zero_shot_eval script reads)")
    val.add_argument("--val-data-root", help="folder that the validation CSV's image paths start from")
    val.add_argument("--eval-datasets", nargs="+", default=[], metavar="TASK:CSV[:ROOT]",
                     help="more zero-shot data sets logged after every epoch, e.g. chexpert:chexpert_5x200.csv:/data")
    val.add_argument("--val-before-training", action="store_true",
                     help="also evaluate before the first step (epoch 0 in metrics.jsonl)")


def parse_training_args(argv: Optional[Sequence[str]], description: str, distributed: bool) -> argparse.Namespace:
    """The training command line; with --demo, DEMO_DEFAULTS replace the defaults (flags and config still win)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=TrainingHelpFormatter)
    add_training_args(parser, distributed)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--demo", action="store_true")
    if pre.parse_known_args(argv)[0].demo:
        parser.set_defaults(**DEMO_DEFAULTS)
    return parse_with_config(parser, argv)
