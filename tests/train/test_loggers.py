"""--tensorboard writes the numbers of steps.jsonl and metrics.jsonl; --wandb without the package is one line."""
import importlib.util
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from ace_lora.data.synthetic import write_demo_dataset
from ace_lora.train.loggers import TENSORBOARD_DIR


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return write_demo_dataset(str(tmp_path_factory.mktemp("data")), n_train=12, n_test_per_class=2)


def run_args(model, data, out, *extra):
    return ["--model", model, "--train-csv", data.train_csv, "--output-dir", str(out), "--batch-size", "4",
            "--epochs", "2", "--num-workers", "0", "--device", "cpu", "--no-progress", "--log-every-steps", "1",
            "--val-dataset", "chexpert", "--val-csv", data.test_csv, *extra]


def scalars(folder, tag):
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_event_file_holds_the_logged_values(tiny_model_name, demo_data, tmp_path):
    out = tmp_path / "run"
    assert train.main(run_args(tiny_model_name, demo_data, out, "--tensorboard")) == 0
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    board = out / TENSORBOARD_DIR
    assert [(s, pytest.approx(v)) for s, v in scalars(board, "train/loss")] == \
        [(r["step"], pytest.approx(r["loss"])) for r in steps]
    assert [s for s, _ in scalars(board, "train/lr")] == [r["step"] for r in steps]
    assert all(v > 0 for _, v in scalars(board, "train/logit_scale"))
    for key in ("val_auroc", "train_loss", "images_per_s"):
        assert [(s, pytest.approx(v)) for s, v in scalars(board, f"epoch/{key}")] == \
            [(r["step"], pytest.approx(r[key])) for r in metrics], key


def test_wandb_without_the_package_is_one_line_before_the_model_loads(demo_data, tmp_path, capsys):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: the missing-package message cannot show")
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_args("local-dir:/nonexistent", demo_data, tmp_path / "run", "--wandb", "my-project"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --wandb needs the wandb package: pip install wandb "
                                               "(then wandb login)")


def test_the_run_log_drops_the_records_past_a_resumed_step_and_only_rank_0_writes(tmp_path):
    from ace_lora.train.loggers import METRICS_FILE, STEPS_FILE, RunLog
    log = RunLog(str(tmp_path), active=True)
    for step in (1, 2, 3):
        log.step({"step": step, "epoch": 1, "loss": 1.0 / step, "lr": 0.1}, logit_scale=10.0)
    log.epoch({"epoch": 1, "step": 2, "train_loss": 0.7})
    log.epoch({"epoch": 2, "step": 3, "train_loss": 0.5})
    log.truncate(2)
    assert [r["step"] for r in log.epochs()] == [2]
    assert [json.loads(line)["step"] for line in (tmp_path / STEPS_FILE).read_text().splitlines()] == [1, 2]
    other = tmp_path / "other"
    other.mkdir()
    RunLog(str(other), active=False).epoch({"epoch": 1, "step": 1})
    assert not (other / METRICS_FILE).exists()
