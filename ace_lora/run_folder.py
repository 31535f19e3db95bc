"""A training run's output folder: refuse to mix or destroy runs, and hold a lock for the run's lifetime.

- A folder that holds a run (any of RUN_FILES) is only used again to continue it (`--resume`) or when
  `--overwrite` says to start over (its run files are then removed first).
- `.lock` (created with O_EXCL, holding "pid host") is held while the run lives: a second run on the
  same folder refuses at once. A lock whose process is gone (same host) is reported, not taken over:
  the message says how to remove it once no run uses the folder.
"""
import errno
import os
import shutil
import socket
from typing import List, Optional

from .errors import UserInputError

LOCK_NAME = ".lock"
# What a run writes; any of them means the folder holds a run.
RUN_FILES = ("config.yaml", "metrics.jsonl", "steps.jsonl", "training_curves.png", "ACE-LoRA_weights_last.pt",
             "ACE-LoRA_weights_best.pt", "checkpoints", "demo_metrics.json", "tensorboard")


def run_files_in(folder: str) -> List[str]:
    return [name for name in RUN_FILES if os.path.lexists(os.path.join(folder, name))]


def check_run_folder(folder: str, resume: bool, overwrite: bool) -> None:
    """Refuse a new run in a folder that holds another one (nothing is touched)."""
    present = run_files_in(folder) if os.path.isdir(folder) else []
    if present and not resume and not overwrite:
        raise UserInputError(f"--output-dir {folder} holds a run ({', '.join(present)}): continue it with --resume "
                             "latest, start over with --overwrite, or choose another --output-dir")


def clear_run_files(folder: str) -> None:
    """--overwrite: remove the previous run's files (only those a run writes)."""
    for name in run_files_in(folder):
        path = os.path.join(folder, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """`.lock` in the run folder for as long as the run lives (a context manager)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False

    def check_free(self) -> None:
        """Refuse at once when another run holds the folder (before any other check of it)."""
        if os.path.lexists(self.path):
            raise UserInputError(self._held_message())

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise UserInputError(self._held_message()) from None
        except OSError as err:
            raise UserInputError(f"cannot create the lock file {self.path} ({err.strerror or err})") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        self.held = True

    def _held_message(self) -> str:
        owner = _read_owner(self.path)
        if owner is None:
            return (f"{self.path} exists but does not name a process: if no run uses this folder, remove the file "
                    "and start again")
        pid, host = owner
        if host == socket.gethostname() and not _process_alive(pid):
            return (f"{self.path}: stale lock of process {pid} on {host}, which is no longer running (a run that was "
                    "killed); if no run uses this folder, remove the file and start again")
        where = "this machine" if host == socket.gethostname() else f"{host} (not checkable from here)"
        return f"another run (process {pid} on {where}) is using this output folder ({self.path}); wait for it or " \
               "choose another --output-dir"

    def release(self) -> None:
        if self.held:
            try:
                os.remove(self.path)
            except OSError as err:
                if err.errno != errno.ENOENT:
                    raise
            self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_lock(folder: str) -> bool:
    """For a tool that owns the folder (the sweep): remove `.lock` if its process is gone (same host)."""
    path = os.path.join(folder, LOCK_NAME)
    owner = _read_owner(path) if os.path.isfile(path) else None
    if owner is None or owner[1] != socket.gethostname() or _process_alive(owner[0]):
        return False
    os.remove(path)
    return True


def _read_owner(path: str) -> Optional[tuple]:
    try:
        with open(path, encoding="utf-8") as f:
            pid, host = f.read().split()
        return int(pid), host
    except (OSError, ValueError):
        return None
