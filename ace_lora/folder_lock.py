"""A lock on a folder for the lifetime of the process that writes it (a training run, an image-cache build).

`.lock` holds "pid host" while the owner lives, with three signs of life: an OS lock (`flock`) on the file
where the file system supports it, the pid (same host), and a heartbeat (the file's mtime, touched every
HEARTBEAT_S seconds). A second owner is refused at once while the first lives. A dead owner's lock (kill -9,
OOM killer, node failure, SLURM hard kill) is taken over with one line: on the same host when the flock is free
and the pid no longer runs; from another host (a job requeued elsewhere) when the heartbeat is older than
STALE_AFTER_S seconds, since the pid cannot be checked there.
"""
import fcntl
import os
import socket
import sys
import threading
import time
from typing import Optional, Tuple

from ace_lora.errors import StorageError, UserInputError
from ace_lora.io import STORAGE_REASONS

LOCK_NAME = ".lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


HEARTBEAT_S = 30  # how often a live run touches its lock
STALE_AFTER_S = 120  # a lock of another host untouched this long belongs to a dead run


def _try_flock(fd: int) -> Optional[bool]:
    """True: we hold the OS lock; False: another process holds it; None: the file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, EINVAL on file systems without flock
        return None


class FolderLock:
    """`.lock` in the run folder for as long as the run lives (a context manager); see the module docstring.

    `owner` and `flag` name the lock's user in refusals: the image cache's builder locks its folder too
    ("another cache build ... choose another --output").
    """

    def __init__(self, folder: str, owner: str = "run", flag: str = "--output-dir"):
        self.path = os.path.join(folder, LOCK_NAME)
        self.owner, self.flag = owner, flag
        self.held = False
        self._fd: Optional[int] = None
        self._stop = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None

    def check_free(self) -> None:
        """Refuse at once when a live run holds the folder (before any other check of it); changes nothing."""
        if not os.path.lexists(self.path):
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            fd = None
        try:
            flocked = _try_flock(fd) if fd is not None else None
            refusal = self._refusal(flocked)
        finally:
            if fd is not None:
                os.close(fd)  # also drops the flock taken to test it
        if refusal:
            raise UserInputError(refusal)

    def acquire(self) -> None:
        try:
            # read-only: the flock needs no write access, and a file held open for writing would keep the
            # file system from being remounted read-only under the run
            fd = os.open(self.path, os.O_CREAT | os.O_RDONLY, 0o644)
        except OSError as err:
            if err.errno in STORAGE_REASONS:  # a read-only folder or file system, a full disk: exit 4, as for writes
                raise StorageError(f"cannot create the lock file {self.path}: {STORAGE_REASONS[err.errno]} "
                                   f"({err.strerror or err})") from None
            raise UserInputError(f"cannot create the lock file {self.path} ({err.strerror or err})") from None
        flocked = _try_flock(fd)
        refusal = self._refusal(flocked)
        if refusal or not self._same_file(fd):
            os.close(fd)
            raise UserInputError(refusal or f"{self.path} was replaced while taking it: another {self.owner} is "
                                            "starting here")
        previous = _read_owner(self.path)
        if previous is not None and previous != (os.getpid(), socket.gethostname()):
            pid, host = previous
            print(f"{self.path}: taking over the lock of process {pid} on {host}, which is no longer running",
                  file=sys.stderr, flush=True)
        try:
            with open(self.path, "w", encoding="utf-8") as f:  # the same file: truncated, not replaced
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
        except OSError as err:
            os.close(fd)
            raise UserInputError(f"cannot write the lock file {self.path} ({err.strerror or err})") from None
        self._fd, self.held = fd, True
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _same_file(self, fd: int) -> bool:
        """The path still names the file we locked (a releasing run unlinks it before closing)."""
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a read-only or vanished folder: the run itself reports what failed

    def _refusal(self, flocked: Optional[bool]) -> Optional[str]:
        """Why the lock's owner counts as alive (None when there is no live owner)."""
        owner = _read_owner(self.path)
        if flocked is False:
            pid, host = owner or ("?", "?")
            return self._live_message(pid, host)
        if owner is None:
            if _lock_is_empty(self.path):
                return None  # a run killed between creating and writing its lock
            return (f"{self.path} exists but does not name a process: if no run uses this folder, remove the file "
                    "and start again")
        pid, host = owner
        if host == socket.gethostname():
            return self._live_message(pid, host) if pid != os.getpid() and _process_alive(pid) else None
        age = _age_seconds(self.path)
        if age is None or age >= STALE_AFTER_S:
            return None
        return (f"another {self.owner} (process {pid} on {host}) is using this output folder ({self.path}; its "
                f"heartbeat is {age:.0f} s old, a lock without one for {STALE_AFTER_S} s is taken over); wait for it "
                f"or choose another {self.flag}")

    def _live_message(self, pid, host) -> str:
        where = "this machine" if host == socket.gethostname() else host
        return (f"another {self.owner} (process {pid} on {where}) is using this output folder ({self.path}); wait "
                f"for it or choose another {self.flag}")

    def release(self) -> None:
        """Remove the lock; never raises (a read-only folder keeps it, and the next run takes it over as a dead
        owner's), so that it cannot mask the error that ended the run."""
        if not self.held:
            return
        self._stop.set()
        try:
            os.remove(self.path)  # before closing, so no other run locks the file we are removing
        except OSError:
            pass
        os.close(self._fd)
        self._fd, self.held = None, False

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(path: str) -> Optional[Tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            pid, host = f.read().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _lock_is_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def _age_seconds(path: str) -> Optional[float]:
    try:
        return max(0.0, time.time() - os.path.getmtime(path))
    except OSError:
        return None
