import argparse

import pytest

from ace_lora.errors import UserInputError
from ace_lora.params import parse_with_config


def make_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--loss", choices=("clip", "label_guided"), default="label_guided")
    parser.add_argument("--params", nargs="+", choices=("q", "k", "v", "o"), default=["q"])
    parser.add_argument("--demo", action="store_true")
    return parser


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_values_are_converted_and_flags_override(tmp_path):
    cfg = write(tmp_path, "lr: 1e-3\nloss: clip\nparams: [q, v]\ndemo: true\n")
    args = parse_with_config(make_parser(), ["--config", cfg])
    assert args.lr == 0.001 and args.loss == "clip" and args.params == ["q", "v"] and args.demo is True
    args = parse_with_config(make_parser(), ["--config", cfg, "--loss", "label_guided", "--lr", "2"])
    assert args.loss == "label_guided" and args.lr == 2.0


@pytest.mark.parametrize("text, message", [
    ("loss: foo\n", r"loss='foo' is not one of clip, label_guided"),
    ("params: [q, x]\n", r"params='x' is not one of q, k, v, o"),
    ("params: q\n", "params takes a list"),
    ("lr: fast\n", "lr has an invalid value 'fast'"),
    ("demo: maybe\n", "demo must be true or false"),
    ("nope: 1\n", "unknown keys nope"),
    ("lr: [1\n", r"not valid YAML \(line 2\)"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_bad_config_values_name_file_and_key(tmp_path, text, message):
    cfg = write(tmp_path, text)
    with pytest.raises(UserInputError, match=message):
        parse_with_config(make_parser(), ["--config", cfg])


def test_missing_config_file(tmp_path):
    with pytest.raises(UserInputError, match="config file not found"):
        parse_with_config(make_parser(), ["--config", str(tmp_path / "none.yaml")])


def test_evaluation_defaults_to_fp32_and_training_to_auto():
    """The release evaluated in fp32: its numbers come out by default on a GPU too; training keeps bf16 there."""
    from ace_lora.params.evaluation import predict_parser, retrieval_parser, zero_shot_parser
    from ace_lora.params.training import parse_training_args
    assert zero_shot_parser("chexpert").parse_args(["--csv", "x"]).precision == "fp32"
    assert retrieval_parser("").parse_args(["--csv", "x"]).precision == "fp32"
    assert predict_parser("").parse_args(["a.png", "--classes", "a"]).precision == "fp32"
    assert parse_training_args([], "", distributed=False).precision == "auto"
