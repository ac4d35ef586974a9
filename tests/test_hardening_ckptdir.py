"""Issue 31, item 3: one owner per checkpoint dir.

Two daemons with their own state dirs and the default "checkpoints" under one workdir both
wrote ``checkpoints/run-1/``; a killed job resumed the other daemon's model. Now the checkpoint
dir is locked like the state dir (a second daemon exits 75 naming it), and each run's namespace
records the state dir it belongs to, so even where the lock does not hold the runs never mix."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from daemon.job import ckptns
from daemon.state.lock import (
    EX_TEMPFAIL,
    CheckpointDirLocked,
    StateDirLocked,
    acquire_checkpoint_lock,
)
from tests.helpers import JOBS, kill_group, nightshift, start_daemon, wait_for, write_config


def test_a_second_lock_on_a_checkpoint_dir_names_it_and_recommends_separate_dirs(tmp_path):
    ck = tmp_path / "work" / "checkpoints"
    held = acquire_checkpoint_lock(ck)
    assert held is not None
    code = ("import sys; from daemon.state.lock import acquire_checkpoint_lock, StateDirLocked\n"
            f"try:\n acquire_checkpoint_lock({str(ck)!r})\n"
            "except StateDirLocked as e:\n print(e); sys.exit(75)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 75, r.stdout + r.stderr
    assert str(ck) in r.stdout and f"pid {os.getpid()}" in r.stdout
    assert "checkpoint_dir" in r.stdout and "state_dir" in r.stdout
    with pytest.raises(CheckpointDirLocked):
        acquire_checkpoint_lock(ck)
    held.release()
    acquire_checkpoint_lock(ck).release()  # type: ignore[union-attr]
    assert "checkpoint_dir" in str(StateDirLocked(tmp_path, 1))  # the state dir's message too


def test_two_state_dirs_never_share_a_run_namespace_even_without_the_lock(tmp_path):
    ck = tmp_path / "checkpoints"
    a, b = tmp_path / "a" / "state", tmp_path / "b" / "state"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    ckptns._cache.clear()
    na = ckptns.namespace(ck, 1, a)
    nb = ckptns.namespace(ck, 1, b)
    assert na == ck / "run-1" and nb != na and nb.name.startswith("run-1-")
    owner = json.loads((na / ".owner").read_text())
    assert owner["identity"] == (a / "identity").read_text().strip()
    ckptns._cache.clear()  # a restarted daemon finds the same ones
    assert ckptns.namespace(ck, 1, a) == na and ckptns.namespace(ck, 1, b) == nb
    ckptns._cache.clear()
    assert ckptns.namespace(ck, 2, b) == ck / "run-2"  # the first to use a number owns it


def test_an_old_namespace_without_owner_is_claimed_by_its_daemon(tmp_path):
    ck = tmp_path / "checkpoints"
    (ck / "run-3" / "step_000000010").mkdir(parents=True)  # written before .owner existed
    state = tmp_path / "state"
    state.mkdir()
    ckptns._cache.clear()
    assert ckptns.namespace(ck, 3, state) == ck / "run-3"
    assert (ck / "run-3" / ".owner").exists()


@pytest.mark.slow
def test_a_second_daemon_on_the_same_checkpoint_dir_exits_75_naming_it(tmp_path):
    """The issue's setup: one workdir, the default checkpoint dir, two state dirs."""
    marker = tmp_path / "second-job-ran"
    cfg = write_config(tmp_path, {"job": {"command": [sys.executable, str(JOBS / "plainjob.py"),
                                                      "400", "sleepy"],
                                          "checkpoint_dir": "checkpoints"}})
    first = start_daemon(cfg)
    try:
        lock = tmp_path / "checkpoints" / ".nightshift-daemon.lock"
        wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 30,
                 what="the first daemon's checkpoint-dir lock")
        cfg2 = write_config(tmp_path, {"job": {"command": ["sh", "-c", f"touch {marker}"],
                                               "checkpoint_dir": "checkpoints"},
                                       "daemon": {"state_dir": str(tmp_path / "state2")}},
                            name="second.toml")
        r = nightshift("run", "-c", str(cfg2), timeout=60)
        assert r.returncode == EX_TEMPFAIL == 75, r.stdout + r.stderr
        assert str(tmp_path / "checkpoints") in r.stderr and f"pid {first.pid}" in r.stderr
        assert "checkpoint_dir" in r.stderr and "state_dir" in r.stderr
        assert "Traceback" not in r.stderr and not marker.exists()
        assert first.poll() is None
        # the loser let go of its own state dir: a third daemon there is not refused for it
        from daemon.state.lock import acquire_state_lock
        acquire_state_lock(tmp_path / "state2").release()
    finally:
        kill_group(first)
