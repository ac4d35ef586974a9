"""Holds carried out on the job (daemon/core/holds.py), without the Supervisor: a real JobRunner
over a run directory in tmp_path (its control file read back), a real child process for the
SIGSTOP fallback, and what follows asserted as decisions."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from daemon.core.decisions import (
    Count,
    DropHolds,
    Emit,
    Hold,
    KeepHolds,
    Recover,
    Release,
    Remember,
)
from daemon.core.holds import Holds, restored
from daemon.job.jobrunner import JobRunner
from daemon.policy.thermal import ThermalState


def held(runner: JobRunner) -> bool:
    return bool(json.loads((runner.run_dir / "control.json").read_text())["hold"])


def test_the_first_hold_is_a_pause_told_to_the_job_and_a_thermal_one_is_kept(tmp_path):
    runner, holds = JobRunner(tmp_path), Holds()
    assert holds.take(Hold("user", "paused by the user"), runner) == [Count("pauses")]
    assert held(runner) and holds == {"user": "paused by the user"}
    assert holds.take(Hold("thermal", "edge 90 C"), runner) == [KeepHolds()]  # already held: no second pause
    assert holds.kept(recovering=False) == {"thermal": "edge 90 C", "recovering": False}


def test_carry_takes_lets_go_and_drops_every_hold_as_the_supervisor_hands_them_over(tmp_path):
    runner, holds = JobRunner(tmp_path), Holds()
    assert holds.carry(Hold("user", "paused by the user"), runner) == [Count("pauses")] and held(runner)
    assert holds.carry(Hold("thermal", "edge 90 C", quiet=True), runner) == []
    assert holds.carry(Release("user"), runner) == [] and held(runner)  # the thermal hold still holds
    assert holds.carry(DropHolds(), runner) == [] and holds == {}


def test_a_quiet_hold_is_only_remembered_no_job_is_told(tmp_path):
    runner, holds = JobRunner(tmp_path), Holds()
    assert holds.take(Hold("schedule", "outside 22:00-07:00", quiet=True), runner) == []
    assert holds == {"schedule": "outside 22:00-07:00"} and not (tmp_path / "control.json").exists()


def test_the_last_release_lets_the_job_go_and_is_said_once(tmp_path):
    runner, holds = JobRunner(tmp_path), Holds()
    holds.take(Hold("user", "paused"), runner)
    holds.take(Hold("thermal", "hot"), runner)
    assert holds.let_go(Release("thermal"), runner) == [KeepHolds()]  # the user's pause still holds
    assert held(runner)
    assert holds.let_go(Release("user"), runner) == [Emit("released", "job released (user hold ended)",
                                                         data={"detail": False})]
    assert not held(runner) and holds == {}
    assert holds.let_go(Release("user"), runner) == []  # nobody held it: nothing to say


def test_a_thermal_release_is_a_detail_cooling_to_running_says_it(tmp_path):
    runner, holds = JobRunner(tmp_path), Holds()
    holds.take(Hold("thermal", "hot"), runner)
    out = holds.let_go(Release("thermal"), runner)
    assert out[0] == Emit("released", "job released (thermal hold ended)", data={"detail": True})
    assert out[1:] == [KeepHolds()]


def test_an_unwritable_control_file_raises_unless_the_hold_may_sigstop_the_job(tmp_path):
    """The control file's place taken by a directory: its write fails with a real OSError."""
    async def go():
        runner, holds = JobRunner(tmp_path), Holds()
        await runner.start([sys.executable, "-c", "import time; time.sleep(60)"], cwd=str(tmp_path),
                           env={}, hold=False)
        try:
            (tmp_path / "control.json").unlink()
            (tmp_path / "control.json").mkdir()
            with pytest.raises(OSError):
                holds.take(Hold("user", "paused"), runner)
            holds.pop("user")
            runner.control.hold = False  # its write failed: nothing was held
            assert holds.take(Hold("disk", "the disk is full", or_stop=True), runner) == []
            assert runner.proc is not None and runner.proc.stopped_by_signal and holds.stopped_for == "disk"
            holds.let_go(Release("schedule", quiet=True), runner)  # another owner's release: still stopped
            assert runner.proc.stopped_by_signal
            assert holds.let_go(Release("disk", quiet=True), runner) == []
            assert not runner.proc.stopped_by_signal and holds.stopped_for is None and holds == {}
        finally:
            runner.kill_now()
            while runner.running:
                await asyncio.sleep(0.01)
    asyncio.run(go())


def test_a_restarted_daemon_resumes_a_recovery_before_anything_else():
    out = restored({"thermal": "hot", "recovering": True}, True, 50.0)
    assert isinstance(out[0], Recover) and out[0].resumed and [type(d) for d in out] == [Recover, Emit]


def test_a_restarted_daemon_keeps_cooling_from_now_only_with_a_sensor_to_end_it():
    out = restored({"thermal": "edge 90 C", "recovering": False}, True, 50.0)
    assert out[:2] == [Remember(thermal=ThermalState(paused=True, paused_at=50.0, reason="edge 90 C")),
                       Hold("thermal", "edge 90 C", quiet=True)]
    assert restored({"thermal": "edge 90 C", "recovering": False}, False, 50.0) == []
    assert restored({}, True, 50.0) == []
