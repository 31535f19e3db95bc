"""The sweep runner: the demo table, and a sweep killed after its first run resumes without retraining."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from ace_lora import sweep
from ace_lora.data.synthetic import write_demo_dataset
from ace_lora.tiny_model import write_tiny_biomedclip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_sweep_writes_a_table_with_a_row_per_run_and_a_column_per_evaluation(tmp_path):
    out = tmp_path / "demo"
    assert sweep.main(["--demo", "--output-dir", str(out)]) == 0
    results = pd.read_csv(out / "results.csv")
    assert (results["status"] == "ok").all()
    assert set(results["run"]) == {"bare", "lora", "ace_lora", "dora"}
    assert set(results["evaluation"]) == {"chexpert", "siim_seg"}
    table = (out / "results.md").read_text().strip().splitlines()
    assert table[0] == "| run | method | trainable | train time (s) | chexpert (auroc) | siim_seg (dice) |"
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:]}
    assert set(rows) == {"bare", "lora", "ace_lora", "dora"} and "**" in table[2] + table[3] + table[4] + table[5]
    auroc = results[results["metric"] == "auroc"].set_index("run")["value"]
    assert all(auroc[run] > auroc["bare"] for run in ("lora", "ace_lora", "dora"))  # training helps
    assert results[results["run"] == "lora"]["trainable_parameters"].iloc[0] == 12_289
    assert (out / "results_chexpert.png").is_file() and (out / "results_siim_seg.png").is_file()


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    data = write_demo_dataset(str(root / "data"), n_train=48, n_test_per_class=4)
    model = write_tiny_biomedclip(str(root / "model"), data.vocabulary)
    config = {"model": model, "seeds": [1],
              "train": {"train_csv": data.train_csv, "epochs": 2, "batch_size": 8, "lr": 2e-3, "device": "cpu",
                        "num_workers": 0},
              "runs": [{"name": "lora", "method": "lora"}, {"name": "ace_lora", "method": "ace_lora"},
                       {"name": "broken", "method": "ace_lora", "overrides": {"lora_r": 0}}],
              "evaluations": [{"name": "chexpert", "task": "chexpert", "csv": data.test_csv,
                               "overrides": {"device": "cpu", "num_workers": 0, "bootstrap": 20}}]}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_killed_sweep_resumes_without_recomputing_and_ends_with_the_same_table(small_sweep, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert sweep.main([small_sweep, "--output-dir", str(straight)]) == 0
    expected = pd.read_csv(straight / "results.csv")
    broken = expected[expected["run"] == "broken"]
    assert broken["status"].str.startswith("failed: LoRA rank must be >= 1").all()  # reported, others went on

    process = subprocess.Popen([sys.executable, "-m", "ace_lora.sweep", small_sweep, "--output-dir", str(killed)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = killed / "runs" / "lora" / "seed1"
    deadline = time.monotonic() + 300
    while not (first / "chexpert" / "done.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and the training it has started, at once
    process.wait()
    checkpoint = first / "train" / "checkpoints" / "best.pt"
    before = checkpoint.stat().st_mtime_ns
    assert sweep.main([small_sweep, "--output-dir", str(killed)]) == 0
    assert checkpoint.stat().st_mtime_ns == before  # the finished run was not trained again
    resumed = pd.read_csv(killed / "results.csv")
    pd.testing.assert_frame_equal(resumed.drop(columns=["train_seconds"]), expected.drop(columns=["train_seconds"]))
    assert (killed / "results.md").read_text().count("\n") == (straight / "results.md").read_text().count("\n")


def test_bad_sweep_configs_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": "m", "runs": [{"name": "a", "method": "magic"}], "evaluations": []}))
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([str(bad), "--output-dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: run a: unknown method 'magic'"
    with pytest.raises(SystemExit):
        sweep.main(["--output-dir", str(tmp_path / "o")])
    assert "give a sweep YAML or --demo" in capsys.readouterr().err


def test_every_paper_config_is_a_valid_sweep_whose_runs_parse_as_training_flags():
    from ace_lora.params.training import parse_training_args
    configs = sorted(f for f in os.listdir(os.path.join(ROOT, "configs", "paper")) if f.endswith(".yaml"))
    assert len(configs) >= 7
    for name in configs:
        config = sweep.read_sweep(os.path.join(ROOT, "configs", "paper", name))
        for run in config["runs"]:
            values = {**config.get("train", {}), **run.get("overrides", {}), "method": run.get("method", "ace_lora")}
            args = parse_training_args(sweep.flags(values), "", distributed=False)
            assert args.method == run.get("method", "ace_lora"), (name, run["name"])
