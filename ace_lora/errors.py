"""User-facing errors.

Anything caused by the user's input (a missing file or column, an unreadable image, a checkpoint of
the wrong shape, an unreachable hub) raises `UserInputError` with a one-line message. Entry points
catch it through `ace_lora.cli.main_guard` (re-exported by `run_utils`) and print `error: <message>` instead of a traceback.
"""


class UserInputError(Exception):
    """An error the user can fix; its message is one line that says what is wrong and where."""


class RunInterrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after saving; the entry point exits with `exit_code` (128 + signal)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
