"""User-facing errors.

Anything caused by the user's input (a missing file or column, an unreadable image, a checkpoint of
the wrong shape, an unreachable hub) raises `UserInputError` with a one-line message. Entry points
catch it through `main_guard` and print `error: <message>` instead of a traceback.
"""
import functools
import sys
from typing import Callable


class UserInputError(Exception):
    """An error the user can fix; its message is one line that says what is wrong and where."""


class RunInterrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving; the entry point exits with `exit_code` (128 + signal)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def main_guard(main: Callable) -> Callable:
    """Run `main`, turning a UserInputError into `error: <message>` on stderr and exit status 2, an
    interrupted training run into its one line and 128 + signal, and Ctrl-C elsewhere into one line and 130."""
    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except RunInterrupted as err:
            print(str(err), file=sys.stderr)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
    return guarded
