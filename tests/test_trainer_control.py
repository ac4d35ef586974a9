"""The job side of the control protocol, driven from another process: this test process plays the
daemon (with the daemon's own JobControl: control.json + SIGUSR1) against a real reference job
in a child process. Checkpoint now, hold (idle, no steps) and release, exit, a missed signal, a
hold already in force at start, one action per seq, a live checkpoint interval, and a pause and
a checkpoint asked within the same second (both happen, in either order)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from daemon.job.control import JobControl
from tests.helpers import ROOT, wait_for
from tests.test_trainer_resume import SMALL


def start(tmp: Path, steps: int = 100000) -> subprocess.Popen:
    env = {**os.environ, "NIGHTSHIFT_RUN_DIR": str(tmp), "NIGHTSHIFT_CHECKPOINT_DIR": str(tmp / "ckpt"),
           "NIGHTSHIFT_RESUME": ""}
    args = [a if a != "7" else "100000" for a in SMALL]  # no interval checkpoints: only ours
    return subprocess.Popen([sys.executable, "-m", "trainer.reference", "--steps", str(steps), *args,
                             "--max-steps-per-s", "40"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def records(tmp: Path, kind: str | None = None) -> list[dict]:
    p = tmp / "progress.jsonl"
    if not p.exists():
        return []
    out = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return [r for r in out if kind is None or r["kind"] == kind]


def last_step(tmp: Path) -> int:
    return max((r.get("step") or 0) for r in records(tmp)) if records(tmp) else 0


def cpu_seconds(pid: int, over_s: float) -> float:
    p = psutil.Process(pid)
    a = sum(p.cpu_times()[:2])
    time.sleep(over_s)
    return sum(p.cpu_times()[:2]) - a


def stop(job: subprocess.Popen) -> None:
    job.kill()
    job.wait()
    job.stderr.close()


@pytest.mark.slow
def test_checkpoint_hold_release_exit_from_another_process(tmp_path):
    job = start(tmp_path)
    try:
        wait_for(lambda: records(tmp_path, "progress"), 60, what="training to start")
        ctl = JobControl(tmp_path)
        ctl.command("checkpoint", job.pid)
        ck = wait_for(lambda: records(tmp_path, "checkpoint"), 20, what="checkpoint now")[0]
        assert Path(ck["path"]).is_dir() and ck["bytes"] > 0
        # the same seq woken again (a duplicate signal) is not acted on twice
        os.killpg(job.pid, signal.SIGUSR1)
        time.sleep(1.5)
        assert [a["seq"] for a in records(tmp_path, "control_ack")] == [1]
        assert len(records(tmp_path, "checkpoint")) == 1

        ctl.set_hold(True, job.pid)
        held = wait_for(lambda: records(tmp_path, "held"), 20, what="held")[0]
        assert Path(held["checkpoint"]).is_dir(), "hold must checkpoint first"
        assert held["checkpoint"].endswith(f"step_{held['step']:09d}")
        assert cpu_seconds(job.pid, 1.5) < 0.3, "a held job must be idle, not training"
        assert last_step(tmp_path) == held["step"], "steps advanced while held"

        ctl.set_hold(False, job.pid)
        released = wait_for(lambda: records(tmp_path, "released"), 20, what="released")[0]
        assert released["step"] == held["step"]
        wait_for(lambda: last_step(tmp_path) > held["step"] + 5, 20, what="training to continue")

        ctl.command("exit", job.pid)
        assert job.wait(timeout=30) == 0, job.stderr.read()
        exiting = records(tmp_path, "exiting")[0]
        assert (tmp_path / "ckpt" / f"step_{exiting['step']:09d}" / "meta.json").exists()
        # the hold is a state, not a command: only the one-shot commands are acknowledged
        assert [a["command"] for a in records(tmp_path, "control_ack")] == ["checkpoint", "exit"]
    finally:
        stop(job)


@pytest.mark.slow
def test_a_missed_signal_still_takes_effect_within_about_a_second(tmp_path):
    job = start(tmp_path)
    try:
        wait_for(lambda: records(tmp_path, "progress"), 60, what="training to start")
        ctl = JobControl(tmp_path)
        t0 = time.monotonic()
        ctl.set_hold(True, None)  # the file only: as if SIGUSR1 were lost
        wait_for(lambda: records(tmp_path, "held"), 10, interval=0.02, what="held without a signal")
        assert time.monotonic() - t0 < 2.0  # one poll (1 s) + a checkpoint on a loaded box
        t0 = time.monotonic()
        seq = ctl.command("exit", None)  # the hold loop polls the file too
        assert seq == ctl.seq
        wait_for(lambda: [r for r in records(tmp_path, "control_ack") if r["seq"] == seq], 10,
                 interval=0.02, what="the exit acknowledged without a signal")
        # taken within one poll (0.1 s while held) and a loaded box's delay; what follows, the
        # final checkpoint and the interpreter's teardown (torch's: 4.1 s at load 12), is not the
        # signal's latency
        assert time.monotonic() - t0 < 2.0
        assert job.wait(timeout=30) == 0, job.stderr.read()
    finally:
        stop(job)


@pytest.mark.slow
def test_a_hold_in_force_when_the_job_starts_applies_before_the_first_step(tmp_path):
    """The daemon held the job, then the job (or the daemon) restarted: the file still says hold."""
    ctl = JobControl(tmp_path)
    ctl.command("checkpoint", None)  # an earlier attempt's command: cleared by fresh()
    ctl.fresh(hold=True)  # what the daemon writes before it starts a job of a paused run
    job = start(tmp_path)
    try:
        held = wait_for(lambda: records(tmp_path, "held"), 60, what="held at start")[0]
        assert held["step"] == 0 and not records(tmp_path, "progress")
        assert records(tmp_path, "control_ack") == []  # the old checkpoint is not replayed
        ctl.set_hold(False, job.pid)
        wait_for(lambda: records(tmp_path, "progress"), 20, what="training after release")
    finally:
        stop(job)


@pytest.mark.slow
def test_checkpoint_interval_changes_live_through_the_control_file(tmp_path):
    job = start(tmp_path)
    try:
        wait_for(lambda: records(tmp_path, "progress"), 60, what="training to start")
        assert not records(tmp_path, "checkpoint")
        JobControl(tmp_path).set_interval(5, job.pid)
        cks = wait_for(lambda: len(records(tmp_path, "checkpoint")) >= 3 and records(tmp_path, "checkpoint"),
                       30, what="interval checkpoints")
        assert all(c["step"] % 5 == 0 for c in cks), [c["step"] for c in cks]
    finally:
        stop(job)


@pytest.mark.slow
def test_pause_and_checkpoint_in_the_same_second_both_happen_in_either_order(tmp_path):
    """Issue 12, failure 5: with a last-writer slot, pause then checkpoint left the job training
    while status said paused. Now the hold is a state and the checkpoint a numbered command."""
    job = start(tmp_path)
    try:
        wait_for(lambda: records(tmp_path, "progress"), 60, what="training to start")
        ctl = JobControl(tmp_path)
        ctl.set_hold(True, job.pid)
        ctl.command("checkpoint", job.pid)  # right after: the job sees both in one read
        held = wait_for(lambda: records(tmp_path, "held"), 20, what="held")[0]
        assert Path(held["checkpoint"]).is_dir()
        wait_for(lambda: records(tmp_path, "control_ack"), 10, what="the checkpoint acknowledged")
        assert cpu_seconds(job.pid, 1.5) < 0.3, "paused + checkpoint must leave the job held"
        # resume then checkpoint: released, and training continues (not flipped back to held)
        ctl.set_hold(False, job.pid)
        ctl.command("checkpoint", job.pid)
        wait_for(lambda: records(tmp_path, "released"), 20, what="released")
        wait_for(lambda: last_step(tmp_path) > held["step"] + 5, 20, what="training to continue")
        acks = records(tmp_path, "control_ack")
        assert [a["command"] for a in acks] == ["checkpoint", "checkpoint"]
        # the other order: checkpoint first, then pause
        ctl.command("checkpoint", job.pid)
        ctl.set_hold(True, job.pid)
        wait_for(lambda: len(records(tmp_path, "held")) == 2, 20, what="held again")
        assert cpu_seconds(job.pid, 1.5) < 0.3
        assert len(records(tmp_path, "control_ack")) == 3
    finally:
        stop(job)
