"""The cluster plumbing without a cluster: the `cluster:` settings, the requeue at SIGUSR2 and a sweep's
submission through submitit's local executor, the status table's states. tests/test_slurm.py runs the
same on a real SLURM."""
import os
import signal
import sys
import time

import pandas as pd
import pytest
import submitit
import yaml

from ace_lora import sweep
from ace_lora.errors import UserInputError
from ace_lora.io import write_json
from ace_lora.runners.cluster import ClusterConfig, RequeueableCall, cluster_config, make_executor, submit_calls
from ace_lora.runners.scripts import SCRIPTS, cpu_slots
from ace_lora.submit import main as submit_main
from tests.conftest import error_exit_line


def test_cluster_settings_are_checked_with_close_matches():
    assert cluster_config({"partition": "gpu", "time_min": 30, "gpus_per_node": 0}).tasks == 1
    assert cluster_config({"gpus_per_node": 4, "nodes": 2}).tasks == 8  # one task per GPU
    with pytest.raises(UserInputError, match=r"^cluster: unknown key 'partiton' \(did you mean 'partition'\?\)$"):
        cluster_config({"partiton": "gpu"})
    with pytest.raises(UserInputError, match=r"'time_min' must be an integer >= 1, got 0"):
        cluster_config({"time_min": 0})
    with pytest.raises(UserInputError, match=r"'setup' must be a list of shell lines"):
        cluster_config({"setup": "module load cuda"})


def test_command_line_mistakes_are_one_line(tmp_path, capsys, monkeypatch):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"model": "m", "runs": [{"name": "a"}], "evaluations": [],
                                      "cluster": {"gpu_per_node": 1}}))
    out = str(tmp_path / "out")
    line = error_exit_line(capsys, sweep.main, [str(config), "--output-dir", out, "--launcher", "slurm"])
    assert line == "error: cluster: unknown key 'gpu_per_node' (did you mean 'gpus_per_node'?)"
    config.write_text(yaml.safe_dump({"model": "m", "runs": [{"name": "a"}], "evaluations": []}))
    line = error_exit_line(capsys, sweep.main, [str(config), "--output-dir", out, "--no-wait"])
    assert line == "error: --no-wait goes with --launcher slurm (the local runner runs the parts itself)"
    line = error_exit_line(capsys, sweep.main, [str(config), "--output-dir", out, "--launcher", "slurm",
                                                "--parallel", "2"])
    assert "--parallel is for --launcher local" in line
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    line = error_exit_line(capsys, sweep.main, [str(config), "--output-dir", out, "--launcher", "slurm"])
    assert line == "error: sbatch was not found on PATH: run this on a SLURM login node, or use --launcher local"
    line = error_exit_line(capsys, submit_main, ["--gpus-per-node", "0", "--", "--demo", "--output-dir", out])
    assert line.startswith("error: sbatch was not found on PATH")
    assert not os.path.exists(out)  # nothing written by a refused command
    line = error_exit_line(capsys, submit_main, ["--gpus-per-node", "0"])
    assert line.startswith("error: give the training flags after `--`")


def test_cpu_slots_split_the_cores_without_overlap():
    cores = sorted(os.sched_getaffinity(0))
    slots = cpu_slots(len(cores))
    assert sorted(core for slot in slots for core in slot) == cores and all(len(slot) == 1 for slot in slots)
    assert cpu_slots(1) == [cores]


SCRIPT = """
import os, signal, sys, time
folder = sys.argv[1]
if os.path.exists(os.path.join(folder, "saved")):
    open(os.path.join(folder, "finished"), "w").close()
    sys.exit(0)
def save(signum, frame):
    open(os.path.join(folder, "saved"), "w").write(signal.Signals(signum).name)
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, save)
open(os.path.join(folder, "started"), "w").close()
time.sleep(120)  # bounded: a failed test leaves nothing running for long
"""


def run_until_finished(folder: str) -> str:
    """A job that runs a script which saves at SIGTERM and finishes when it is started again."""
    error = SCRIPTS.run([sys.executable, "-c", SCRIPT, folder], os.path.join(folder, "log.txt"))
    return "finished" if error is None else error


def descendants(pid: int) -> list:
    """The processes below `pid` (Linux /proc), nearest first."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop(0)
        children = [int(c) for c in open(f"/proc/{parent}/task/{parent}/children").read().split()]
        found += children
        queue += children
    return found


def test_sigusr2_makes_the_running_script_save_and_requeues_the_same_call(tmp_path):
    executor = make_executor(ClusterConfig(time_min=5, gpus_per_node=0, cpus_per_task=1), str(tmp_path / "jobs"),
                             name="t", kind="local")
    [job] = submit_calls(executor, [RequeueableCall(run_until_finished, str(tmp_path))])
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and job.state == "RUNNING", job.stderr()
        time.sleep(0.05)
    for pid in descendants(job._process.pid):  # as SLURM does before the time limit: every process of the job
        os.kill(pid, signal.SIGUSR2)
    assert job.result() == "finished"
    assert (tmp_path / "saved").read_text() == "SIGTERM"  # told once, by the job, to save
    assert (tmp_path / "log.txt").read_text().count("--- ") == 2  # the requeued call ran the script again


def test_a_sweep_through_submitits_local_executor_records_its_jobs_and_resubmits_nothing_done(tmp_path,
                                                                                           tiny_model_name):
    from ace_lora.data.synthetic import write_demo_dataset
    data = write_demo_dataset(str(tmp_path / "data"), n_train=8, n_test_per_class=2)
    config = {"model": tiny_model_name, "seeds": [1], "train": {},
              "runs": [{"name": "bare", "method": "bare"}],
              "evaluations": [{"name": "chexpert", "task": "chexpert", "csv": data.test_csv,
                               "overrides": {"device": "cpu", "num_workers": 0, "bootstrap": 0}}]}
    out = str(tmp_path / "out")
    cluster = ClusterConfig(time_min=5, gpus_per_node=0, cpus_per_task=1)
    assert sweep.run_on_cluster(config, out, cluster, poll_s=0.2, kind="local") == 0
    record = sweep.read_json(os.path.join(out, "runs", "bare", "seed1", sweep.PART_RECORD))
    assert record["job_id"].isdigit() and os.path.isfile(record["log"])
    results = pd.read_csv(os.path.join(out, "results.csv"))
    assert (results["status"] == "ok").all() and set(results["metric"]) == {"auroc", "accuracy"}
    assert sweep.run_on_cluster(config, out, cluster, poll_s=0.2, kind="local") == 0
    assert sweep.read_json(os.path.join(out, "runs", "bare", "seed1", sweep.PART_RECORD)) == record  # not again


def test_status_states_from_markers_records_and_the_scheduler(tmp_path, monkeypatch):
    """done (markers win), queued / running (the scheduler), failed (its final state, or an error result),
    lost (unknown to the scheduler, no result), not submitted."""
    runs = ["done", "queued", "running", "cancelled", "errored", "lost", "new"]
    config = {"model": "m", "seeds": [1], "runs": [{"name": name} for name in runs],
              "evaluations": [{"name": "chexpert", "task": "chexpert", "csv": "x"}]}
    out = str(tmp_path)
    for number, name in enumerate(runs[:-1], start=1):
        write_json(os.path.join(out, "runs", name, "seed1", sweep.PART_RECORD),
                   {"job_id": f"7_{number}", "log": f"log{number}", "folder": str(tmp_path / "jobs")})
    for marker in ("train", "chexpert"):
        write_json(os.path.join(out, "runs", "done", "seed1", marker, "done.json"),
                   {"status": "ok", "seconds": 75.0, "metrics": {}})
    write_json(os.path.join(out, "runs", "cancelled", "seed1", "train", "failed.json"), {"error": "bad flag"})
    result = submitit.core.utils.JobPaths(str(tmp_path / "jobs" / "%j"), job_id="7_5").result_pickle
    result.parent.mkdir(parents=True)
    submitit.core.utils.cloudpickle_dump(("error", "Traceback ..."), result)
    scheduler = {"7_1": "COMPLETED", "7_2": "PENDING", "7_3": "RUNNING", "7_4": "CANCELLED"}
    known = {job_id: {"state": state, "elapsed": "0:42"} for job_id, state in scheduler.items()}
    monkeypatch.setattr(sweep, "job_states", lambda ids, kind: {i: known[i] for i in ids if i in known})
    rows = {row["run"]: row for row in sweep.part_statuses(config, out)}
    assert {name: rows[name]["state"] for name in runs} == {
        "done": "done", "queued": "queued", "running": "running", "cancelled": "failed", "errored": "failed",
        "lost": "lost", "new": "not submitted"}
    assert rows["cancelled"]["reason"] == "job 7_4 CANCELLED" and rows["lost"]["reason"].endswith("left no result")
    assert rows["running"]["elapsed"] == "0:42" and rows["running"]["log"] == "log3"
    table = sweep.status_table(list(rows.values())).splitlines()
    assert table[0].split() == ["part", "state", "job_id", "elapsed", "log"] and len(table) == 1 + len(runs)
    results = sweep.collect_results(config, out, {("cancelled", 1): "job 7_4 CANCELLED"})
    assert results.set_index("run").loc["cancelled", "status"] == "failed: bad flag"  # the script's own reason


def test_local_parallel_parts_get_their_own_gpu_and_cores(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    slots = sweep.local_slots(min(2, cores))
    assert [slot["env"].get("CUDA_VISIBLE_DEVICES") for slot in slots] == ["3", "5"][:len(slots)]
    assert all(slot["env"]["OMP_NUM_THREADS"] == str(len(slot["cpus"])) for slot in slots)
    if cores >= 3:
        with pytest.raises(UserInputError, match=r"--parallel 3 but 2 GPU\(s\) are visible"):
            sweep.local_slots(3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: the cores are shared out
    assert "CUDA_VISIBLE_DEVICES" not in sweep.local_slots(1)[0]["env"]
    with pytest.raises(UserInputError, match=rf"--parallel {cores + 1} but this machine gives {cores} core"):
        sweep.local_slots(cores + 1)
