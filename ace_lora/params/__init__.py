"""Every command line of the project, in one package: here the YAML-defaults mechanism and the flags
that many scripts share; `params.training` (train.py, train_multi_gpu.py), `params.evaluation` (the
zero-shot, retrieval, predict and export scripts) and `params.dense` (segmentation, detection).

A YAML file given with `--config` supplies defaults (keys are flag names with '-' or '_'); flags on
the command line override it. The package imports no torch, so every `--help` answers at once.
"""
import argparse
import copy
import os
from typing import Callable, Optional, Sequence

from ace_lora.errors import UserInputError
from ace_lora.io import read_yaml_mapping
from ace_lora.model.config import BIOMEDCLIP_HUB, model_spec

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every script's --help: its docstring as written, and each flag's default after its help (unless the
    help already says what the default is, or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.nargs == 0 or action.default in (None,
                                                                                                     argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
                      layered_defaults: Optional[Callable[[argparse.Namespace], dict]] = None,
                      early: Sequence[str] = ()) -> argparse.Namespace:
    """Parse argv once; values from `--config FILE.yaml` become defaults that explicit flags override.

    YAML values get the same checks as flags (type conversion, choices, one value vs a list), with
    errors that name the file and key: argparse itself never checks defaults. `layered_defaults(values)`
    gives defaults that depend on the `early` flags (e.g. --method, --demo) as given on the command line, else
    in the YAML, else by default; they sit between the parser's own defaults and the YAML's.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    actions = {a.dest: a for a in parser._actions}
    values = {}
    if known.config:
        values = _read_config(known.config)
        unknown = sorted(set(values) - set(actions))
        if unknown:
            raise UserInputError(f"{known.config}: unknown keys {', '.join(unknown)}")
        values = {k: _checked_value(actions[k], v, known.config, k) for k, v in values.items()}
    if layered_defaults is not None:
        parser.set_defaults(**layered_defaults(_early_values(parser, argv, early, values)))
    parser.set_defaults(**values)
    return _resolved(parser.parse_args(argv))


def _early_values(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], dests: Sequence[str],
                  config_values: dict) -> argparse.Namespace:
    """The values of a few flags before the full parse (which reports any bad value: here it is left out)."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for action in parser._actions:
        if action.dest in dests:
            pre._add_action(copy.copy(action))
    pre.set_defaults(**{k: v for k, v in config_values.items() if k in dests})
    try:
        return pre.parse_known_args(argv)[0]
    except argparse.ArgumentError:
        return pre.parse_known_args([])[0]


def _resolved(args: argparse.Namespace) -> argparse.Namespace:
    """--pretrained folds into --model (ace_lora.model.config.model_spec): one string names the backbone everywhere."""
    if getattr(args, "pretrained", None):
        args.model = model_spec(args.model, args.pretrained)
    return args


def _read_config(path: str) -> dict:
    values = read_yaml_mapping(path, "config file")
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
                       help="open_clip model: hf-hub:ID (needs network once), local-dir:PATH (offline; see "
                            "docs/installation.md), or an open_clip model name such as ViT-B-16 (docs/method.md, "
                            "towers)")
    group.add_argument("--pretrained", metavar="TAG",
                       help="with an open_clip model name: its pretrained weights (e.g. openai, laion2b_s34b_b88k; "
                            "needs network once); none = random weights")


def add_device_args(group, precision: str = "auto") -> None:
    """--device and --precision; `precision` is the default: 'auto' for training (bf16 on CUDA), 'fp32' for
    evaluation, as the release evaluated, so that its numbers come out by default on a GPU too."""
    group.add_argument("--device", default="auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1'")
    group.add_argument("--precision", default=precision, choices=PRECISIONS,
                       help="autocast precision; 'auto' = bf16 on CUDA, fp32 on CPU")


MAX_DEFAULT_WORKERS = 16  # beyond this, decoding a batch is rarely what a GPU waits for


def default_num_workers() -> int:
    """The CPUs this process may use (its affinity: a SLURM or container allotment), less one for the process
    itself, shared among the training processes of this node (torchrun's LOCAL_WORLD_SIZE), at most 16."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_DEFAULT_WORKERS, per_process - 1))


def add_num_workers_arg(group) -> None:
    group.add_argument("--num-workers", type=int, default=default_num_workers(),
                       help="DataLoader worker processes that decode images (default: the CPUs this process may use, "
                            "less one, per process on this node, at most 16: %(default)s here)")


def add_runtime_args(group, batch_size: int = 64, precision: str = "auto") -> None:
    add_device_args(group, precision)
    group.add_argument("--batch-size", type=int, default=batch_size, help="images per batch (per GPU)")
    add_num_workers_arg(group)


def add_image_cache_args(group, transform: str) -> None:
    """--image-cache and --image-cache-rebuild (data/image_cache.py) for a command that reads images through
    the `transform` ('train' or 'eval') pixel transform."""
    group.add_argument("--image-cache", metavar="DIR",
                       help=f"read the images' pixels from this image cache of the '{transform}' transform "
                            "(dataset_prep/cache_images.py), bit-identical to decoding the files; a folder that "
                            "holds none is built first (docs/data.md)")
    group.add_argument("--image-cache-rebuild", action="store_true",
                       help="rebuild the --image-cache entries whose source images changed since caching (or the "
                            "whole cache when it was built for another transform)")
    add_max_image_pixels_arg(group)


def add_max_image_pixels_arg(group) -> None:
    group.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                       help="largest image (width x height) decoded; larger ones are refused as possible "
                            "decompression bombs (default: Pillow's limit, 178,956,970; 0: no limit, for trusted "
                            "files)")


def check_runtime_args(args: argparse.Namespace) -> None:
    """--batch-size >= 1 and --num-workers >= 0, checked before any model is loaded."""
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise UserInputError(f"--num-workers must be >= 0, got {args.num_workers}")


def evaluation_parser(description: str):
    """A parser with --config and the model group of every script that evaluates or applies a model:
    --model and --checkpoint. Returns (parser, model group)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_arg(parser)
    model = parser.add_argument_group("model")
    add_model_args(model)
    model.add_argument("--checkpoint", help="ACE-LoRA weights: the released .pt, a training checkpoint or an export "
                                            "folder; omit for the bare BiomedCLIP backbone")
    return parser, model
