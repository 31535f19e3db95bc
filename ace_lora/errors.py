"""User-facing errors.

Anything caused by the user's input (a missing file or column, an unreadable image, a checkpoint of
the wrong shape, an unreachable hub) raises `UserInputError` with a one-line message. Entry points
catch it through `main_guard` and print `error: <message>` instead of a traceback.

Exit statuses of every entry point (docs/training.md lists them too):

- 0: done (also: a resumed run that was already finished).
- 1: a sweep finished with failed parts (its table is written), or an unexpected error (a traceback).
- 2: a user mistake (`UserInputError`): flags, files, data, checkpoints; nothing half-written is in use.
- 3: training diverged (`TrainingDiverged`): a non-finite loss, gradient or weight; the message names
  the last checkpoint, which holds finite weights only.
- 4: storage failed (`StorageError`): the disk is full, read-only or failing; previous files are intact.
- 128 + N: stopped by signal N (130 SIGINT, 143 SIGTERM) after saving, or at once on a second signal.
"""
import errno
import functools
import sys
from typing import Callable


class UserInputError(Exception):
    """An error the user can fix; its message is one line that says what is wrong and where."""


EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_STORAGE = 2, 3, 4
# OSErrors that mean the storage failed, not the program: one line and EXIT_STORAGE wherever they surface.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


class TrainingDiverged(Exception):
    """A NaN/inf loss, gradient or weight: not a user mistake, so not exit 2 (a scheduler can tell them apart)."""


class StorageError(Exception):
    """Writing an output failed for a reason of the storage (full, read-only, I/O error); one-line message."""


class RunInterrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving; the entry point exits with `exit_code` (128 + signal)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def main_guard(main: Callable) -> Callable:
    """Run `main`, turning a UserInputError into `error: <message>` on stderr and exit status 2 (a
    diverged run: 3, a storage failure: 4), an interrupted training run into its one line and 128 +
    signal, and Ctrl-C elsewhere into one line and 130."""
    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (UserInputError, TrainingDiverged, StorageError) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR if isinstance(err, UserInputError)
                     else EXIT_DIVERGED if isinstance(err, TrainingDiverged) else EXIT_STORAGE)
        except OSError as err:
            if err.errno not in STORAGE_ERRNOS:
                raise
            print(f"error: cannot write {err.filename or 'an output file'}: {err.strerror}", file=sys.stderr)
            sys.exit(EXIT_STORAGE)
        except RunInterrupted as err:
            print(str(err), file=sys.stderr)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
    return guarded
