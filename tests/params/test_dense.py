"""The dense command lines: out-of-range values are refused in one line before anything is loaded."""
import pytest

from ace_lora.errors import UserInputError
from ace_lora.evaluation.dense.definitions import DENSE_TASKS
from ace_lora.params.dense import parse_dense_args


@pytest.mark.parametrize("task", sorted(DENSE_TASKS))
@pytest.mark.parametrize("flag, value", [("--epochs", "-1"), ("--num-workers", "-2"), ("--patience", "0"),
                                         ("--train-fraction", "1.5")])
def test_bad_values_are_refused(task, flag, value):
    with pytest.raises(UserInputError, match=flag):
        parse_dense_args(task, ["--demo", flag, value])
