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
from ace_lora.model.tiny_model import write_tiny_biomedclip

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


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_recomputing_and_ends_with_the_same_table(small_sweep, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert sweep.main([small_sweep, "--output-dir", str(straight)]) == 1  # the broken part: exit 1, table written
    expected = pd.read_csv(straight / "results.csv")
    broken = expected[expected["run"] == "broken"]
    assert broken["status"].str.startswith("failed: --lora-r must be >= 1").all()  # reported, others went on

    process = subprocess.Popen([sys.executable, "-m", "ace_lora.sweep", small_sweep, "--output-dir", str(killed)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = killed / "runs" / "lora" / "seed1"
    deadline = time.monotonic() + 300
    while not (first / "chexpert" / "done.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep at once; its training gets SIGTERM, saves and exits
    process.wait()
    lock = killed / "runs" / "ace_lora" / "seed1" / "train" / ".lock"
    while lock.exists():  # the orphaned training is saving
        assert time.monotonic() < deadline
        time.sleep(0.05)
    checkpoint = first / "train" / "checkpoints" / "best.pt"
    before = checkpoint.stat().st_mtime_ns
    assert sweep.main([small_sweep, "--output-dir", str(killed)]) == 1
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


def write_sweep_yaml(folder, data_name="data", model_name="model", **train):
    """A one-run sweep whose YAML names its data and model by paths relative to the YAML's folder."""
    data = write_demo_dataset(str(folder / data_name), n_train=48, n_test_per_class=2)
    write_tiny_biomedclip(str(folder / model_name), data.vocabulary)
    config = {"model": f"local-dir:{model_name}", "seeds": [1],
              "train": {"train_csv": os.path.relpath(data.train_csv, folder), "batch_size": 4, "device": "cpu",
                        "num_workers": 0, **train},
              "runs": [{"name": "ace_lora", "method": "ace_lora"}],
              "evaluations": [{"name": "chexpert", "task": "chexpert", "csv": os.path.relpath(data.test_csv, folder),
                               "overrides": {"device": "cpu", "num_workers": 0, "bootstrap": 0}}]}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_relative_paths_and_a_run_shorter_than_an_epoch(tmp_path):
    """YAML paths start at the YAML's folder, --output-dir at the caller's; --max-steps inside epoch 1 still
    leaves the best.pt that the evaluation reads."""
    config_dir, caller = tmp_path / "configs", tmp_path / "elsewhere"
    config_dir.mkdir()
    caller.mkdir()
    path = write_sweep_yaml(config_dir, epochs=1, max_steps=2)
    done = subprocess.run([sys.executable, "-m", "ace_lora.sweep", os.path.relpath(path, caller), "--output-dir",
                           "out"], cwd=caller, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stdout + done.stderr
    results = pd.read_csv(caller / "out" / "results.csv")
    assert (results["status"] == "ok").all() and not (pd.Series(os.listdir(ROOT)) == "out").any()
    assert (caller / "out" / "runs" / "ace_lora" / "seed1" / "train" / "checkpoints" / "best.pt").is_file()


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_lets_the_training_save_and_the_rerun_continues_it(tmp_path):
    path = write_sweep_yaml(tmp_path, epochs=3, save_every_steps=0, log_every_steps=1)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ace_lora.sweep", str(path), "--output-dir", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    part = out / "runs" / "ace_lora" / "seed1" / "train"
    deadline = time.monotonic() + 300
    while not ((part / "steps.jsonl").is_file() and len((part / "steps.jsonl").read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # to the sweep alone, as a terminal's Ctrl-C now reaches only it
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        f"SIGINT: the sweep stopped after its running part saved and exited (status 130); continue with: python -m "
        f"ace_lora.sweep {path} --output-dir {out}")
    import torch
    saved = torch.load(part / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < saved["step"] < 36 and not (part / ".lock").exists()
    first_seconds = sweep.read_json(str(part / "train_time.json"))["seconds"]
    assert sweep.main([str(path), "--output-dir", str(out)]) == 0
    log = (out / "runs" / "ace_lora" / "seed1" / "train.log").read_text()
    assert log.count("\n--- ") + log.startswith("--- ") == 2  # both attempts, appended
    assert f"resumed from {part / 'checkpoints' / 'last.pt'}" in log
    results = pd.read_csv(out / "results.csv")
    assert results["train_seconds"].iloc[0] > first_seconds  # every attempt counts


def test_an_evaluation_of_the_validation_set_is_refused_unless_marked_and_then_marked_in_the_table(tmp_path, capsys):
    from tests.conftest import error_exit_line
    config = {"model": "m", "train": {"val_dataset": "nih", "val_csv": "splits/nih_test.csv"},
              "runs": [{"name": "ace_lora"}],
              "evaluations": [{"name": "nih", "task": "nih", "csv": "splits/../splits/nih_test.csv"}]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    line = error_exit_line(capsys, sweep.main, [str(path), "--output-dir", str(tmp_path / "out")])
    assert line.startswith(f"error: {path}: evaluation nih scores {tmp_path / 'splits' / 'nih_test.csv'}, the "
                           "validation set (val_csv) that chooses each run's best checkpoint: report a held-out set")
    config["evaluations"][0]["held_out"] = False
    path.write_text(yaml.safe_dump(config))
    read = sweep.read_sweep(str(path))
    results = pd.DataFrame([{"run": "ace_lora", "method": "ace_lora", "seed": 1, "evaluation": "nih", "metric": "auroc",
                             "value": 0.7, "ci_low": None, "ci_high": None, "status": "ok", "trainable_parameters": 1,
                             "train_seconds": 1.0}])
    table = sweep.markdown_table(read, results).splitlines()
    assert table[0].endswith("| nih (auroc) † |") and table[-1].startswith("† not held out")


def test_a_transformers_model_folder_beside_the_sweep_file_is_made_absolute_and_a_hub_id_kept(tmp_path):
    (tmp_path / "models" / "medsiglip").mkdir(parents=True)
    resolved = sweep.resolve_paths({"model": "hf:models/medsiglip"}, str(tmp_path))
    assert resolved["model"] == f"hf:{tmp_path / 'models' / 'medsiglip'}"
    hub = sweep.resolve_paths({"model": "hf:google/medsiglip-448"}, str(tmp_path))
    assert hub["model"] == "hf:google/medsiglip-448"
