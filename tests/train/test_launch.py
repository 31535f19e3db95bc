"""From a parsed command line to a run: the flag checks that need neither the model nor the data."""
import pytest

from ace_lora.errors import UserInputError
from ace_lora.params.training import parse_training_args
from ace_lora.train.launch import check_training_args


def args_of(*flags):
    return parse_training_args(["--train-csv", "train.csv", *flags], "", distributed=False)


@pytest.mark.parametrize("flags, message", [
    (["--method", "bare"], "--method bare trains nothing"),
    (["--peft-config", "x.json"], "--peft-config goes with --method peft"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    (["--lr", "nan"], "--lr must be >= 0, got nan"),
    (["--betas", "0.9", "1.0"], r"--betas must both be in \[0, 1\), got 0.9 1.0"),
    (["--val-dataset", "nih"], "--val-dataset needs --val-csv"),
    (["--resume", "latest", "--overwrite"], "--resume latest continues the run in --output-dir, --overwrite"),
    (["--resume", "auto", "--init-from", "w.pt"], "--init-from starts a new run from trained weights"),
])
def test_contradictory_or_invalid_flags_are_refused_before_any_work(flags, message):
    with pytest.raises(UserInputError, match=message):
        check_training_args(args_of(*flags))


def test_sane_flags_pass():
    check_training_args(args_of("--epochs", "2", "--lr", "1e-4"))
