"""Resume: an interrupted CPU run ends bit-identical to an uninterrupted one; a NaN keeps the last good checkpoint."""
import json

import pytest
import torch

import train
from ace_lora.data.synthetic import write_demo_dataset


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return write_demo_dataset(str(tmp_path_factory.mktemp("data")), n_train=12, n_test_per_class=1)


def run_args(model, data, out_dir, *extra):
    # 12 images, batch 4: 3 steps per epoch, 6 in all; LoRA dropout stays on (0.1), so the RNG matters
    return ["--model", model, "--train-csv", data.train_csv, "--output-dir", str(out_dir), "--batch-size", "4",
            "--epochs", "2", "--num-workers", "0", "--device", "cpu", "--no-progress", "--log-every-steps", "1",
            "--save-every-steps", "2", *extra]


def load(path):
    return torch.load(path, weights_only=True)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timings(path):
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in read_jsonl(path)]


def test_interrupted_run_resumes_bit_identical(tiny_model_name, demo_data, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train.main(run_args(tiny_model_name, demo_data, straight))
    train.main(run_args(tiny_model_name, demo_data, interrupted, "--max-steps", "4"))  # stops inside epoch 2
    stopped = load(interrupted / "checkpoints/last.pt")
    assert (stopped["epoch"], stopped["step"], stopped["step_in_epoch"]) == (1, 4, 1)
    train.main(run_args(tiny_model_name, demo_data, interrupted, "--resume", "latest"))

    expected, resumed = load(straight / "checkpoints/last.pt"), load(interrupted / "checkpoints/last.pt")
    assert resumed["step"] == expected["step"] == 6
    assert expected["trainable"].keys() == resumed["trainable"].keys()
    for name, tensor in expected["trainable"].items():
        assert torch.equal(tensor, resumed["trainable"][name]), name
    for a, b in zip(expected["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert without_timings(interrupted / "metrics.jsonl") == without_timings(straight / "metrics.jsonl")
    assert read_jsonl(interrupted / "steps.jsonl") == read_jsonl(straight / "steps.jsonl")


def test_resume_from_an_epoch_end_and_from_best(tiny_model_name, demo_data, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train.main(run_args(tiny_model_name, demo_data, straight, "--save-every-steps", "0"))
    train.main(run_args(tiny_model_name, demo_data, interrupted, "--save-every-steps", "0", "--max-steps", "3"))
    assert load(interrupted / "checkpoints/last.pt")["step_in_epoch"] == 0
    train.main(run_args(tiny_model_name, demo_data, interrupted, "--save-every-steps", "0", "--resume",
                        str(interrupted / "checkpoints/last.pt")))
    expected, resumed = load(straight / "checkpoints/last.pt"), load(interrupted / "checkpoints/last.pt")
    for name, tensor in expected["trainable"].items():
        assert torch.equal(tensor, resumed["trainable"][name]), name


def test_resume_refuses_a_different_model(tiny_model_name, demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(run_args(tiny_model_name, demo_data, out, "--max-steps", "2"))
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_args(tiny_model_name, demo_data, out, "--resume", "latest", "--lora-r", "8"))
    assert exit_info.value.code == 2
    assert "was trained with a different model: r=4 (now 8)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # mid-epoch checkpoint, other batch size: the skipped batches would differ
        train.main(run_args(tiny_model_name, demo_data, out, "--resume", "latest", "--batch-size", "2"))
    assert "stopped mid-epoch with 3 steps per epoch, this run has 6" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_name, demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    # an absurd learning rate: the first update is finite, the second forward overflows to NaN
    argv = run_args(tiny_model_name, demo_data, out, "--lr", "1e30", "--warmup-epochs", "0", "--save-every-steps", "1")
    train.main(argv + ["--max-steps", "1"])
    before = (out / "checkpoints/last.pt").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv + ["--resume", "latest"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the training loss became nan")
    assert "at step 2 (epoch 1)" in err[0] and "last good checkpoint" in err[0]
    assert (out / "checkpoints/last.pt").read_bytes() == before


def test_resume_refuses_a_different_number_of_processes(tiny_model_name, demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(run_args(tiny_model_name, demo_data, out, "--max-steps", "3", "--save-every-steps", "0"))
    state = load(out / "checkpoints/last.pt")
    assert len(state["rng"]) == 1 and state["step_in_epoch"] == 0  # an epoch end: the data order would fit
    state["rng"] = state["rng"] * 2  # as if written by two DDP processes
    torch.save(state, out / "checkpoints/last.pt")
    with pytest.raises(SystemExit) as exit_info:
        train.main(run_args(tiny_model_name, demo_data, out, "--resume", "latest"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("last.pt was written by 2 process(es), this run has 1: resume with the "
                                             "same number of processes (each rank restores its own RNG state)")
