"""Issue 31, item 4: the job's whole process tree belongs to the run.

With ``command = ["bash", "-c", "python train.py; echo end"]`` a kill -9 of the daemon left
``python train.py`` training (PDEATHSIG reaches the direct child only, and the orphan check
looked at the leader pid only); the next daemon started a second trainer on the same GPU. And
a ``setsid`` grandchild born just before the job exited survived it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from daemon.job.jobproc import TREE_FILE, JobProcess, end_leftovers
from tests.helpers import JOBS, ROOT, kill_group, start_daemon, wait_for, write_config


def _with(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            continue
    return out


def _kill_all(marker: str) -> None:
    for p in _with(marker):
        try:
            p.kill()
        except psutil.Error:
            pass


def test_a_setsid_grandchild_born_just_before_the_exit_is_reaped(tmp_path):
    secs = f"{3000 + os.getpid() % 1000}.25"  # a sleep no one else runs
    try:
        async def go() -> int:
            p = JobProcess(["sh", "-c", f"setsid sleep {secs} & exit 0"], cwd=tmp_path,
                           env=dict(os.environ), log_path=tmp_path / "run" / "job.log", scope=False)
            await p.start()
            return await p.wait()

        assert asyncio.run(go()) == 0
        left = _with(f"sleep {secs}")
        assert not left, f"the setsid grandchild outlived the job: {[q.pid for q in left]}"
        assert not (tmp_path / "run" / TREE_FILE).exists()  # the record goes with the tree
    finally:
        _kill_all(f"sleep {secs}")


MINI_DAEMON = """
import asyncio, os, signal, sys, time
sys.path.insert(0, {root!r})
from daemon.job.jobproc import JobProcess

async def main():
    p = JobProcess(["bash", "-c", {script!r}], cwd={cwd!r}, env=dict(os.environ),
                   log_path={log!r}, scope=False)
    await p.start()
    while "trainer up" not in p.output_tail():
        await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)  # the daemon dies the hard way, its job running

asyncio.run(main())
"""


def test_a_wrapper_s_trainer_left_by_a_killed_daemon_is_ended_by_the_record(tmp_path):
    marker = f"trainer-{os.getpid()}-{time.monotonic_ns()}"
    trainer = f"import time; print('trainer up', flush=True); time.sleep(300)  # {marker}"
    script = f"{sys.executable} -c {json.dumps(trainer)}; echo end"
    run_dir = tmp_path / "runs" / "1"
    code = textwrap.dedent(MINI_DAEMON).format(root=str(ROOT), script=script, cwd=str(tmp_path),
                                               log=str(run_dir / "job.log"))
    try:
        r = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True)
        assert r.returncode == -signal.SIGKILL, r.stderr
        # the bug: the wrapper died with the daemon (PDEATHSIG), its trainer did not
        wait_for(lambda: not _with("echo end"), 10, what="the wrapper to die with the daemon")
        assert _with(marker), "the trainer is expected to outlive a kill -9 of the daemon"
        rec = json.loads((run_dir / TREE_FILE).read_text())
        assert rec["sid"] == rec["pid"] and rec["token"]
        ended = asyncio.run(end_leftovers(run_dir))  # what the next daemon does first
        assert ended and not _with(marker), "the trainer survived the next daemon's start"
        assert not (run_dir / TREE_FILE).exists()
        assert asyncio.run(end_leftovers(run_dir)) == []  # nothing recorded, nothing ended
    finally:
        _kill_all(marker)


def test_a_recycled_session_id_is_not_mistaken_for_the_job(tmp_path):
    """The record names a session whose leader is now another process (same pid, other start
    time): that session is not the job's, and nothing in it is touched."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (tmp_path / TREE_FILE).write_text(json.dumps(
            {"pid": other.pid, "sid": other.pid, "create_time": 1.0, "token": "not-this-one"}))
        assert asyncio.run(end_leftovers(tmp_path)) == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow
def test_wrapper_plus_daemon_kill_9_plus_restart_is_one_trainer(tmp_path):
    """The issue's test on the real daemon: bash -c "python plainjob.py ...; echo end", kill -9
    of the daemon, a new daemon: exactly one trainer, the new daemon's."""
    job = f"{sys.executable} {JOBS / 'plainjob.py'} 100000 sleepy; echo end"
    cfg = write_config(tmp_path, {"job": {"command": ["bash", "-c", job]}})
    mine = str(tmp_path)

    def trainers() -> list[psutil.Process]:
        out = []
        for p in _with("plainjob.py"):
            try:
                if p.cwd() == mine and "bash" not in p.name():
                    out.append(p)
            except psutil.Error:
                continue
        return out

    d = start_daemon(cfg)
    d2 = None
    try:
        wait_for(lambda: len(trainers()) == 1, 60, what="the first trainer")
        first = trainers()[0].pid
        os.kill(d.pid, signal.SIGKILL)
        d.wait(10)
        d.stdout.close()
        time.sleep(0.5)
        assert psutil.pid_exists(first), "the wrapper's trainer is expected to survive the kill"
        d2 = start_daemon(cfg)
        wait_for(lambda: [p.pid for p in trainers()] not in ([], [first]), 60,
                 what=f"a new trainer (seen: {[p.pid for p in trainers()]})")
        deadline = time.monotonic() + 5  # and it stays one
        while time.monotonic() < deadline:
            now = [p.pid for p in trainers()]
            assert len(now) == 1 and first not in now, f"trainers running: {now}"
            time.sleep(0.2)
    finally:
        for proc in (d, d2):
            if proc is not None:
                kill_group(proc)
        for p in trainers():
            p.kill()
