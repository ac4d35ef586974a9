"""Issue 25 under the real daemon: a script in nanoGPT's style (tests/jobs/nanogpt_like.py: one
ckpt.pt overwritten in place with torch.save, prints, `--init_from=resume`), configured as a user
would (tests/test_own_script_e2e.py's `user_config`). Each test is one finding of the issue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, kill_group, nightshift, start_daemon, wait_for
from tests.test_own_script_e2e import (
    HOT_GPU,
    adopted_steps,
    events,
    job_log,
    job_pid,
    query,
    run_row,
    saved_iter,
    starts,
    status,
    user_config,
)


def old_checkpoint(path: Path, iter_num: int) -> bytes:
    """A ckpt.pt like the one nanoGPT's quickstart leaves (the script's own shape)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = torch.nn.Sequential(torch.nn.Embedding(65, 32), torch.nn.Linear(32, 65))
    opt = torch.optim.AdamW(model.parameters())
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter_num": iter_num,
                "best_val_loss": 1.0, "config": {}}, path)
    return path.read_bytes()


def finish(d: subprocess.Popen, timeout: float) -> str:
    """The daemon's exit (0 expected) and its output, the pipe closed."""
    out, _ = d.communicate(timeout=timeout)
    assert d.returncode == 0, out[-3000:]
    return out


def stop(d: subprocess.Popen) -> None:
    kill_group(d)
    if d.stdout is not None:
        d.stdout.close()


def run_rows(tmp: Path) -> list[dict]:
    return [dict(r) for r in query(tmp, "SELECT * FROM runs ORDER BY id")]


def stop_then(pid: int, damage, tmp: Path | None = None) -> None:
    """The job stopped (nothing writes), the file damaged, the job killed: as a power cut."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        raise AssertionError(f"job {pid} was gone before it could be stopped; events: "
                             f"{events(tmp, 'state') if tmp else '?'}; job.log ends: "
                             f"{job_log(tmp)[-1500:] if tmp else '?'}") from None
    damage()
    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_an_old_ckpt_pt_is_never_resumed_by_a_new_run_first_run_and_run_new(tmp_path):
    """Finding 1: the first run of a fresh state dir, then `nightshift run --new`, with a
    ckpt.pt from before each run: both start from scratch, the old file is kept aside."""
    cfg = user_config(tmp_path, iters=60, every=30)
    ckpt = tmp_path / "work" / "out" / "ckpt.pt"
    old = old_checkpoint(ckpt, 600)
    d = start_daemon(cfg)
    try:
        finish(d, 180)
    finally:
        stop(d)
    [first] = starts(tmp_path)
    assert "fresh start" in first, first
    assert "Resuming" not in job_log(tmp_path) and "Initializing a new model from scratch" in job_log(tmp_path)
    assert 600 not in adopted_steps(tmp_path) and saved_iter(ckpt) == 60
    [found] = events(tmp_path, "found")
    kept = tmp_path / "state" / "adopted" / "run-1" / "before" / "out" / "ckpt.pt"
    assert "out/ckpt.pt (step 600) was there before run 1 began" in found and str(kept) in found
    assert "--resume-from out/ckpt.pt" in found and kept.read_bytes() == old
    assert run_row(tmp_path)["state"] == "succeeded" and run_row(tmp_path)["step"] == 60
    # run --new: run 1's ckpt.pt (iter 60) is there; run 2 must not "finish at step 60" at once
    d = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--new", "-c", str(cfg)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        finish(d, 180)
    finally:
        stop(d)
    runs = run_rows(tmp_path)
    assert [r["state"] for r in runs] == ["succeeded", "succeeded"]
    run2_starts = [m for m in starts(tmp_path)][1:]
    assert run2_starts and all("fresh start" in m for m in run2_starts), run2_starts
    log2 = (tmp_path / "state" / "runs" / "2" / "job.log").read_text()
    assert "Initializing a new model from scratch" in log2 and "Resuming" not in log2
    assert "iter 0:" in log2 and "iter 59:" in log2  # trained the whole run, not 0 steps
    assert (tmp_path / "state" / "adopted" / "run-2" / "before" / "out" / "ckpt.pt").exists()


@pytest.mark.slow
def test_zeros_then_random_bytes_of_the_same_size_are_refused_and_the_good_copy_is_put_back(tmp_path):
    """Finding 2: ckpt.pt overwritten with zeros (then, later, random bytes) of its own size
    after two adoptions, the job killed: the newest verified copy is put back each time."""
    cfg = user_config(tmp_path, iters=200, every=50)
    ckpt = tmp_path / "work" / "out" / "ckpt.pt"
    d = start_daemon(cfg)
    try:
        for attempt, (good, junk) in enumerate(((100, "zeros"), (150, "random")), 1):
            wait_for(lambda g=good: g in adopted_steps(tmp_path), 120, 0.1, f"ckpt.pt of iter {good} adopted")
            pid = wait_for(lambda a=attempt: job_pid(tmp_path, a), 30, what=f"attempt {attempt}")
            size = ckpt.stat().st_size
            stop_then(pid, lambda j=junk, s=size: ckpt.write_bytes(b"\0" * s if j == "zeros" else os.urandom(s)))
            wait_for(lambda a=attempt: job_pid(tmp_path, a + 1), 60, what=f"attempt {attempt + 1}")
        out = finish(d, 180)
    finally:
        stop(d)
    restored = events(tmp_path, "restored")
    assert restored[:2] == ["put the adopted checkpoint of step 100 back at out/ckpt.pt before the restart",
                            "put the adopted checkpoint of step 150 back at out/ckpt.pt before the restart"], restored
    assert out.count("ckpt.pt: not a torch zip") == 2, out[-3000:]  # each said once, in the daemon's log
    assert job_log(tmp_path).count("Resuming training from out") == 2
    assert not events(tmp_path, "failed") and run_row(tmp_path)["state"] == "succeeded"
    assert saved_iter(ckpt) == 200


def valid_zip_that_does_not_load(path: Path) -> None:
    """A complete zip with good CRCs that torch cannot load: it verifies, it is adopted."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ckpt/data.pkl", b"not a pickle at all")
        z.writestr("ckpt/version", b"3\n")


@pytest.mark.slow
def test_a_copy_that_verifies_but_does_not_load_falls_back_to_the_next_older_copy(tmp_path):
    """The restore chain: the newest copy is put back, the resumed job dies before any
    progress, the next older copy is put back and the run finishes."""
    cfg = user_config(tmp_path, iters=150, every=50)
    ckpt = tmp_path / "work" / "out" / "ckpt.pt"
    d = start_daemon(cfg)
    try:
        wait_for(lambda: 100 in adopted_steps(tmp_path), 120, 0.1, "ckpt.pt of iter 100 adopted")
        pid = job_pid(tmp_path, 1)
        os.kill(pid, signal.SIGSTOP)
        valid_zip_that_does_not_load(ckpt)
        wait_for(lambda: len(adopted_steps(tmp_path)) == 3, 30, 0.1, "the bad zip adopted (it verifies)")
        os.kill(pid, signal.SIGKILL)
        finish(d, 240)
    finally:
        stop(d)
    [failed] = events(tmp_path, "restore_failed")
    assert failed.startswith("the checkpoint put back at out/ckpt.pt (step ") and "does not load: " in failed
    assert "UnpicklingError: Weights only load failed; putting back the next older copy" in failed, failed
    assert events(tmp_path, "restored")[-1] == \
        "put the adopted checkpoint of step 100 back at out/ckpt.pt before the restart"
    marks = json.loads((tmp_path / "state" / "adopted" / "run-1" / "marks.json").read_text())
    assert list(marks["failed"]) == ["3"]  # the bad zip (the third copy), kept, never put back again
    assert not events(tmp_path, "failed") and run_row(tmp_path)["state"] == "succeeded"
    assert saved_iter(ckpt) == 150


@pytest.mark.slow
def test_a_file_torn_by_a_kill_before_any_copy_is_moved_aside_and_the_job_starts_fresh(tmp_path):
    """Finding 3: a ckpt.pt torn by a kill before the first copy existed was refused, then
    resume_command ran on it, crashed twice and the run FAILED. Now it is moved aside and
    `command` starts over."""
    cfg = user_config(tmp_path, iters=120, every=100, sleep=0.1)  # the first save 10 s in
    ckpt = tmp_path / "work" / "out" / "ckpt.pt"
    whole = old_checkpoint(tmp_path / "whole.pt", 100)
    torn = whole[: len(whole) // 2]  # what a kill mid-save leaves
    d = start_daemon(cfg)
    try:
        pid = wait_for(lambda: job_pid(tmp_path, 1), 60, what="the first attempt")
        wait_for(lambda: "iter 1:" in job_log(tmp_path), 60, 0.1, "the first iters")
        stop_then(pid, lambda: ckpt.parent.mkdir(exist_ok=True) or ckpt.write_bytes(torn), tmp_path)
        assert "iter 99:" not in job_log(tmp_path)  # killed before its first save: no copy exists
        finish(d, 240)
    finally:
        stop(d)
    first, second = starts(tmp_path)[:2]
    assert "fresh start" in second, second
    assert (ckpt.parent / ".nightshift-torn-ckpt.pt").read_bytes() == torn  # moved aside, kept
    assert not events(tmp_path, "failed") and run_row(tmp_path)["state"] == "succeeded"
    assert saved_iter(ckpt) == 100 and "iter 119:" in job_log(tmp_path)  # its own save, then the end


@pytest.mark.slow
def test_saves_1_5_s_apart_are_adopted_as_they_come_and_a_kill_mid_save_costs_one_interval(tmp_path):
    """Finding 3: with saves every ~2.5 s not one was adopted in 23 s (the 2 s "settled" rule
    never held under load). Saves ~1.5 s apart here; the file torn by a kill mid-save."""
    cfg = user_config(tmp_path, iters=180, every=15, sleep=0.1)
    ckpt = tmp_path / "work" / "out" / "ckpt.pt"
    d = start_daemon(cfg)
    try:
        wait_for(lambda: len(adopted_steps(tmp_path)) >= 4, 120, 0.1, "four copies adopted")
        pid = job_pid(tmp_path, 1)
        stop_then(pid, lambda: ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2]))
        finish(d, 240)
    finally:
        stop(d)
    assert "resume_command, from out/ckpt.pt" in starts(tmp_path)[1]
    assert not events(tmp_path, "failed") and run_row(tmp_path)["state"] == "succeeded"
    saves = set(range(15, 181, 15))
    adopted = set(adopted_steps(tmp_path))
    # the goal (9 of 10 at 2.5 s) is measured by bench/adopt_rate_bench.py; here, 1.5 s apart on a
    # test box at any load, most saves are kept (the 2 s settle rule kept none)
    assert len(adopted & saves) >= len(saves) // 2, (sorted(adopted), sorted(saves))
    assert saved_iter(ckpt) == 180


@pytest.mark.slow
def test_a_job_killed_while_cooling_restarts_only_when_the_hold_would_have_ended(tmp_path):
    """Finding 4: a crash during a thermal pause restarted the job 2 s later at 86 C."""
    thermal = {"pause_at_c": 85.0, "resume_at_c": 70.0, "min_cooldown_s": 6.0, "max_cooldown_s": 120.0}
    cfg = user_config(tmp_path, iters=8000, every=4000, sleep=0.0, gpu=HOT_GPU, thermal=thermal)
    d = start_daemon(cfg)
    try:
        wait_for(lambda: (run_row(tmp_path) or {}).get("state") == "cooling", 120, 0.1, "a thermal pause")
        paused_at = time.time()
        os.kill(run_row(tmp_path)["job_pid"], signal.SIGKILL)
        pid2 = wait_for(lambda: job_pid(tmp_path, 2), 120, 0.1, "the restart after cooling")
        restarted_at = time.time()
        assert pid2
    finally:
        stop(d)
    assert restarted_at - paused_at >= thermal["min_cooldown_s"] - 0.5, restarted_at - paused_at
    transitions = [m for m in events(tmp_path, "state")]
    i = next(i for i, m in enumerate(transitions) if m.startswith("running -> cooling"))
    after = [m.split(":")[0] for m in transitions[i + 1:]]
    assert after[:2] == ["cooling -> starting", "starting -> running"], transitions[i:]
    edge = query(tmp_path, "SELECT edge_c FROM readings WHERE t <= ? ORDER BY t DESC LIMIT 1", restarted_at)
    assert edge and edge[0]["edge_c"] <= thermal["resume_at_c"] + 2.0, edge and edge[0]["edge_c"]


@pytest.mark.slow
def test_a_daemon_restart_while_cooling_keeps_the_thermal_hold(tmp_path):
    """Issue 31, item 8: a daemon kill -9 during cooling; the next daemon restores the hold and
    starts the job only once min_cooldown_s has passed (it resumed at once)."""
    thermal = {"pause_at_c": 85.0, "resume_at_c": 70.0, "min_cooldown_s": 6.0, "max_cooldown_s": 120.0}
    cfg = user_config(tmp_path, iters=8000, every=4000, sleep=0.0, gpu=HOT_GPU, thermal=thermal)
    d = start_daemon(cfg)
    try:
        wait_for(lambda: (run_row(tmp_path) or {}).get("state") == "cooling", 120, 0.1, "a thermal pause")
    finally:
        stop(d)  # kill -9 of the daemon (its job dies with it: PDEATHSIG)
    d = start_daemon(cfg)
    try:
        back = time.time()
        wait_for(lambda: events(tmp_path, "holds"), 60, 0.1, "the restored hold")
        pid2 = wait_for(lambda: job_pid(tmp_path, 2), 120, 0.1, "the start after cooling")
        started = time.time()
        assert pid2
    finally:
        stop(d)
    assert "the GPU was cooling when the daemon stopped" in events(tmp_path, "holds")[0]
    assert started - back >= thermal["min_cooldown_s"] - 0.5, started - back
    transitions = [m.split(":")[0] for m in events(tmp_path, "state")]
    assert "starting -> cooling" in transitions and "cooling -> starting" in transitions, transitions


@pytest.mark.slow
def test_after_a_nan_loss_the_nan_checkpoint_is_suspect_and_the_phone_shows_the_loss_that_stopped_it(tmp_path):
    """Finding 6: after a NaN loss stopped the run, status showed the loss before it (2152) and
    offered the NaN-weights checkpoint as the newest, with no warning. Then "not restored unless
    asked": `nightshift restore` refuses while the daemon runs, puts the suspect copy back with
    --force once it is stopped, and `run --new --resume-from out/ckpt.pt` (a file: refused
    before) resumes it as the new run's own."""
    cfg = user_config(tmp_path, iters=200, every=20, sleep=0.05, args=("--nan_at=60",),
                      divergence={"enabled": True, "action": "stop"}, daemon={"exit_when_done": False})
    d = start_daemon(cfg)
    try:
        wait_for(lambda: (run_row(tmp_path) or {}).get("state") == "failed", 120, 0.2, "the run stopped by NaN")
        wait_for(lambda: 60 in adopted_steps(tmp_path), 30, 0.2, "the NaN copy adopted (it is a good zip)")
        st = wait_for(lambda: (s := status(cfg)).get("state") == "failed" and s.get("loss_stopped") and s,
                      30, 0.3, "the failed status")
        text = nightshift("status", "-c", str(cfg), timeout=30).stdout
        running = nightshift("restore", "1", "--step", "60", "--force", "-c", str(cfg), timeout=30)
    finally:
        stop(d)
    assert running.returncode == 1 and "the daemon is running" in running.stderr and "stop it first" in running.stderr
    assert st["loss_stopped"] == {"step": 60, "loss": "nan"} and st["loss"] is None
    assert st["checkpoint"]["step"] == 40  # the last good one, not the NaN weights of step 60
    assert any(p.startswith("the last good checkpoint is step 40: those past step 59 are suspect")
               for p in st["problems"]), st["problems"]
    marks = json.loads((tmp_path / "state" / "adopted" / "run-1" / "marks.json").read_text())
    assert [w["step"] for w in marks["suspect"]] == [59]
    lines = text.splitlines()
    assert len(lines) <= 12 and lines[0] == "nightshift  FAILED", text
    assert "loss  nan at step 60 stopped the run" in text and "ckpt  step 40" in text, text
    ckpt = tmp_path / "work" / "out" / "ckpt.pt"
    listed = nightshift("checkpoints", "-c", str(cfg), timeout=30)
    assert listed.returncode == 0 and "suspect" in listed.stdout and "before the non-finite loss at step 60" \
        in listed.stdout, listed.stdout + listed.stderr
    refused = nightshift("restore", "1", "--step", "60", "-c", str(cfg), timeout=30)
    assert refused.returncode == 1 and "add --force" in refused.stderr, refused.stderr
    (tmp_path / "work" / "out" / "ckpt.pt").write_bytes(b"\0" * 1000)  # whatever is there now
    forced = nightshift("restore", "1", "--step", "60", "--force", "-c", str(cfg), timeout=30)
    assert forced.returncode == 0 and saved_iter(ckpt) == 60, forced.stdout + forced.stderr
    assert "run 1 has ended" in forced.stdout and "--resume-from" in forced.stdout, forced.stdout
    d = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--new", "--resume-from", "out/ckpt.pt",
                          "-c", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        log2 = tmp_path / "state" / "runs" / "2" / "job.log"
        wait_for(lambda: log2.exists() and "Resuming training" in log2.read_text(), 90, 0.2,
                 "run 2 resumed from the ckpt.pt chosen on purpose")
    finally:
        stop(d)
    assert not [m for m in events(tmp_path, "found") if "before run 2" in m]  # chosen: its own
