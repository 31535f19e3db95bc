"""build_training: what a run computes with, built from its flags, which it never edits."""
import argparse

import pytest

from ace_lora.data.synthetic import write_demo_dataset
from ace_lora.errors import UserInputError
from ace_lora.params.training import parse_training_args
from ace_lora.train.build import build_training
from ace_lora.train.distributed import single_process


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return write_demo_dataset(str(tmp_path_factory.mktemp("data")), n_train=8, n_test_per_class=1)


def flags(model, data, *extra) -> argparse.Namespace:
    return parse_training_args(["--model", model, "--train-csv", data.train_csv, "--batch-size", "4", "--num-workers",
                                "0", "--device", "cpu", "--precision", "fp32", *extra], "test", distributed=False)


def test_the_parts_train_exactly_the_trainables_and_the_flags_stay_as_parsed(tiny_model_name, demo_data):
    args = flags(tiny_model_name, demo_data)
    parsed = dict(vars(args))
    parts = build_training(args, single_process("cpu"))
    assert vars(args) == parsed and args.loss == "auto"  # the run's settings are a resolved copy
    assert parts.settings.loss == "label_guided" and parts.loss.name == "label_guided"
    optimised = [p for group in parts.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimised} == {id(p) for p in parts.raw_model.trainable_parameters()}
    assert parts.steps_per_epoch == 2 and parts.model is parts.raw_model  # one process: no DDP wrapper
    assert parts.scheduler.get_last_lr() == [0.0]  # the warm-up starts from 0


def test_fewer_rows_than_one_batch_is_one_line(tiny_model_name, demo_data):
    with pytest.raises(UserInputError, match="8 training rows, fewer than one global batch"):
        build_training(flags(tiny_model_name, demo_data, "--batch-size", "9"), single_process("cpu"))
