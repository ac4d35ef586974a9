"""Item 1 of issue 13: one daemon per state dir; a second one names the holder and exits 75."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from daemon.state.lock import EX_TEMPFAIL, StateDirLocked, acquire_state_lock
from tests.helpers import JOBS, kill_group, nightshift, start_daemon, wait_for, write_config


def test_second_lock_on_a_state_dir_raises_naming_the_holder_pid(tmp_path):
    held = acquire_state_lock(tmp_path / "state")
    # a different process tries: flock is per open file description, so a child shows it plainly
    code = ("import sys; from daemon.state.lock import acquire_state_lock, StateDirLocked\n"
            f"try:\n acquire_state_lock({str(tmp_path / 'state')!r})\n"
            "except StateDirLocked as e:\n print(e.pid); sys.exit(75)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 75 and r.stdout.strip() == str(os.getpid()), r.stdout + r.stderr
    with pytest.raises(StateDirLocked) as e:
        acquire_state_lock(tmp_path / "state")  # same process, second open: also refused
    assert e.value.pid == os.getpid() and str(os.getpid()) in str(e.value)
    held.release()
    acquire_state_lock(tmp_path / "state").release()  # free again once released


def test_lock_of_a_killed_holder_is_free_and_the_file_is_private(tmp_path):
    code = (f"from daemon.state.lock import acquire_state_lock; l = acquire_state_lock({str(tmp_path)!r}); "
            "import os; os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    lock = acquire_state_lock(tmp_path)  # the dead holder's file stays; the kernel freed the lock
    assert (tmp_path / "daemon.lock").read_text().strip() == str(os.getpid())
    assert (tmp_path / "daemon.lock").stat().st_mode & 0o077 == 0
    lock.release()


@pytest.mark.slow
def test_second_daemon_on_the_same_state_dir_exits_75_naming_the_pid_and_starts_nothing(tmp_path):
    marker = tmp_path / "second-job-ran"
    cfg = write_config(tmp_path, {"job": {"command": [sys.executable, str(JOBS / "plainjob.py"),
                                                      "400", "sleepy"]}})
    first = start_daemon(cfg)
    try:
        wait_for(lambda: (tmp_path / "state" / "daemon.lock").exists()
                 and (tmp_path / "state" / "daemon.lock").read_text().strip() == str(first.pid),
                 30, what="the first daemon's lock")
        cfg2 = write_config(tmp_path, {"job": {"command": ["sh", "-c", f"touch {marker}"]}},
                            name="second.toml")
        r = nightshift("run", "-c", str(cfg2), timeout=60)
        assert r.returncode == EX_TEMPFAIL == 75, r.stdout + r.stderr
        assert f"pid {first.pid}" in r.stderr and "Traceback" not in r.stderr
        assert not marker.exists()
        assert first.poll() is None  # the first daemon was left alone
    finally:
        kill_group(first)
