"""Stopping a training run cleanly on SIGINT (Ctrl-C) and SIGTERM (SLURM preemption, `kill`)."""
import signal
import sys
import threading
from typing import Optional


class StopNow(BaseException):
    """A second signal: stop at once, without saving (a BaseException, as KeyboardInterrupt, so that no
    `except Exception` on the way swallows it). The trainer turns it into RunInterrupted (128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequest:
    """SIGINT / SIGTERM during training (Ctrl-C, SLURM preemption): the trainer finishes the current step,
    saves checkpoints/last.pt and stops; a second signal stops at once (StopNow). Handlers are installed
    only in the main thread and restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            raise StopNow(signum)
        self.signum = signum
        print(f"{signal.Signals(signum).name}: finishing this step, then saving checkpoints/last.pt (send it again "
              "to stop at once)", file=sys.stderr, flush=True)
