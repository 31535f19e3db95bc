"""Files every entry point writes: output folders, atomic checkpoints, strict JSON, JSON lines, the
resolved configuration. Importing it does not import torch."""
import argparse
import json
import math
import os
import tempfile
from typing import Any, List

import numpy as np
import yaml

from .errors import UserInputError


def check_output_dir(output_dir: str, flag: str = "--output-dir") -> str:
    """Without creating anything: `output_dir` is a writable folder, or one could be created there (its
    nearest existing ancestor is a writable folder). A one-line UserInputError otherwise."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserInputError(f"{flag} {output_dir}: exists and is not a folder")
    ancestor = os.path.abspath(output_dir)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UserInputError(f"{flag} {output_dir}: cannot create the folder ({ancestor} is not a folder)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {output_dir}: cannot create the folder ({ancestor} is not writable)")
    return output_dir


def prepare_output_dir(output_dir: str, flag: str = "--output-dir") -> str:
    """Create `output_dir` (and parents) if needed; a path that cannot be a folder (an existing file, a
    path under a file, no permission) is a one-line UserInputError. Call it before the long work."""
    check_output_dir(output_dir, flag)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"{flag} {output_dir}: cannot create the folder ({error.strerror or error})") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {output_dir}: the folder is not writable")
    return output_dir


def check_output_file(path: str, flag: str = "--output") -> str:
    """Check before the long work, creating nothing, that `path` can be written as a file."""
    if os.path.isdir(path):
        raise UserInputError(f"{flag} {path}: is a folder; give a file name, e.g. {os.path.join(path, 'out.csv')}")
    check_output_dir(os.path.dirname(os.path.abspath(path)), flag=f"{flag} {path}: its folder")
    return path


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename: a reader never sees half a file."""
    import torch  # here, not at the top: the command lines import this module before --help
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def strict_json(value):
    """`value` with every non-finite float replaced by None (so json.dump(allow_nan=False) accepts it)."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def append_jsonl(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> List[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_resolved_config(args: argparse.Namespace, output_dir: str, name: str = "config.yaml") -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(json.loads(json.dumps(vars(args), default=str)), f, sort_keys=True)
    return path


def read_yaml_mapping(path: str, what: str = "YAML file") -> dict:
    """A YAML file that holds a mapping; one clear error for a missing file, bad YAML or another type."""
    if not os.path.isfile(path):
        raise UserInputError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserInputError(f"{path}: not valid YAML{where}") from None
    if not isinstance(values, dict):
        raise UserInputError(f"{path}: expected a mapping of names to values")
    return values
