"""Exact resume: kill -9 the reference job at random moments, resume each time, and compare the
final tensors with an uninterrupted run (torch.equal), on CPU."""

from __future__ import annotations

import json
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


def starts_seen(tmp: Path) -> int:
    p = tmp / "run" / "progress.jsonl"
    return p.read_text().count('"kind": "start"') if p.exists() else 0


@pytest.mark.torture
def test_kill9_at_random_moments_resumes_bit_exactly(tmp_path):
    steps = 120
    ref = tmp_path / "ref"
    p = job(ref, steps)
    assert p.wait(timeout=120) == 0, p.stderr.read()
    expected = final_state(ref, steps)

    work = tmp_path / "work"
    rng = random.Random(42)
    kills = 0
    resumed_steps = []
    while kills < 10:
        starts = starts_seen(work)
        p = job(work, steps)
        while starts_seen(work) == starts and p.poll() is None:  # wait past torch's import
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))  # a few steps in; with interval 7, often mid-persist
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        info = find_latest_valid(work / "ckpt")
        for c in list_checkpoints(work / "ckpt"):
            # every committed checkpoint must load: a kill never exposes a partial one
            load_checkpoint(c)
        resumed_steps.append(info.step if info else 0)
    p = job(work, steps)
    assert p.wait(timeout=180) == 0, p.stderr.read()
    got = final_state(work, steps)
    assert kills >= 5, f"the job finished before it could be killed often enough ({kills})"
    assert len(set(resumed_steps)) > 2, resumed_steps  # kills landed at different moments
    for group in ("model", "optimizer"):
        assert got[group].keys() == expected[group].keys()
        for k in expected[group]:
            assert torch.equal(got[group][k], expected[group][k]), f"{group}.{k} differs"
    assert (work / "run" / "progress.jsonl").read_text().count('"kind": "start"') == kills + 1
