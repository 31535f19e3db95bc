"""Files every entry point writes: output folders, atomic checkpoints, strict JSON, JSON lines, the
resolved configuration. Importing it does not import torch."""
import argparse
import errno
import json
import math
import os
import tempfile
from typing import Any, Callable, List, Optional

import numpy as np
import yaml

from ace_lora.errors import StorageError, UserInputError


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


STORAGE_REASONS = {errno.ENOSPC: "the device is full", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EROFS: "the file system is read-only", errno.EIO: "an I/O error of the device",
                   errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


class _RecordingWriter:
    """A file wrapper that remembers the OSError of a failed write: torch.save reports a full disk only as
    'RuntimeError: [enforce fail at inline_container.cc] unexpected pos', which names neither cause nor file."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """`write(file)` into a temporary file in the same folder, fsync, then rename over `path`: a reader never
    sees half a file, and a failed write (a full disk, a read-only file system) leaves the previous `path`
    intact, removes the temporary file and raises a one-line StorageError naming the file and the cause."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.splitext(path)[1], dir=folder)
        with os.fdopen(fd, "wb") as f:
            writer = _RecordingWriter(f)
            try:
                write(writer)
            except RuntimeError:
                if writer.error is None:
                    raise
                raise writer.error from None
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        kept = (f"the previous {os.path.basename(path)} is intact" if os.path.exists(path)
                else "nothing was written")
        reason = STORAGE_REASONS.get(err.errno, "the write failed")
        raise StorageError(f"cannot write {path}: {reason} ({err.strerror or err}); {kept}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass  # a read-only file system keeps it; it is a hidden .tmp_ file nothing reads


def atomic_save(obj: Any, path: str) -> None:
    """torch.save through `atomic_write`."""
    import torch  # here, not at the top: the command lines import this module before --help
    atomic_write(path, lambda f: torch.save(obj, f))


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


def write_json(path: str, document: Any, indent: int = 2) -> None:
    """Strict JSON (non-finite floats as null), written atomically."""
    text = json.dumps(strict_json(document), indent=indent, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_json(path: str) -> Optional[Any]:
    """The JSON document at `path`, None when there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def append_jsonl(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> List[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def with_values(args: argparse.Namespace, **values) -> argparse.Namespace:
    """A copy of parsed flags with some resolved (--precision auto on a device, a demo's data): parsed flags are
    never edited in place, so every holder of them sees what was parsed."""
    return argparse.Namespace(**{**vars(args), **values})


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
