"""The sweep and the training job on a real one-node SLURM started on this machine (tools/local_slurm.sh),
with the tiny model on CPU: results equal to the local runner's, a requeued part resuming to the same
weights, a cancelled part resubmitted alone, a killed driver collecting later without resubmitting, a part
reaching its time limit, a two-task srun training equal to torchrun's, and the scheduler's refusals.

SLURM holds a requeued job for about two minutes before it may start again; the cluster fixture releases
such jobs after 20 s (as an administrator could), so that the tests wait less.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch
import yaml

from ace_lora import sweep
from ace_lora.data.synthetic import write_demo_dataset
from ace_lora.io import read_json, write_json
from ace_lora.model.tiny_model import write_tiny_biomedclip
from tests.conftest import error_exit_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def scheduler(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM for this module; every job cancelled and both daemons stopped at the end."""
    if shutil.which("slurmctld") is None or shutil.which("slurmd") is None:
        pytest.skip("slurmctld not found: install Debian's slurm-wlm (apt-get install slurm-wlm; .ci/run does) to "
                    "run the tests on a real SLURM")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM's daemons run as root here (tools/local_slurm.sh); not root")
    folder = tmp_path_factory.mktemp("slurm")
    script = os.path.join(ROOT, "tools", "local_slurm.sh")
    subprocess.run([script, "start", str(folder)], check=True, capture_output=True,
                   env={**os.environ, "KILL_WAIT": "15"})
    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", str(folder / "slurm.conf"))
    patch.setenv("OMP_NUM_THREADS", "1")  # every run of these tests, local or a job, computes alike
    stop = threading.Event()

    def release_requeued():
        """Start a requeued job 20 s after its requeue instead of ~120 s: the previous attempt's processes
        are gone by then (KillWait 15 s); sooner, SLURM kills the new attempt ("Job credential revoked")."""
        held_since = {}
        while not stop.wait(0.5):
            pending = subprocess.run(["squeue", "--noheader", "--array", "--states=PENDING", "--format=%i %r"],
                                     capture_output=True, text=True).stdout.split("\n")
            held = [line.split()[0] for line in pending if line.endswith("BeginTime")]
            held_since = {job_id: held_since.get(job_id, time.monotonic()) for job_id in held}
            for job_id, since in held_since.items():
                if time.monotonic() - since > 20:
                    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)

    releaser = threading.Thread(target=release_requeued, daemon=True)
    releaser.start()
    yield folder
    stop.set()
    releaser.join()
    subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True)
    subprocess.run([script, "stop", str(folder)], capture_output=True)
    patch.undo()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    demo = write_demo_dataset(str(root / "data"), n_train=48, n_test_per_class=4)
    return demo, write_tiny_biomedclip(str(root / "model"), demo.vocabulary)


def write_sweep(folder, data, runs, epochs=20, **cluster) -> str:
    """A sweep of `runs` whose trainings last long enough (~120 steps) to be interrupted while they train."""
    demo, model = data
    config = {"model": model, "seeds": [1],
              "train": {"train_csv": demo.train_csv, "epochs": epochs, "batch_size": 8, "lr": 2e-3, "device": "cpu",
                        "num_workers": 0, "log_every_steps": 1, "save_every_steps": 0},
              "runs": [{"name": name, "method": name} for name in runs],
              "evaluations": [{"name": "chexpert", "task": "chexpert", "csv": demo.test_csv,
                               "overrides": {"device": "cpu", "num_workers": 0, "bootstrap": 20}}],
              "cluster": {"gpus_per_node": 0, "cpus_per_task": 1, "time_min": 20, **cluster}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def local_reference(slurm, data, tmp_path_factory):
    """The same two-run sweep by the local runner, two parts at once: the table and weights to match."""
    root = tmp_path_factory.mktemp("local")
    config = write_sweep(root, data, ["lora", "ace_lora"])
    assert sweep.main([config, "--output-dir", str(root / "out"), "--parallel", "2"]) == 0
    return config, root / "out"


def trained_weights(out, run: str) -> dict:
    path = os.path.join(out, "runs", run, "seed1", "train", "checkpoints", "last.pt")
    return torch.load(path, map_location="cpu", weights_only=True)["trainable"]


def part_record(out, run: str) -> dict:
    return read_json(os.path.join(out, "runs", run, "seed1", sweep.PART_RECORD))


def wait_for(condition, what: str, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def steps_done(out, run: str) -> int:
    path = os.path.join(out, "runs", run, "seed1", "train", "steps.jsonl")
    return len(open(path).read().splitlines()) if os.path.isfile(path) else 0


def test_a_sweep_on_slurm_survives_its_driver_a_requeue_and_a_cancel_and_equals_the_local_table(
        slurm, local_reference, tmp_path, capsys):
    config, local = local_reference
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ace_lora.sweep", config, "--output-dir", str(out), "--launcher", "slurm",
               "--poll-s", "1"]
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: part_record(out, "lora") and part_record(out, "ace_lora"), "the job records")
    driver.send_signal(signal.SIGKILL)  # the driver goes away; its jobs must not
    driver.wait()
    first = {run: part_record(out, run)["job_id"] for run in ("lora", "ace_lora")}
    assert first["lora"].split("_")[0] == first["ace_lora"].split("_")[0]  # one job array

    wait_for(lambda: steps_done(out, "lora") >= 2, "lora's training")
    scheduler("scontrol", "requeue", first["lora"])  # preemption: SIGTERM to every process, then requeued
    wait_for(lambda: steps_done(out, "ace_lora") >= 2, "ace_lora's training")
    scheduler("scancel", first["ace_lora"])
    wait_for(lambda: {r["run"]: r["state"] for r in sweep.part_statuses(read_json_yaml(out), str(out))}["ace_lora"]
             == "failed", "the cancelled part to be reported failed")

    capsys.readouterr()
    assert sweep.main(command[3:]) == 0  # the same command: resubmits the cancelled part only, then collects
    printed = capsys.readouterr().out
    assert f"ace_lora/seed1: failed (job {first['ace_lora']} CANCELLED): resubmitting" in printed
    assert "submitted 1 part(s)" in printed
    assert part_record(out, "lora")["job_id"] == first["lora"]  # never resubmitted: requeued by SLURM itself
    assert part_record(out, "ace_lora")["job_id"] != first["ace_lora"]

    expected, results = pd.read_csv(local / "results.csv"), pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(results.drop(columns=["train_seconds"]), expected.drop(columns=["train_seconds"]))
    for run in ("lora", "ace_lora"):
        log = (out / "runs" / run / "seed1" / "train.log").read_text()
        assert "resumed from" in log, run  # both were interrupted mid-training and continued
        reference, resumed = trained_weights(local, run), trained_weights(out, run)
        assert reference.keys() == resumed.keys()
        assert all(torch.equal(reference[name], resumed[name]) for name in reference), run

    capsys.readouterr()
    assert sweep.main(["status", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in table[1:3]] == [["lora/seed1", "done"], ["ace_lora/seed1", "done"]]


def read_json_yaml(out) -> dict:
    return yaml.safe_load((out / "sweep.yaml").read_text())


def test_a_part_reaching_its_time_limit_saves_is_requeued_and_finishes(slurm, data, tmp_path):
    """SIGUSR2 comes signal_delay_s before the time limit: the job's training saves, submitit requeues the job
    and the next attempt resumes. The limit is lowered to one minute once the training runs, so that the
    signal (SLURM looks every ~30 s) reaches it while it trains, and raised again for the next attempt."""
    config = write_sweep(tmp_path, data, ["lora"], epochs=60, time_min=20, signal_delay_s=50)
    out = tmp_path / "out"
    command = [config, "--output-dir", str(out), "--launcher", "slurm", "--poll-s", "1"]
    assert sweep.main([*command, "--no-wait"]) == 0
    job_id = part_record(out, "lora")["job_id"]
    wait_for(lambda: steps_done(out, "lora") >= 6, "lora's training")
    scheduler("scontrol", "update", f"JobId={job_id}", "TimeLimit=1")  # now past its signal time
    wait_for(lambda: "Requeued job" in job_log(out), "the requeue at the time limit", seconds=120)
    scheduler("scontrol", "update", f"JobId={job_id}", "TimeLimit=20")
    assert sweep.main(command) == 0  # the same job id, requeued by submitit: followed, not resubmitted
    assert part_record(out, "lora")["job_id"] == job_id
    log = (out / "runs" / "lora" / "seed1" / "train.log").read_text()
    assert "SIGTERM: finishing this step, then saving" in log and "resumed from" in log
    assert "finished 60 epochs (step 360)" in log
    assert "Caught signal SIGUSR2" in job_log(out)
    assert pd.read_csv(out / "results.csv")["status"].eq("ok").all()


def job_log(out) -> str:
    """The part's job's output (submitit logs INFO to .out, warnings to .err)."""
    paths = [part_record(out, "lora")["log"], part_record(out, "lora")["log"].replace(".out", ".err")]
    return "".join(open(path).read() for path in paths if os.path.isfile(path))


def test_a_two_task_srun_training_equals_torchrun(slurm, data, tmp_path):
    demo, model = data
    flags = ["--train-csv", demo.train_csv, "--model", model, "--device", "cpu", "--batch-size", "4",
             "--num-workers", "0", "--max-steps", "3", "--log-every-steps", "1", "--seed", "3"]
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               os.path.join(ROOT, "train_multi_gpu.py"), *flags, "--output-dir",
                               str(tmp_path / "torchrun")], cwd=ROOT, capture_output=True, text=True)
    assert torchrun.returncode == 0, torchrun.stderr[-2000:]
    submitted = subprocess.run([sys.executable, "-m", "ace_lora.submit", "--gpus-per-node", "0", "--tasks-per-node",
                                "2", "--cpus-per-task", "1", "--time-min", "10", "--poll-s", "1", "--", *flags,
                                "--output-dir", str(tmp_path / "srun")], cwd=ROOT, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "finished the run" in submitted.stdout
    losses = {name: [json.loads(line)["loss"] for line in (tmp_path / name / "steps.jsonl").read_text().splitlines()]
              for name in ("torchrun", "srun")}
    assert len(losses["srun"]) == 3 and losses["srun"] == losses["torchrun"]
    assert "2 process(es)" in (tmp_path / "srun" / "train.log").read_text()
    again = subprocess.run([sys.executable, "-m", "ace_lora.submit", "--gpus-per-node", "0", "--cpus-per-task", "1",
                            "--no-wait", "--",
                            *flags, "--output-dir", str(tmp_path / "srun")], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and "finished the run" in again.stdout and "submitted" not in again.stdout


def test_an_allocation_shell_with_several_tasks_trains_one_process(slurm, data, tmp_path):
    """`salloc -n 2` sets SLURM_NTASKS=2 in its shell, but no srun started a second rank: nothing waits."""
    demo, model = data
    done = subprocess.run(["salloc", "--immediate=120", "-n", "2", "--cpus-per-task", "1", sys.executable,
                           os.path.join(ROOT, "train_multi_gpu.py"), "--train-csv", demo.train_csv, "--model", model,
                           "--device", "cpu", "--batch-size", "4", "--num-workers", "0", "--max-steps", "1",
                           "--output-dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 process(es)" in done.stdout


def test_the_schedulers_refusals_are_one_line_and_a_lost_job_is_resubmitted(slurm, data, tmp_path, capsys):
    config = write_sweep(tmp_path, data, ["bare"])
    out = tmp_path / "out"
    base = [config, "--output-dir", str(out), "--launcher", "slurm", "--no-wait"]
    line = error_exit_line(capsys, sweep.main, [*base, "--cluster", "partition=nosuch"])
    assert line.startswith("error: sbatch refused the job: ") and "partition" in line.lower()
    assert part_record(out, "bare") is None  # nothing half-submitted recorded as running
    line = error_exit_line(capsys, sweep.main, [*base, "--cluster", "cpus_per_task=512"])
    assert line.startswith("error: sbatch refused the job: ")

    write_json(os.path.join(out, "runs", "bare", "seed1", sweep.PART_RECORD),
               {"job_id": "999999", "log": "gone.out", "folder": str(out / "slurm"), "scheduler": "slurm"})
    assert sweep.main(base) == 0
    printed = capsys.readouterr().out
    assert "bare/seed1: lost (job 999999 is not known to SLURM and left no result): resubmitting" in printed
    assert part_record(out, "bare")["job_id"] not in ("", "999999")
