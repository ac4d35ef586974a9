"""The job's process tree is scanned cheaply and seldom while it does not change (issue 30:
the scan every 0.5 s of every process on the machine was the daemon's largest cost). Real
child processes."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import psutil

from daemon.job.jobproc import TREE_IDLE_FACTOR, JobProcess

# sleeps, then starts a child that starts a grandchild in its own session and waits on it
LATE_TREE = r"""
import subprocess, sys, time
time.sleep(float(sys.argv[1]))
child = subprocess.Popen([sys.executable, "-c",
    "import subprocess, time\n"
    "g = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
    "print(g.pid, flush=True)\n"
    "time.sleep(60)"])
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _wait_for(cond, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def test_an_unchanged_tree_is_scanned_less_often_and_a_new_process_brings_the_pace_back(tmp_path):
    poll = 0.05

    async def main():
        job = JobProcess([sys.executable, "-c", LATE_TREE, "3"], cwd=tmp_path, env=dict(os.environ),
                         log_path=tmp_path / "job.log", scope=False, tree_poll_s=poll)
        await job.start()
        try:
            await _wait_for(lambda: job.tree_scan_s == TREE_IDLE_FACTOR * poll, 3.0,
                            f"the interval never grew while the tree stood still: {job.tree_scan_s}")
            # the child appears (after 3 s): the next scan finds it and the pace is back
            await _wait_for(lambda: job.output_tail().strip(), 30.0, "the grandchild never started")
            await _wait_for(lambda: job.tree_scan_s < TREE_IDLE_FACTOR * poll, 10.0,
                            "a new process did not bring the scan back to tree_poll_s")
            await _wait_for(lambda: len(job._tree) >= 3, 10.0, f"tree seen: {job._tree}")
            grandchild = int(job.output_tail().split()[0])
        finally:
            await job.terminate(term_s=1.0)
        return grandchild

    grandchild = asyncio.run(main())
    assert _gone(grandchild), "a grandchild in its own session, started late, outlived the stop"


def test_cpu_time_reads_the_known_processes_without_listing_the_machine(tmp_path, monkeypatch):
    """cpu_time() is called per poll for liveness: it reads the processes already recorded
    (the watcher finds new ones) and still sees the CPU they burn."""
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(30)"

    async def main():
        job = JobProcess([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ),
                         log_path=tmp_path / "job.log", scope=False, tree_poll_s=0.05)
        await job.start()
        try:
            await _wait_for(lambda: job._tree, 10.0, "the job was never recorded")
            listed: list[str] = []
            real = os.listdir

            def cpu() -> float:  # no await inside: the watcher cannot run meanwhile
                monkeypatch.setattr(os, "listdir", lambda p=".": (listed.append(os.fsdecode(p)), real(p))[1])
                try:
                    return job.cpu_time()
                finally:
                    monkeypatch.setattr(os, "listdir", real)

            await _wait_for(lambda: cpu() >= 0.4, 30.0, "the job's CPU time never grew")
            return listed
        finally:
            await job.terminate(term_s=1.0)

    assert "/proc" not in asyncio.run(main())
