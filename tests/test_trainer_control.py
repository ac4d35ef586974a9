"""The job side of the control protocol, driven from another process (this test plays the
daemon with the daemon's own JobControl): checkpoint now, hold, release, exit, missed signal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from daemon.control import JobControl
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


def test_checkpoint_hold_release_exit_from_another_process(tmp_path):
    job = start(tmp_path)
    try:
        wait_for(lambda: records(tmp_path, "progress"), 60, what="training to start")
        ctl = JobControl(tmp_path)
        ctl.send("checkpoint", job.pid)
        wait_for(lambda: records(tmp_path, "checkpoint"), 20, what="checkpoint now")

        ctl.send("hold", job.pid)
        held = wait_for(lambda: records(tmp_path, "held"), 20, what="held")[0]
        time.sleep(1.5)
        assert last_step(tmp_path) == held["step"], "steps advanced while held"
        assert Path(held["checkpoint"]).exists(), "hold must checkpoint first"

        ctl.send("run", job.pid)
        wait_for(lambda: records(tmp_path, "released"), 20, what="released")
        wait_for(lambda: last_step(tmp_path) > held["step"] + 5, 20, what="training to continue")

        ctl.send("exit", job.pid)
        assert job.wait(timeout=30) == 0, job.stderr.read()
        exiting = records(tmp_path, "exiting")[0]
        assert (tmp_path / "ckpt" / f"step_{exiting['step']:09d}").exists()
    finally:
        job.kill()
        job.wait()


def test_a_missed_signal_still_takes_effect_within_about_a_second(tmp_path):
    job = start(tmp_path)
    try:
        wait_for(lambda: records(tmp_path, "progress"), 60, what="training to start")
        ctl = JobControl(tmp_path)
        t0 = time.monotonic()
        ctl.send("hold", None)  # the file only: as if SIGUSR1 were lost
        wait_for(lambda: records(tmp_path, "held"), 10, interval=0.02, what="held without a signal")
        assert time.monotonic() - t0 < 3.0
        ack = records(tmp_path, "control_ack")[-1]
        assert ack["command"] == "hold" and ack["seq"] == ctl.seq
    finally:
        job.kill()
        job.wait()
