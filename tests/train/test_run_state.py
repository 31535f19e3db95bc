"""Resume: an interrupted CPU run ends bit-identical to an uninterrupted one; a NaN keeps the last good checkpoint."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import train
from ace_lora.data.synthetic import write_demo_dataset
from tests.conftest import error_exit_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def wait_for(condition, process, timeout=120):
    """Poll until `condition()` holds; fail if `process` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def start_training(args):
    """train.py with `args` in a subprocess (pipes for stdout and stderr)."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_steps(out, n, process):
    """Until the run in `out` has logged `n` steps (it logs every step)."""
    steps = out / "steps.jsonl"
    wait_for(lambda: steps.is_file() and len(steps.read_text().splitlines()) >= n, process)


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


def snapshot(folder):
    """Every file under `folder` with its bytes and mtime: what "nothing was touched" compares."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys, argv):
    return error_exit_line(capsys, train.main, argv)


@pytest.fixture()
def stopped_run(tiny_model_name, demo_data, tmp_path):
    """A run stopped by --max-steps inside epoch 1, and a snapshot of its folder."""
    out = tmp_path / "run"
    train.main(run_args(tiny_model_name, demo_data, out, "--max-steps", "2"))
    return out, snapshot(out)


def test_a_new_run_never_replaces_an_existing_one(tiny_model_name, demo_data, stopped_run, capsys):
    out, before = stopped_run
    line = one_error_line(capsys, run_args(tiny_model_name, demo_data, out))
    assert line.startswith(f"error: --output-dir {out} holds a run (config.yaml, steps.jsonl")
    assert "continue it with --resume latest, start over with --overwrite" in line
    assert snapshot(out) == before
    train.main(run_args(tiny_model_name, demo_data, out, "--epochs", "1", "--overwrite"))  # explicit: start over
    steps = read_jsonl(out / "steps.jsonl")
    assert [r["step"] for r in steps] == [1, 2, 3] and load(out / "checkpoints/last.pt")["epoch"] == 1


@pytest.mark.parametrize("flags, named", [
    (["--lora-r", "8"], "--lora-r 4 (now 8)"),
    (["--lr", "0.002", "--epochs", "3"], "--epochs 2 (now 3), --lr 0.001 (now 0.002)"),
    (["--warmup-epochs", "0"], "--warmup-epochs 1.0 (now 0.0)"),
    (["--batch-size", "2"], "--batch-size 4 (now 2)"),
])
def test_resume_refuses_other_settings_naming_each(tiny_model_name, demo_data, stopped_run, capsys, flags, named):
    out, before = stopped_run
    line = one_error_line(capsys, run_args(tiny_model_name, demo_data, out, "--resume", "latest", *flags))
    assert f"the run was started with other settings: {named};" in line
    assert snapshot(out) == before


def test_resume_refuses_other_data(tiny_model_name, demo_data, stopped_run, tmp_path, capsys):
    out, before = stopped_run
    table = pd.read_csv(demo_data.train_csv)
    other = tmp_path / "other.csv"
    table.iloc[::-1].to_csv(other, index=False)  # the same images in another order, elsewhere
    argv = run_args(tiny_model_name, demo_data, out, "--resume", "latest")
    argv[argv.index("--train-csv") + 1] = str(other)
    line = one_error_line(capsys, argv + ["--data-root", os.path.dirname(demo_data.train_csv)])
    assert "the run was trained on other data: csv " in line and "images_sha256" in line
    assert snapshot(out) == before


def test_resuming_a_finished_run_does_nothing(tiny_model_name, demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(run_args(tiny_model_name, demo_data, out))
    before = snapshot(out)
    capsys.readouterr()
    assert train.main(run_args(tiny_model_name, demo_data, out, "--resume", "latest")) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [f"{out / 'checkpoints' / 'last.pt'}: this run is finished (2 epochs reached at step 6); "
                       "nothing to do"]
    assert snapshot(out) == before


def test_a_live_lock_refuses_and_a_dead_run_s_lock_is_taken_over(tiny_model_name, demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{sleeper.pid} {socket.gethostname()}\n")  # a live run holds the folder
        line = one_error_line(capsys, run_args(tiny_model_name, demo_data, out))
        assert line.startswith(f"error: another run (process {sleeper.pid} on this machine) is using this output")
    finally:
        sleeper.kill()
        sleeper.wait()
    train.main(run_args(tiny_model_name, demo_data, out, "--epochs", "1"))  # its process is gone now
    assert f"taking over the lock of process {sleeper.pid}" in capsys.readouterr().err
    assert not (out / ".lock").exists()  # released at the end of the run


@pytest.mark.slow
@pytest.mark.parametrize("resume", ["latest", "auto"])
def test_after_kill_9_the_same_command_resumes_and_ends_bit_identical(tiny_model_name, demo_data, tmp_path, resume):
    """`train.py ... --resume auto` (the sbatch recipe) after SIGKILL: the dead run's lock is taken over."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    epochs = ["--epochs", "12", "--save-every-steps", "3"]
    train.main(run_args(tiny_model_name, demo_data, straight, *epochs))
    first = ["--resume", resume] if resume == "auto" else []  # `--resume latest` needs a checkpoint: a new run first
    process = start_training(run_args(tiny_model_name, demo_data, killed, *epochs, *first))
    wait_for_steps(killed, 7, process)
    process.kill()
    process.wait()
    assert (killed / ".lock").is_file()  # left behind by the killed run
    again = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")]
                           + run_args(tiny_model_name, demo_data, killed, *epochs, "--resume", resume),
                           capture_output=True, text=True, env=ENV)
    assert again.returncode == 0, again.stderr
    assert f"taking over the lock of process {process.pid} on {socket.gethostname()}" in again.stderr
    expected, resumed = load(straight / "checkpoints/last.pt"), load(killed / "checkpoints/last.pt")
    assert resumed["step"] == expected["step"] == 36
    for name, tensor in expected["trainable"].items():
        assert torch.equal(tensor, resumed["trainable"][name]), name
    assert not (killed / ".lock").exists()


@pytest.mark.slow
def test_two_concurrent_runs_on_one_folder(tiny_model_name, demo_data, tmp_path):
    """Through the real entry point: the second process refuses at once; the first one is unaffected."""
    out = tmp_path / "run"
    argv = [sys.executable, os.path.join(ROOT, "train.py")] + run_args(tiny_model_name, demo_data, out, "--epochs",
                                                                        "1000")
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(lambda: (out / ".lock").is_file(), first)
    second = subprocess.run(argv, capture_output=True, text=True, env=ENV)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"error: another run (process {first.pid} on this machine) is using this output folder ({out / '.lock'}); "
        "wait for it or choose another --output-dir"]
    assert first.poll() is None  # still training
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130
    step = load(out / "checkpoints/last.pt")["step"]
    assert [r["step"] for r in read_jsonl(out / "steps.jsonl")] == list(range(1, step + 1))  # one run's log only


def diverged_line(capsys, argv) -> str:
    """A diverged run: exit 3 (not 2, a user mistake), one error line."""
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def all_finite_files(out):
    files = [out / "checkpoints/last.pt", out / "ACE-LoRA_weights_last.pt"]
    tensors = []
    for path in files:
        state = load(path)
        tensors += list(state["trainable"].values()) if "trainable" in state else [
            t for entry in state["weights"].values() for t in
            (entry.values() if isinstance(entry, dict) else [entry]) for t in
            (t.values() if isinstance(t, dict) else [t])]
    return all(torch.isfinite(t).all() for t in tensors)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_name, demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    # an absurd learning rate: the first update is finite, the second forward overflows to NaN
    argv = run_args(tiny_model_name, demo_data, out, "--lr", "1e30", "--warmup-epochs", "0", "--save-every-steps", "1")
    train.main(argv + ["--max-steps", "1"])
    before = (out / "checkpoints/last.pt").read_bytes()
    line = diverged_line(capsys, argv + ["--resume", "latest"])
    assert line.startswith("error: the training loss became nan")
    assert "at step 2 (epoch 1)" in line
    assert f"the last checkpoint, {out / 'checkpoints' / 'last.pt'} (step 1), holds finite weights" in line
    assert (out / "checkpoints/last.pt").read_bytes() == before


def test_a_run_that_diverges_before_saving_says_to_start_again_with_overwrite(tiny_model_name, demo_data, tmp_path,
                                                                              capsys):
    out = tmp_path / "run"
    argv = run_args(tiny_model_name, demo_data, out, "--lr", "1e30", "--warmup-epochs", "0", "--save-every-steps", "0")
    line = diverged_line(capsys, argv)
    assert line.endswith("at step 2 (epoch 1); stopped without saving it; nothing was saved: start again with a lower "
                         "learning rate, --overwrite --lr 0.001")
    assert not (out / "checkpoints" / "last.pt").exists()
    one_error_line(capsys, argv)  # the folder holds a run (its logs) ...
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv + ["--overwrite"])  # ... so --overwrite, as the message says (the same --lr diverges again)
    assert exit_info.value.code == 3
    assert train.main(argv + ["--overwrite", "--lr", "0.001"]) == 0  # the message's learning rate trains


def test_a_non_finite_weight_is_never_saved(tiny_model_name, demo_data, tmp_path, capsys, monkeypatch):
    """Whatever makes a weight non-finite, no checkpoint or weight file gets it; the message names the last
    finite checkpoint (`train.py --lr 100 --save-every-steps 2` once saved 12 NaN tensors as 'good')."""
    from ace_lora.train import loop as training

    calls = []

    def corrupting_step(model, *args, **kwargs):
        result = real_step(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # after step 3's update, as an overflow in it would
            with torch.no_grad():
                model.logit_scale.fill_(float("nan"))
        return result

    real_step = training.train_step
    monkeypatch.setattr(training, "train_step", corrupting_step)
    out = tmp_path / "run"
    line = diverged_line(capsys, run_args(tiny_model_name, demo_data, out, "--save-every-steps", "2"))
    assert "1 trained tensor(s) hold NaN or infinite values (logit_scale, ...); not saved" in line
    assert f"the last checkpoint, {out / 'checkpoints' / 'last.pt'} (step 2), holds finite weights" in line
    assert load(out / "checkpoints/last.pt")["step"] == 2 and all_finite_files(out)


def test_two_quick_sigterms_stop_at_once_with_143_and_say_what_is_saved(tiny_model_name, demo_data, tmp_path):
    out = tmp_path / "run"
    process = start_training(run_args(tiny_model_name, demo_data, out, "--epochs", "1000", "--save-every-steps", "3"))
    wait_for_steps(out, 4, process)
    process.send_signal(signal.SIGTERM)
    first = process.stderr.readline()  # the handler has run (the kernel merges a second, still pending, SIGTERM)
    assert first.startswith("SIGTERM: finishing this step"), first
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("SIGTERM: stopped at once during step ")
    assert last.endswith("holds finite weights; continue from it with --resume latest") or \
        last.endswith("nothing was saved, so start again with --overwrite")


def test_max_steps_ends_with_a_line_and_leaves_best_pt_within_the_first_epoch(tiny_model_name, demo_data, tmp_path,
                                                                                 capsys):
    out = tmp_path / "run"
    train.main(run_args(tiny_model_name, demo_data, out, "--max-steps", "2", "--save-every-steps", "0"))
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"stopped at --max-steps 2 (step 2); weights: {out / 'checkpoints' / 'last.pt'} and "
        f"{out / 'checkpoints' / 'best.pt'}")
    assert load(out / "checkpoints/best.pt")["step"] == 2  # what a sweep's evaluation reads
    assert (out / "ACE-LoRA_weights_best.pt").is_file()


def test_resume_with_overwrite_is_refused(tiny_model_name, demo_data, tmp_path, capsys):
    line = one_error_line(capsys, run_args(tiny_model_name, demo_data, tmp_path / "run", "--resume", "latest",
                                           "--overwrite"))
    assert line == ("error: --resume latest continues the run in --output-dir, --overwrite deletes it to start over: "
                    "give one")


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


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_step_and_resuming_ends_bit_identical(tiny_model_name, demo_data, tmp_path, signum):
    """Ctrl-C / SLURM's SIGTERM through the real entry point: finish the step, save, one line, exit 128 + N."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    epochs = ["--epochs", "12", "--save-every-steps", "0"]  # 36 steps; without the signal nothing is saved mid-epoch
    train.main(run_args(tiny_model_name, demo_data, straight, *epochs))
    process = start_training(run_args(tiny_model_name, demo_data, interrupted, *epochs))
    steps = interrupted / "steps.jsonl"
    wait_for_steps(interrupted, 4, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    lines = err.strip().splitlines()
    stopped = load(interrupted / "checkpoints/last.pt")
    assert lines[-1] == f"interrupted at step {stopped['step']}; resume with --resume latest"
    assert "Traceback" not in err and 4 <= stopped["step"] < 36
    assert [r["step"] for r in read_jsonl(steps)][-1] == stopped["step"]  # nothing logged past the saved step

    train.main(run_args(tiny_model_name, demo_data, interrupted, *epochs, "--resume", "latest"))
    expected, resumed = load(straight / "checkpoints/last.pt"), load(interrupted / "checkpoints/last.pt")
    assert resumed["step"] == expected["step"] == 36
    for name, tensor in expected["trainable"].items():
        assert torch.equal(tensor, resumed["trainable"][name]), name
    assert read_jsonl(interrupted / "steps.jsonl") == read_jsonl(straight / "steps.jsonl")


@pytest.fixture()
def small_disk(tmp_path, request):
    """A tmpfs of `request.param` (default 2.2 MB: room for one tiny-model checkpoint and its weight file, not a
    second temporary copy), unmounted afterwards; skipped where mounting is not allowed (not root, no tmpfs)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    size = getattr(request, "param", "2200k")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tiny_model_name, demo_data, small_disk):
    out = small_disk / "run"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")]
                          + run_args(tiny_model_name, demo_data, out, "--save-every-steps", "1"),
                          capture_output=True, text=True, env=ENV)
    assert done.returncode == 4, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in done.stderr
    assert err[0].startswith("error: cannot write ") and "the device is full (No space left on device)" in err[0]
    assert err[0].endswith("is intact") or err[0].endswith("nothing was written")
    assert load(out / "checkpoints/last.pt")["step"] >= 1  # the previous checkpoint loads
    assert not [p for p in out.rglob(".tmp_*")]  # no half-written temporary file left
    assert not (out / ".lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("small_disk", ["50m"], indirect=True)
def test_a_read_only_remount_reports_the_first_error_and_the_next_run_takes_the_lock(tiny_model_name, demo_data,
                                                                                    small_disk):
    out = small_disk / "run"
    args = run_args(tiny_model_name, demo_data, out, "--epochs", "1000", "--save-every-steps", "0")
    process = start_training(args)
    wait_for_steps(out, 4, process)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert process.returncode == 4, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write ") and "Read-only file system" in lines[0]
    assert ".lock" not in lines[0] and (out / ".lock").is_file()  # the lock stays, in a state the next run knows
    again = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args[:-2], "--epochs", "2", "--overwrite"],
                           capture_output=True, text=True, env=ENV)
    assert again.returncode == 0, again.stderr
    assert f"taking over the lock of process {process.pid}" in again.stderr


def test_a_diverged_run_keeps_finite_optimiser_state_and_its_advice_works(tiny_model_name, demo_data, tmp_path,
                                                                           capsys):
    """--lr 100: the message names a checkpoint whose weights and optimiser moments are finite, and the command
    it gives (start over with a lower --lr) trains; resuming with the same flags would repeat the divergence."""
    out = tmp_path / "run"
    argv = run_args(tiny_model_name, demo_data, out, "--epochs", "6", "--save-every-steps", "1")
    line = diverged_line(capsys, [*argv, "--lr", "30"])
    # at lr 30 AdamW's second moments overflow before the weights do: that checkpoint is refused too
    assert "optimiser state tensor(s) hold NaN or infinite values (the weights are finite); not saved" in line
    last = out / "checkpoints" / "last.pt"
    assert f"the last checkpoint, {last} (step " in line and "holds finite weights and optimiser state" in line
    assert "start again with a lower learning rate, --overwrite --lr 0.001 (or keep what it learned: --init-from " \
           f"{last} --lr 0.001 --output-dir NEW_FOLDER)" in line
    optimiser = load(last)["optimizer"]["state"]
    assert optimiser and all(torch.isfinite(t).all() for state in optimiser.values() for t in state.values()
                             if torch.is_tensor(t))
    assert train.main([*argv, "--overwrite", "--lr", "0.001"]) == 0  # the advice, as given
    assert load(last)["step"] == 18
