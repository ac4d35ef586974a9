"""Issue 14 under the real daemon: an unmodified script with nanoGPT's habits (tests/jobs/nanogpt_like.py,
copied as-is into a workdir outside the project) and the config a user would write for it: `command`,
`resume_command`, `checkpoint_glob` and `progress_pattern = "nanogpt"`. Nothing in the script changes.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from tests.helpers import (
    JOBS,
    free_port,
    kill_group,
    nightshift,
    start_daemon,
    wait_for,
    write_config,
)

# Seconds per iter: checkpoints a few seconds apart (nanoGPT's are minutes apart). A complete zip is
# adopted the poll it is seen (issue 25), so tests/test_script_checkpoints_e2e.py saves faster.
SLEEP = 0.1


def user_config(tmp: Path, iters: int, every: int, sleep: float = SLEEP, args: tuple[str, ...] = (),
                **sections: dict[str, Any]) -> Path:
    """The script copied to ``tmp/work`` and the config a nanoGPT user writes for it."""
    work = tmp / "work"
    work.mkdir()
    shutil.copy(JOBS / "nanogpt_like.py", work / "train.py")
    train = ["python", "train.py", "--out_dir=out", f"--max_iters={iters}", f"--eval_interval={every}",
             f"--sleep={sleep}", *args]
    job = {"workdir": str(work), "command": train, "resume_command": [*train, "--init_from=resume"],
           "checkpoint_glob": "out/ckpt.pt", "progress_pattern": "nanogpt", "total_steps": iters,
           "heartbeat_timeout_s": 60.0}
    return write_config(tmp, {"job": job | sections.pop("job", {}),
                              "api": {"enabled": True, "port": free_port()}, **sections})


def query(tmp: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    """Rows from the daemon's store; [] until the daemon has created it."""
    if not (tmp / "state" / "nightshift.db").exists():
        return []
    con = sqlite3.connect(tmp / "state" / "nightshift.db")
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # the tables are not there yet
        return []
    finally:
        con.close()


def run_row(tmp: Path) -> dict[str, Any] | None:
    rows = query(tmp, "SELECT * FROM runs")
    return dict(rows[0]) if rows else None


def events(tmp: Path, kind: str) -> list[str]:
    return [r["message"] for r in query(tmp, "SELECT message FROM events WHERE kind=? ORDER BY id", kind)]


def starts(tmp: Path) -> list[str]:
    """How each attempt was started ("job started (pid N): <why>"), in order."""
    return [m for m in events(tmp, "state") if "job started" in m]


def job_pid(tmp: Path, attempt: int) -> int | None:
    """The pid of the ``attempt``-th job once it runs."""
    row = run_row(tmp)
    return row["job_pid"] if row and row["job_pid"] and len(starts(tmp)) == attempt else None


def status(cfg: Path) -> dict[str, Any]:
    """`nightshift status --json`; {} while the daemon is not serving yet."""
    r = nightshift("status", "--json", "-c", str(cfg), timeout=30)
    if r.returncode != 0 and "not running" in r.stdout + r.stderr:
        return {}
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def adopted_steps(tmp: Path) -> list[int]:
    rows = query(tmp, "SELECT step, path FROM checkpoints ORDER BY id")
    return [r["step"] for r in rows if "adopted" in r["path"]]


def job_log(tmp: Path) -> str:
    p = tmp / "state" / "runs" / "1" / "job.log"
    return p.read_text() if p.exists() else ""


def iters_in_log(tmp: Path) -> list[int]:
    return [int(n) for n in re.findall(r"(?m)^iter (\d+):", job_log(tmp))]


def redone(iters: list[int]) -> int:
    """Iters printed again after a restart: each drop of the iter counter."""
    return sum(a - b for a, b in itertools.pairwise(iters) if b < a)


def saved_iter(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["iter_num"]


@pytest.mark.torture
def test_kill9_before_the_first_checkpoint_restarts_fresh_and_after_it_resumes_from_the_adopted_copy(tmp_path):
    cfg = user_config(tmp_path, iters=150, every=50)
    ckpt = tmp_path / "work" / "out" / "ckpt.pt"
    d = start_daemon(cfg)
    try:
        wait_for(lambda: (status(cfg).get("step") or 0) >= 5, 60, 0.3, "the first iters in status")
        assert not ckpt.exists()
        os.kill(job_pid(tmp_path, 1), signal.SIGKILL)  # before its first checkpoint
        pid2 = wait_for(lambda: job_pid(tmp_path, 2), 30, what="the second attempt")
        assert not ckpt.exists()
        wait_for(lambda: 50 in adopted_steps(tmp_path), 60, 0.2, "ckpt.pt of iter 50 adopted")
        os.kill(pid2, signal.SIGKILL)  # after it, some iters past it
        wait_for(lambda: job_pid(tmp_path, 3), 30, what="the third attempt")
        wait_for(lambda: "Resuming training from out\n" in job_log(tmp_path), 60, what="the resumed attempt")
        # every iter printed again (attempt 1's from 0, attempt 2's past iter 50) is a step lost
        st = wait_for(lambda: (s := status(cfg)).get("steps_lost") == redone(iters_in_log(tmp_path)) > 5 and s,
                      30, 0.3, "the resumed attempt's progress in status")
        # the status never runs ahead of what the script printed (it may have caught up with it)
        assert 50 <= st["step"] <= max(iters_in_log(tmp_path)) and st["total_steps"] == 150
        assert isinstance(st["loss"], float)
        assert st["checkpoint"]["step"] == 50 and st["checkpoint"]["adopted"] == "out/ckpt.pt"
        assert d.wait(timeout=120) == 0, d.stdout.read()[-3000:]
    finally:
        kill_group(d)
    first, second, third = starts(tmp_path)
    assert "fresh start" in first and "fresh start" in second  # the plain command: nothing to resume
    assert "resume_command, from out/ckpt.pt" in third
    log = job_log(tmp_path)
    assert log.count("Initializing a new model from scratch") == 2 and log.count("Resuming training from out") == 1
    assert run_row(tmp_path)["state"] == "succeeded"
    assert saved_iter(ckpt) == 150


@pytest.mark.torture
def test_a_torn_ckpt_pt_and_a_kill_restore_the_adopted_copy_in_place_and_the_run_finishes(tmp_path):
    """nanoGPT's weak spot: a kill mid-save leaves a torn ckpt.pt, the only copy it has."""
    cfg = user_config(tmp_path, iters=100, every=50)
    ckpt = tmp_path / "work" / "out" / "ckpt.pt"
    d = start_daemon(cfg)
    try:
        wait_for(lambda: 50 in adopted_steps(tmp_path), 90, 0.2, "ckpt.pt of iter 50 adopted")
        pid = job_pid(tmp_path, 1)
        os.kill(pid, signal.SIGSTOP)  # nothing writes while the file is torn: as if killed mid-save
        with open(ckpt, "r+b") as f:
            f.truncate(ckpt.stat().st_size // 2)
        with pytest.raises(Exception):  # noqa: B017 - whatever torch says, the file is unusable
            saved_iter(ckpt)
        os.kill(pid, signal.SIGKILL)
        out, _ = d.communicate(timeout=120)
        assert d.returncode == 0, out[-3000:]
    finally:
        kill_group(d)
    assert "not adopting out/ckpt.pt: ckpt.pt: not a complete zip archive" in out  # the daemon says why
    assert events(tmp_path, "restored") == [
        "put the adopted checkpoint of step 50 back at out/ckpt.pt before the restart"]
    assert "resume_command, from out/ckpt.pt" in starts(tmp_path)[1]
    assert "Resuming training from out" in job_log(tmp_path)
    assert not events(tmp_path, "failed") and run_row(tmp_path)["state"] == "succeeded"
    assert saved_iter(ckpt) == 100


# The simulated 780M heats with the job's measured CPU use; one real second is a simulated minute.
# Under full load it would settle at 105 C: the script (torch's import counts too) crosses
# pause_at_c (85 C) after ~3 s and cools to resume_at_c in ~1 s (tests/test_thermal_e2e.py's).
HOT_GPU = {"sensor": "simulated", "poll_interval_s": 0.25,
           "simulated": {"time_scale": 60.0, "ambient_c": 45.0, "load_c": 60.0, "tau_heat_s": 180.0,
                         "tau_cool_s": 120.0, "reset_at_c": 97.0, "reset_after_s": 60.0,
                         "reset_duration_s": 30.0}}
THERMAL = {"pause_at_c": 85.0, "resume_at_c": 70.0, "min_cooldown_s": 1.0, "max_cooldown_s": 60.0}


@pytest.mark.slow
def test_the_unmodified_script_heats_the_simulated_gpu_is_sigstop_held_while_cooling_and_finishes(tmp_path):
    # unpaced: the script keeps a core busy (a paced toy idles and the chip settles below 85 C);
    # long enough that a fast, warm machine does not finish before the chip is hot (2000 iters
    # took 3 s after the file's other tests, and the chip needs ~4 s of full load)
    iters = 8000
    cfg = user_config(tmp_path, iters=iters, every=4000, sleep=0.0, gpu=HOT_GPU, thermal=THERMAL)
    d = start_daemon(cfg)
    try:
        wait_for(lambda: (run_row(tmp_path) or {}).get("state") == "cooling", 90, 0.1, "a thermal pause")
        job = psutil.Process(run_row(tmp_path)["job_pid"])
        wait_for(lambda: job.status() == psutil.STATUS_STOPPED, 5, 0.05, "the job SIGSTOP-held")
        assert d.wait(timeout=120) == 0, d.stdout.read()[-3000:]
    finally:
        kill_group(d)
    [hot, *_] = events(tmp_path, "paused_hot")
    assert "paused before overheating" in hot
    transitions = [m.split(":")[0] for m in events(tmp_path, "state")]
    assert "running -> cooling" in transitions and "cooling -> running" in transitions
    assert len(starts(tmp_path)) == 1 and not events(tmp_path, "exit")  # held, never restarted
    assert iters_in_log(tmp_path) == list(range(iters))  # every iter once: none lost to the pause
    assert run_row(tmp_path)["state"] == "succeeded"


@pytest.mark.torture
def test_failover_to_the_local_backend_carries_workdir_data_and_checkpoint_and_brings_the_result_home(tmp_path):
    """`nightshift offload` for a script in a workdir outside the project, with a data dir."""
    data = tmp_path / "work" / "data"
    # the script reads its corpus from the data dir, by a relative path
    cfg = user_config(tmp_path, iters=150, every=50, args=("--data=data/corpus.bin",),
                      offload={"backend": "local", "budget_usd": 5.0, "local_dir": str(tmp_path / "volume"),
                               "data": ["data"]})
    data.mkdir()
    (data / "corpus.bin").write_bytes(os.urandom(4096))
    d = start_daemon(cfg)
    try:
        wait_for(lambda: 50 in adopted_steps(tmp_path), 90, 0.2, "ckpt.pt of iter 50 adopted")
        r = nightshift("offload", "-c", str(cfg), timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert d.wait(timeout=180) == 0, d.stdout.read()[-3000:]
    finally:
        kill_group(d)
    assert run_row(tmp_path)["state"] == "succeeded"
    [offloaded] = events(tmp_path, "offloaded")
    assert "from out/ckpt.pt: forced by the user" in offloaded and events(tmp_path, "pulled")
    [vol] = [p for p in (tmp_path / "volume").iterdir() if (p / "job.log").exists()]
    remote_log = (vol / "job.log").read_text()
    # it ran from its copied workdir, read the same corpus, resumed from the adopted checkpoint
    assert (vol / "work" / "train.py").read_bytes() == (tmp_path / "work" / "train.py").read_bytes()
    [seed] = set(re.findall(r"data: data/corpus.bin \(seed (\d+)\)", job_log(tmp_path)))
    assert f"data: data/corpus.bin (seed {seed})" in remote_log
    assert "Resuming training from out" in remote_log and "iter 149:" in remote_log
    assert "iter 149:" not in job_log(tmp_path)  # the end was trained remotely
    assert (vol / "work" / "data").is_symlink()  # the data dir went to the data volume, linked
    assert (vol / "work" / "data" / "corpus.bin").read_bytes() == (data / "corpus.bin").read_bytes()
    # the run's fingerprint ends where the remote run ended
    last_loss = float(re.findall(r"(?m)^iter 149: loss ([\d.]+)", remote_log)[0])
    assert run_row(tmp_path)["final_loss"] == pytest.approx(last_loss, abs=1e-4)
    # the result came home to the workdir's relative path
    home = tmp_path / "work" / "out" / "ckpt.pt"
    assert saved_iter(home) == 150
    assert home.read_bytes() == (vol / "work" / "out" / "ckpt.pt").read_bytes()
