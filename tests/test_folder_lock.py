"""The folder lock: a live owner refuses others (also through its flock), a dead one is taken over."""
import os
import socket
import subprocess
import sys
import time

import pytest

from ace_lora.errors import UserInputError
from ace_lora.folder_lock import LOCK_NAME, STALE_AFTER_S, FolderLock


def test_the_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, capsys):
    with FolderLock(str(tmp_path)) as lock:
        assert (tmp_path / LOCK_NAME).read_text().split() == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(UserInputError, match=rf"another run \(process {os.getpid()} on this machine\)"):
            FolderLock(str(tmp_path)).check_free()
        with pytest.raises(UserInputError, match="another run"):
            FolderLock(str(tmp_path)).acquire()  # the flock is held
        assert lock.held
    assert not (tmp_path / LOCK_NAME).exists()
    # a process that is gone (kill -9, OOM killer): same host, free flock, dead pid -> taken over with one line
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(f"{gone.stdout.strip()} {socket.gethostname()}\n")
    FolderLock(str(tmp_path)).check_free()
    capsys.readouterr()
    with FolderLock(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).read_text().split() == [str(os.getpid()), socket.gethostname()]
    assert capsys.readouterr().err.strip() == (f"{tmp_path / LOCK_NAME}: taking over the lock of process "
                                               f"{gone.stdout.strip()} on {socket.gethostname()}, which is no "
                                               "longer running")
    # another host: its heartbeat (the file's mtime) decides
    (tmp_path / LOCK_NAME).write_text("123 some-other-host\n")
    with pytest.raises(UserInputError, match=r"process 123 on some-other-host\) .*heartbeat is \d+ s old, a lock "
                                             rf"without one for {STALE_AFTER_S} s is taken over"):
        FolderLock(str(tmp_path)).check_free()
    old = time.time() - STALE_AFTER_S - 5
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with FolderLock(str(tmp_path)):
        pass
    assert "taking over the lock of process 123 on some-other-host" in capsys.readouterr().err
    (tmp_path / LOCK_NAME).write_text("garbage")
    with pytest.raises(UserInputError, match="does not name a process"):
        FolderLock(str(tmp_path)).check_free()
    assert (tmp_path / LOCK_NAME).read_text() == "garbage"  # not ours to judge


def test_a_live_holder_in_another_process_is_refused_through_its_flock(tmp_path):
    """The flock decides even when the pid written in the lock says nothing (pid namespaces, reuse)."""
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from ace_lora.folder_lock import FolderLock
lock = FolderLock({str(tmp_path)!r}); lock.acquire()
print("held", flush=True); time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / LOCK_NAME).write_text("1 some-other-host\n")  # a foreign owner, as if written elsewhere
        old = time.time() - STALE_AFTER_S - 5
        os.utime(tmp_path / LOCK_NAME, (old, old))  # and an old heartbeat: only the flock shows it is alive
        with pytest.raises(UserInputError, match="another run"):
            FolderLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(str(tmp_path)):  # its flock died with it
        pass


def test_the_heartbeat_touches_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr("ace_lora.folder_lock.HEARTBEAT_S", 0.05)
    with FolderLock(str(tmp_path)):
        old = time.time() - 1000
        os.utime(tmp_path / LOCK_NAME, (old, old))
        time.sleep(0.3)
        assert time.time() - os.path.getmtime(tmp_path / LOCK_NAME) < 5


def test_release_never_raises_and_leaves_a_lock_the_next_run_takes_over(tmp_path, capsys):
    lock = FolderLock(str(tmp_path))
    lock.acquire()
    os.remove(tmp_path / LOCK_NAME)  # as if a read-only remount or a vanished folder stopped the removal
    lock.release()
    assert not lock.held
