"""Items 3, 7 and 14 of issue 13, with real child processes: output without newlines, \\r
redraws, job.log rotation, a grandchild holding the pipe, the whole tree reaped, CPU time."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import psutil
import pytest

from daemon.job.jobproc import JobProcess, signal_group


def _job(tmp_path, code: str, **kw) -> JobProcess:
    return JobProcess([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ),
                      log_path=tmp_path / "job.log", scope=False, tree_poll_s=0.1, **kw)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


TQDM = r"""
import sys
for i in range(20001):
    sys.stdout.write(f"\r{i}/20000 [{'#' * (i // 1000)}]")  # ~400 KB, no newline at all
sys.stdout.write("\ndone\n")
"""


def test_tqdm_bar_redrawn_with_cr_shows_its_latest_state_and_the_job_is_not_blocked(tmp_path):
    lines: list[str] = []

    async def main():
        job = _job(tmp_path, TQDM, on_line=lines.append)
        await job.start()
        rc = await asyncio.wait_for(job.wait(), 60)
        return job, rc

    job, rc = asyncio.run(main())
    assert rc == 0
    assert job.output_tail().splitlines() == ["20000/20000 [" + "#" * 20 + "]", "done"]
    assert lines[-2:] == ["20000/20000 [" + "#" * 20 + "]", "done"]
    assert (tmp_path / "job.log").stat().st_size > 64 * 1024  # the raw bytes are all in job.log


def test_megabytes_without_any_line_end_are_cut_into_bounded_lines(tmp_path):
    code = "import sys; sys.stdout.write('x' * (1 << 20)); sys.stdout.flush()"

    async def main():
        job = _job(tmp_path, code)
        await job.start()
        return job, await asyncio.wait_for(job.wait(), 60)

    job, rc = asyncio.run(main())
    assert rc == 0 and max(len(line) for line in job.output_tail().splitlines()) <= 4096


def test_job_log_is_rotated_at_log_max_bytes_keeping_the_newest_output(tmp_path):
    code = "for i in range(40000): print(f'line {i:08d} ' + 'y' * 40)"  # ~2 MB

    async def main():
        job = _job(tmp_path, code, log_max_bytes=256 * 1024)
        await job.start()
        return await asyncio.wait_for(job.wait(), 60)

    assert asyncio.run(main()) == 0
    log, old = tmp_path / "job.log", tmp_path / "job.log.1"
    assert log.stat().st_size <= 256 * 1024 and old.stat().st_size <= 256 * 1024
    assert log.read_text().rstrip().endswith("line 00039999 " + "y" * 40)
    assert list(tmp_path.glob("job.log*")) and len(list(tmp_path.glob("job.log*"))) == 2


GRANDCHILD = r"""
import subprocess, sys, time
# a grandchild in its own session that keeps our stdout open for a minute
p = subprocess.Popen(["sleep", "60"], start_new_session=True)
print(p.pid, flush=True)
time.sleep(0.5)
sys.exit(3)
"""


def test_exit_is_noticed_while_a_grandchild_in_its_own_session_holds_the_pipe(tmp_path):
    async def main():
        job = _job(tmp_path, GRANDCHILD)
        await job.start()
        t0 = time.monotonic()
        rc = await asyncio.wait_for(job.wait(), 20)
        return job, rc, time.monotonic() - t0

    job, rc, took = asyncio.run(main())
    assert rc == 3 and took < 5, took
    grandchild = int(job.output_tail().splitlines()[0])
    assert _gone(grandchild), "the grandchild outlived the job"


GROUP = r"""
import subprocess, sys, time
# a child in the job's group that ignores SIGTERM, and one that left the group with setsid
a = subprocess.Popen([sys.executable, "-c",
                      "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
b = subprocess.Popen(["sleep", "60"], start_new_session=True, stdout=subprocess.DEVNULL)
print(a.pid, b.pid, flush=True)
time.sleep(float(sys.argv[1]))
"""


@pytest.mark.parametrize("how", ["terminate", "exit"])
def test_whole_tree_is_reaped_on_stop_and_on_exit(tmp_path, how):
    async def main():
        job = JobProcess([sys.executable, "-c", GROUP, "60" if how == "terminate" else "1"],
                         cwd=tmp_path, env=dict(os.environ), log_path=tmp_path / "job.log",
                         scope=False, tree_poll_s=0.1)
        await job.start()
        for _ in range(100):
            if job.output_tail():
                break
            await asyncio.sleep(0.1)
        pids = [int(x) for x in job.output_tail().split()]
        if how == "terminate":
            await asyncio.sleep(0.3)
            await job.terminate(term_s=1.0)
        else:
            await asyncio.wait_for(job.wait(), 20)
        return pids

    pids = asyncio.run(main())
    assert len(pids) == 2
    assert all(_gone(pid) for pid in pids), [pid for pid in pids if not _gone(pid)]


def test_cpu_time_counts_the_whole_tree(tmp_path):
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass'])")

    async def main():
        job = _job(tmp_path, code)
        await job.start()
        seen = []
        while job.running and job.proc.returncode is None:
            seen.append(job.cpu_time())
            await asyncio.sleep(0.1)
        await job.wait()
        return seen, job.cpu_time()

    seen, final = asyncio.run(main())
    assert seen == sorted(seen)  # never decreases
    assert final >= 0.5, final


@pytest.mark.parametrize("pgid", [1, 0, -1])
def test_signal_group_refuses_the_groups_that_mean_every_process_or_our_own(monkeypatch, pgid):
    """killpg(1) is kill(-1) (every process this user may signal) and killpg(0) the daemon's own
    group: never a job's. os.killpg recorded, not called: a broken guard harms nothing."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda g, s: sent.append((g, s)))
    with pytest.raises(ValueError, match="not a job's process group"):
        signal_group(pgid, signal.SIGTERM)
    assert sent == []
