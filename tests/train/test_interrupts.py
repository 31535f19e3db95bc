"""StopRequest: the first SIGINT/SIGTERM asks the trainer to stop after the step, the second stops at once."""
import os
import signal

import pytest

from ace_lora.train.interrupts import StopNow, StopRequest


def test_first_signal_is_recorded_second_raises_stop_now_and_handlers_are_restored(capsys):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StopNow) as stopped:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signum == signal.SIGTERM  # recorded, the code goes on to finish its step
            os.kill(os.getpid(), signal.SIGINT)
    assert stopped.value.signum == signal.SIGINT and str(stopped.value) == "SIGINT"
    assert not isinstance(stopped.value, Exception)  # no `except Exception` on the way can swallow it
    assert signal.getsignal(signal.SIGTERM) is before
    assert "SIGTERM: finishing this step, then saving checkpoints/last.pt" in capsys.readouterr().err
