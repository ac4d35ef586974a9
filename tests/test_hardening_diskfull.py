"""Issue 31, item 5: a full disk pauses the night, it does not end it.

Old: the trainer's progress write hit ENOSPC, the exit counted as a code error, the restart's
"cannot start the job: [Errno 28]" failed the run, and after space was freed: "run 1 already
failed". Now the run is held with a problem saying which disk is full and how much is needed,
and it goes on by itself when the space is back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from daemon.job.diskfull import MIN_FREE, says_full
from daemon.policy.states import State
from daemon.state.store import Store
from tests.harness import Behaviour, Harness, config
from tests.helpers import JOBS, free_port, kill_group, start_daemon, wait_for, write_config

ENOSPC_DEATH = [(1.0, "line", "Traceback (most recent call last):"),
                (1.0, "line", '  File "train.py", line 40, in <module>'),
                (1.0, "line", "OSError: [Errno 28] No space left on device"),
                (1.2, "exit", 1)]


def test_a_job_killed_by_enospc_is_held_not_failed_and_goes_on_when_space_returns(tmp_path):
    free = {"bytes": 10 * 2**20}  # 10 MiB: less than a run needs

    async def go():
        cfg = config(tmp_path, job={"command": ["job"], "max_code_error_restarts": 1})
        h = Harness(tmp_path, cfg, {"job": Behaviour(script=ENOSPC_DEATH)},
                    disk_free=lambda path: free["bytes"])
        sup = await h.open()
        await h.run(60)
        assert sup.state == State.STARTING and "disk" in sup.holds, (sup.state, sup.holds)
        msg = sup.problems["disk"]
        assert "disk full" in msg and str(sup.run_dir) in msg and "10 MiB free" in msg
        assert f"{MIN_FREE // 2**20} MiB needed" in msg and "goes on by itself" in msg
        assert len(h.spawned) == 1  # not restarted into the same wall
        assert sup.run.get("code_errors", 0) == 0 and sup.run.get("restarts", 0) == 0
        assert h.events("disk_full") and not h.events("failed")
        snap = sup.face.snapshot  # the phone says why it waits, not "STARTING"
        assert snap["display_state"] == "PAUSED" and "disk" in snap["display_detail"], snap
        assert snap["held_by"] == "disk" and "disk space" in (snap.get("waiting") or {}).get("for", "")
        h.factory.behaviours["job"] = Behaviour(trainer=True, steps=1000)
        free["bytes"] = 10 * 2**30
        await h.run(3, until=lambda s: s.state == State.RUNNING)
        assert sup.state == State.RUNNING and len(h.spawned) == 2
        assert "disk" not in sup.problems and "disk" not in sup.holds
        assert any("space is back" in m for m in h.events("disk_full"))
    asyncio.run(go())


def test_a_checkpoint_that_does_not_fit_holds_the_running_job_until_space_returns(tmp_path):
    free = {"bytes": 0}
    error = {"kind": "checkpoint_error", "step": 40,
             "error": "OSError: [Errno 28] No space left on device: 'ckpt/.tmp-step_40'"}

    async def go():
        cfg = config(tmp_path, job={"command": ["job"]})
        h = Harness(tmp_path, cfg, {"job": Behaviour(script=[
            (0.5, "record", {"kind": "start", "step": 0}),  # a script: held with SIGSTOP
            (2.0, "record", error), (600.0, "exit", 0)])}, disk_free=lambda path: free["bytes"])
        sup = await h.open()
        await h.run(5)
        assert "disk" in sup.holds and sup.current.runner.running
        assert sup.current.runner.proc.stopped_by_signal  # held, memory kept
        assert sup.face.snapshot["display_state"] == "PAUSED" and sup.face.snapshot["held_by"] == "disk"
        assert json.loads((sup.run_dir / "control.json").read_text())["hold"] is True
        assert "checkpoint at step 40 did not fit" in sup.problems["disk"]
        free["bytes"] = 10 * 2**30
        await h.run(3)
        assert "disk" not in sup.holds and "disk" not in sup.problems
        assert not sup.current.runner.proc.stopped_by_signal and sup.current.runner.running
        assert json.loads((sup.run_dir / "control.json").read_text())["hold"] is False
    asyncio.run(go())


def _mount_tmpfs(target: Path, size: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): needs CAP_SYS_ADMIN")


def _fill(target: Path) -> Path:
    filler = target / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


@pytest.fixture
def small_disk(tmp_path):
    """A real 96 MiB tmpfs (a full one is 96 MiB of RAM, briefly)."""
    target = tmp_path / "small"
    _mount_tmpfs(target, "96m")
    yield target
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_job_that_cannot_even_start_on_a_full_disk_waits_for_space(tmp_path, small_disk):
    """A real full tmpfs as the state dir: writing the control file fails with ENOSPC."""
    async def go():
        cfg = config(tmp_path, daemon={"state_dir": str(small_disk / "state")},
                     job={"command": ["trainer"]})
        store = Store(tmp_path / "db" / "nightshift.db")  # the database elsewhere: this is the start
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=1000)}, store=store)
        filler = _fill(small_disk)
        sup = await h.open()
        await h.run(5)
        assert sup.state != State.FAILED, h.events("failed")
        assert "disk" in sup.holds and "cannot start the job" in sup.problems["disk"]
        assert str(small_disk / "state") in sup.problems["disk"] and not h.spawned
        filler.unlink()
        await h.run(3, until=lambda s: s.state == State.RUNNING)
        assert sup.state == State.RUNNING and "disk" not in sup.problems
    asyncio.run(go())


def test_what_a_full_disk_looks_like():
    assert says_full("OSError: [Errno 28] No space left on device")
    assert says_full("sqlite3.OperationalError: database or disk is full")
    assert says_full("OSError: [Errno 122] Disk quota exceeded")
    assert not says_full("ValueError: bad shape") and not says_full(None)


def _status(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status?format=json", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return {}


@pytest.mark.slow
def test_a_small_disk_filled_mid_run_and_freed_the_run_goes_on(tmp_path, small_disk):
    """The real daemon, the state dir (progress, control, the store) and checkpoints on a real
    96 MiB tmpfs, filled while the job trains, then freed."""
    port = free_port()
    work = small_disk / "work"
    work.mkdir()
    cfg = write_config(tmp_path, {
        "job": {"command": [sys.executable, str(JOBS / "plainjob.py"), "100000", "sleepy"],
                "workdir": str(work), "max_code_error_restarts": 1},
        "daemon": {"state_dir": str(small_disk / "state"), "exit_when_done": False},
        "api": {"enabled": True, "port": port}})
    d = start_daemon(cfg)
    try:
        wait_for(lambda: (s := _status(port)).get("step") and s["step"] >= 3 and s, 60,
                 what="a few steps")
        filler = _fill(small_disk)
        held = wait_for(lambda: (s := _status(port)) and "disk full" in json.dumps(s.get("problems"))
                        and s, 60, what="the disk-full problem in status")
        assert held["state"] not in ("failed", "succeeded"), held
        text = json.dumps(held["problems"])
        assert str(small_disk) in text and "needed" in text
        time.sleep(3)  # held, not failing: nothing restarts into the full disk
        s = _status(port)
        assert s["state"] not in ("failed",) and s.get("restarts", 0) <= 1, s
        before = s.get("step") or 0
        filler.unlink()
        wait_for(lambda: (s := _status(port)).get("state") == "running"
                 and (s.get("step") or 0) > before
                 and "disk full" not in json.dumps(s.get("problems")), 90,
                 what=f"the run to go on past step {before} once space was back")
    finally:
        kill_group(d)


def test_how_much_is_needed_and_a_small_quota_can_have_room_again():
    from daemon.job.diskfull import DiskWatch
    big = DiskWatch(lambda: ["/ck"], lambda: 100 * 2**20, free=lambda p: 50 * 2**20,
                    total=lambda p: 500 * 2**30)
    assert big.needed("/ck") == int(100 * 2**20 * 1.1) + MIN_FREE and not big.room()
    assert "/ck has 50 MiB free, about 174 MiB needed" in big.message("x")
    small = DiskWatch(lambda: ["/q"], lambda: None, free=lambda p: 3 * 2**20,
                      total=lambda p: 20 * 2**20)  # a 20 MiB quota, 3 MiB free: room
    assert small.needed("/q") == 2 * 2**20 and small.room()
