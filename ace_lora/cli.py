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
from .errors import RunInterrupted, UserInputError
from .runtime import PRECISIONS, resolve_device, resolve_precision


def main_guard(main: Callable) -> Callable:
    """Run `main`, turning a UserInputError into `error: <message>` on stderr and exit status 2, an
    interrupted training run into its one line and 128 + signal, and Ctrl-C elsewhere into one line and 130."""
    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except RunInterrupted as err:
            print(str(err), file=sys.stderr)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
    return guarded


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse argv; values from `--config FILE.yaml` become defaults that explicit flags override.

    YAML values get the same checks as flags (type conversion, choices, one value vs a list), with
    errors that name the file and key: argparse itself never checks defaults.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = _read_config(known.config)
        actions = {a.dest: a for a in parser._actions}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            raise UserInputError(f"{known.config}: unknown keys {', '.join(unknown)}")
        parser.set_defaults(**{k: _checked_value(actions[k], v, known.config, k) for k, v in values.items()})
    return parser.parse_args(argv)


def _read_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserInputError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserInputError(f"{path}: not valid YAML{where}") from err
    if not isinstance(values, dict):
        raise UserInputError(f"{path}: expected a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def _checked_value(action: argparse.Action, value, path: str, key: str):
    """A YAML value converted and validated as argparse would a command-line value."""
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise UserInputError(f"{path}: {key} must be true or false, got {value!r}")
        return value
    if value is None:
        return None
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if isinstance(value, list) != many:
        raise UserInputError(f"{path}: {key} takes {'a list' if many else 'one value'}, got {value!r}")
    items = []
    for item in (value if many else [value]):
        if action.type is not None:
            try:
                item = action.type(str(item))
            except (TypeError, ValueError) as err:
                raise UserInputError(f"{path}: {key} has an invalid value {item!r}") from err
        if action.choices is not None and item not in action.choices:
            raise UserInputError(f"{path}: {key}={item!r} is not one of {', '.join(map(str, action.choices))}")
        items.append(item)
    return items if many else items[0]


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


def check_runtime_args(args: argparse.Namespace) -> None:
    """--batch-size >= 1 and --num-workers >= 0, checked before any model is loaded."""
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise UserInputError(f"--num-workers must be >= 0, got {args.num_workers}")


def runtime_device(args: argparse.Namespace) -> torch.device:
    device = resolve_device(args.device)
    args.precision = resolve_precision(args.precision, device)
    return device
