"""The repository's scripts as child processes of a sweep or a cluster job: each one's output appended to
its log, its last `error:` line as the failure, and one way to tell every running script to stop.

A script runs in its own session (a Ctrl-C at the terminal reaches only its parent, which decides) and
gets SIGTERM should its parent die (Linux: PR_SET_PDEATHSIG), so it saves and exits instead of running
on unwatched. It ignores SIGUSR2: SLURM sends that signal to every process of a job before its time
limit, and only the job process (submitit) acts on it, by calling `stop_all` once.
"""
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Exit statuses that mean a script was stopped by one of them after saving (128 + N), or killed by it (-N).
STOPPED_STATUSES = {-sig for sig in STOP_SIGNALS} | {128 + sig for sig in STOP_SIGNALS}


class ScriptsStopped(Exception):
    """A stop signal reached the scripts: the running one saved and exited; no other one is started."""

    def __init__(self, signum: int, returncode: Optional[int]):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.returncode = signum, returncode


class ScriptRunner:
    """The scripts this process runs now (from any thread), and the first stop signal it was told of."""

    def __init__(self):
        self._lock = threading.RLock()  # re-entrant: the stop signal's handler takes it in the thread it interrupts
        self._running: Dict[int, subprocess.Popen] = {}
        self.stop_signal: Optional[int] = None

    def run(self, command: Sequence[str], log_path: str, env: Optional[Dict[str, str]] = None,
            cpus: Optional[Sequence[int]] = None) -> Optional[str]:
        """Run `command`, its output appended to `log_path`; None on success, else its last error line.

        `env` is added to this process's environment; `cpus` pins the script to those cores. Raises
        ScriptsStopped when a stop was requested (before or while it ran) or when the script itself was
        stopped by SIGINT / SIGTERM (a scheduler's requeue or cancel signals every process of a job).
        """
        if self.stop_signal is not None:
            raise ScriptsStopped(self.stop_signal, None)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n")
            log.flush()
            offset = log.tell()  # this attempt's output starts here
            with self._lock:
                if self.stop_signal is not None:
                    raise ScriptsStopped(self.stop_signal, None)
                child = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_prepare_child,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
                self._running[child.pid] = child
            if cpus:
                os.sched_setaffinity(child.pid, cpus)  # it has just started: the threads it makes inherit this
            try:
                returncode = child.wait()
            finally:
                with self._lock:
                    self._running.pop(child.pid, None)
        if self.stop_signal is not None and returncode != 0:
            raise ScriptsStopped(self.stop_signal, returncode)
        if returncode in STOPPED_STATUSES:
            raise ScriptsStopped(abs(returncode) % 128, returncode)
        if returncode == 0:
            return None
        with open(log_path, encoding="utf-8") as log:
            log.seek(offset)
            lines = [line.strip() for line in log if line.strip()]
        errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
        return (errors or lines or [f"exit status {returncode}"])[-1]

    def stop_all(self, signum: int) -> None:
        """Send `signum` to every running script and start no other (a second call forwards it again:
        a training told twice stops at once, without saving)."""
        with self._lock:
            if self.stop_signal is None:
                self.stop_signal = signum
            children = list(self._running.values())
        for child in children:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    def wait_stopped(self) -> None:
        """Block until every running script has exited, without reaping it (its `run` still does); safe in a
        signal handler that interrupted that `run`."""
        with self._lock:
            pids = list(self._running)
        for pid in pids:
            try:
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _prepare_child() -> None:
    """In the child before exec (no import, no lock): ignore SIGUSR2, SIGTERM when the parent dies (Linux)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


SCRIPTS = ScriptRunner()


class ForwardStopSignals:
    """While active (main thread), SIGINT / SIGTERM to this process are forwarded to its running scripts."""

    def __init__(self, runner: ScriptRunner = SCRIPTS):
        self.runner = runner
        self._previous: dict = {}

    def __enter__(self) -> "ForwardStopSignals":
        self.runner.stop_signal = None  # a new run of this process starts unstopped
        self._previous = {sig: signal.signal(sig, lambda signum, _frame: self.runner.stop_all(signum))
                          for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.runner.stop_signal = None  # the stop was for this run; the caller has seen it (ScriptsStopped)


def cpu_slots(parallel: int) -> List[List[int]]:
    """This process's cores split into `parallel` disjoint groups (the first ones one core larger)."""
    cores = sorted(os.sched_getaffinity(0))
    size, extra = divmod(len(cores), parallel)
    slots, start = [], 0
    for index in range(parallel):
        end = start + size + (index < extra)
        slots.append(cores[start:end])
        start = end
    return slots
