"""main_guard: one line and a documented exit status per kind of failure, never a traceback."""
import errno

import pytest

from ace_lora.errors import (
    EXIT_DIVERGED,
    EXIT_STORAGE,
    EXIT_USER_ERROR,
    RunInterrupted,
    StorageError,
    TrainingDiverged,
    UserInputError,
    main_guard,
)


@pytest.mark.parametrize("error, status, line", [
    (UserInputError("no such file"), EXIT_USER_ERROR, "error: no such file"),
    (TrainingDiverged("the loss became nan"), EXIT_DIVERGED, "error: the loss became nan"),
    (StorageError("cannot write x: the device is full"), EXIT_STORAGE, "error: cannot write x: the device is full"),
    (OSError(errno.ENOSPC, "No space left on device", "/out/log.txt"), EXIT_STORAGE,
     "error: cannot write /out/log.txt: No space left on device"),
    (RunInterrupted("interrupted at step 3; resume with --resume latest", 143), 143,
     "interrupted at step 3; resume with --resume latest"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_each_failure_is_one_line_with_its_status(capsys, error, status, line):
    @main_guard
    def main():
        raise error

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == status
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert len({EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_STORAGE}) == 3  # a scheduler can tell them apart


def test_other_errors_keep_their_traceback():
    @main_guard
    def main():
        raise OSError(errno.ENOENT, "No such file or directory")  # not a storage failure: a bug to see

    with pytest.raises(OSError):
        main()
