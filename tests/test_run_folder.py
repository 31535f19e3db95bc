"""Run-folder rules: which files make a run, what --overwrite removes, and the lock."""
import os
import socket
import subprocess
import sys

import pytest

from ace_lora.errors import UserInputError
from ace_lora.run_folder import LOCK_NAME, RunLock, check_run_folder, clear_run_files, run_files_in


def test_a_folder_with_run_files_holds_a_run_and_overwrite_removes_only_those(tmp_path):
    check_run_folder(str(tmp_path / "absent"), resume=False, overwrite=False)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "demo_data").mkdir()
    check_run_folder(str(tmp_path), resume=False, overwrite=False)  # no run files: a fresh folder
    (tmp_path / "steps.jsonl").write_text("{}\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    assert run_files_in(str(tmp_path)) == ["steps.jsonl", "checkpoints"]
    with pytest.raises(UserInputError, match=r"holds a run \(steps.jsonl, checkpoints\): continue it with --resume"):
        check_run_folder(str(tmp_path), resume=False, overwrite=False)
    check_run_folder(str(tmp_path), resume=True, overwrite=False)
    check_run_folder(str(tmp_path), resume=False, overwrite=True)
    clear_run_files(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_data", "notes.txt"]


def test_the_lock_refuses_a_second_holder_and_reports_stale_and_foreign_locks(tmp_path):
    with RunLock(str(tmp_path)) as lock:
        assert (tmp_path / LOCK_NAME).read_text().split() == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(UserInputError, match=rf"another run \(process {os.getpid()} on this machine\)"):
            RunLock(str(tmp_path)).check_free()
        with pytest.raises(UserInputError, match="another run"):
            RunLock(str(tmp_path)).acquire()
        assert lock.held
    assert not (tmp_path / LOCK_NAME).exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(f"{gone.stdout.strip()} {socket.gethostname()}\n")
    with pytest.raises(UserInputError, match=f"stale lock of process {gone.stdout.strip()}"):
        RunLock(str(tmp_path)).acquire()
    (tmp_path / LOCK_NAME).write_text("123 some-other-host\n")
    with pytest.raises(UserInputError, match=r"process 123 on some-other-host \(not checkable from here\)"):
        RunLock(str(tmp_path)).check_free()
    (tmp_path / LOCK_NAME).write_text("garbage")
    with pytest.raises(UserInputError, match="does not name a process"):
        RunLock(str(tmp_path)).check_free()
    assert (tmp_path / LOCK_NAME).read_text() == "garbage"  # never taken over
