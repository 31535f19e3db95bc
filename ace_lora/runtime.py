"""Where and how computations run: device and autocast precision."""
import argparse
import contextlib
import re
from typing import Iterator, Optional, Tuple

import torch

from ace_lora.errors import UserInputError
from ace_lora.io import with_values

DEVICE_PATTERN = re.compile(r"(cpu|cuda(:\d+)?|mps)")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; otherwise cpu, cuda, cuda:N or mps, checked here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE_PATTERN.fullmatch(name):
        raise UserInputError(f"--device must be auto, cpu, cuda, cuda:N or mps, not {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserInputError(f"--device {name} requested but CUDA is not available on this machine")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserInputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserInputError("--device mps requested but MPS is not available on this machine")
    return torch.device(name)


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


def runtime_device(args) -> Tuple[argparse.Namespace, torch.device]:
    """The device of `args.device`, and a copy of the flags with `--precision` resolved for it ('auto')."""
    device = resolve_device(args.device)
    return with_values(args, precision=resolve_precision(args.precision, device)), device


@contextlib.contextmanager
def cpu_threads(n: Optional[int]) -> Iterator[None]:
    """Run with `n` intra-op CPU threads (None: unchanged), restoring the previous count afterwards.

    The tiny demo models' matrices are too small to gain from threads, and on a busy machine spinning
    OpenMP threads slow them down many times over: their demos run on one thread."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
