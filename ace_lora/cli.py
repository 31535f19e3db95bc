"""Command-line plumbing shared by every entry point: YAML configs, common flags, one-line errors.

A YAML file given with `--config` supplies defaults (keys are flag names with '-' or '_'); flags on
the command line override it. Scripts import these through `run_utils`.
"""
import argparse
import functools
import os
import sys
from typing import Callable, Optional, Sequence

import torch
import yaml

from .backbone import BIOMEDCLIP_HUB
from .errors import UserInputError
from .runtime import PRECISIONS, resolve_device, resolve_precision


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


def runtime_device(args: argparse.Namespace) -> torch.device:
    device = resolve_device(args.device)
    args.precision = resolve_precision(args.precision, device)
    return device
