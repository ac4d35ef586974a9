"""Exact resume: kill -9 the reference job at random moments, resume each time, and compare the
final tensors with an uninterrupted run (torch.equal), on CPU."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT
from trainer.checkpoint import load_checkpoint
from trainer.format import find_latest_valid, list_checkpoints

SMALL = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ctx", "16", "--batch", "8",
         "--eval-every", "20", "--checkpoint-interval", "7"]


def job(tmp: Path, steps: int, resume: str = "") -> subprocess.Popen:
    env = {**os.environ, "NIGHTSHIFT_RUN_DIR": str(tmp / "run"),
           "NIGHTSHIFT_CHECKPOINT_DIR": str(tmp / "ckpt"), "NIGHTSHIFT_RESUME": resume}
    return subprocess.Popen([sys.executable, "-m", "trainer.reference", "--steps", str(steps), *SMALL],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def final_state(tmp: Path, steps: int):
    info = find_latest_valid(tmp / "ckpt")
    assert info is not None and info.step == steps
    groups, _ = load_checkpoint(info.path)
    return groups


def persist_in_flight(ckpt: Path) -> bool:
    """A checkpoint is being written right now: its temporary directory exists."""
    try:
        return any(n.startswith(".tmp-step_") for n in os.listdir(ckpt))
    except FileNotFoundError:
        return False


def seen(tmp: Path, kind: str) -> int:
    p = tmp / "run" / "progress.jsonl"
    return p.read_text().count(f'"kind": "{kind}"') if p.exists() else 0


@pytest.mark.torture
@pytest.mark.timeout(600)  # 57 s quiet; over 300 s at load 9 (two CPU burners beside the suite)
def test_kill9_at_random_moments_resumes_bit_exactly(tmp_path):
    steps = 200
    ref = tmp_path / "ref"
    # the uninterrupted run goes on beside the killed ones (they share no file): its torch import
    # and steps cost the test no wall time
    uninterrupted = job(ref, steps)
    try:
        _kill9_loop_then_compare(tmp_path, steps, uninterrupted)
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.wait()
        uninterrupted.stderr.close()


def _kill9_loop_then_compare(tmp_path: Path, steps: int, uninterrupted: subprocess.Popen) -> None:
    work = tmp_path / "work"
    rng = random.Random(42)
    kills = 0
    resumed_steps = []
    mid_persist = 0
    while kills < 12:
        starts, persisted = seen(work, "start"), seen(work, "checkpoint")
        p = job(work, steps)
        while seen(work, "start") == starts and p.poll() is None:  # wait past torch's import
            time.sleep(0.02)
        if kills % 2:
            # aim at a background persist: let one checkpoint land (progress), then kill the
            # moment the next one's temporary directory appears
            deadline = time.monotonic() + 10
            while seen(work, "checkpoint") == persisted and time.monotonic() < deadline \
                    and p.poll() is None:
                time.sleep(0.005)
            while not persist_in_flight(work / "ckpt") and time.monotonic() < deadline \
                    and p.poll() is None:
                time.sleep(0.0005)
        else:
            time.sleep(rng.uniform(0.0, 0.3))  # anywhere: mid-step, mid-snapshot, mid-eval
        if p.poll() is not None:
            break  # it finished first
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stderr.close()
        kills += 1
        mid_persist += persist_in_flight(work / "ckpt")  # its temp dir was left half-written
        info = find_latest_valid(work / "ckpt")
        for c in list_checkpoints(work / "ckpt"):
            # every committed checkpoint must load: a kill never exposes a partial one
            load_checkpoint(c)
        resumed_steps.append(info.step if info else 0)
    if p.poll() is None or p.returncode != 0:  # killed last: the final run resumes once more
        p = job(work, steps)
    assert p.wait(timeout=180) == 0, p.stderr.read()
    p.stderr.close()
    got = final_state(work, steps)
    assert uninterrupted.wait(timeout=180) == 0, uninterrupted.stderr.read()
    expected = final_state(tmp_path / "ref", steps)
    print(f"kills={kills} mid_persist={mid_persist} resumed_steps={resumed_steps}")
    assert kills >= 8, f"the job finished before it could be killed often enough ({kills})"
    assert mid_persist >= 2, f"only {mid_persist} kills landed during a background persist"
    assert len(set(resumed_steps)) > 2, resumed_steps  # kills landed at different moments
    for group in ("model", "optimizer"):
        assert got[group].keys() == expected[group].keys()
        for k in expected[group]:
            assert torch.equal(got[group][k], expected[group][k]), f"{group}.{k} differs"
    assert seen(work, "start") == kills + 1
