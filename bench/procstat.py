"""CPU time of a process from /proc, for the benchmarks (daemon_cpu.py, supervise_bench.py).

CPU time consumed is what a shared machine leaves intact: neighbours stretch a job's wall time,
not (much) the CPU seconds each step costs it. ``cpu_s`` reads utime + stime of every thread
from ``/proc/<pid>/stat``; ``CpuSampler`` follows a process while it runs (a reaped pid has no
/proc entry, so its last sample is the figure) and answers "how much CPU had it used at wall
time t", to match the job's own progress records (wall-clock ``t``). ``pinned`` runs a command
on one CPU (``os.sched_setaffinity`` before exec: the pid is the command's own).
"""

from __future__ import annotations

import bisect
import os
import sys
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | str) -> float:
    """utime + stime of the whole process (every thread), in seconds. OSError once it is gone."""
    # the command name (field 2) may hold spaces and ")": the fields after the last ")" are fixed
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def threads_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread (by tid and name)."""
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (t / "comm").read_text().strip()
            out[f"{t.name} {name}"] = cpu_s(f"{pid}/task/{t.name}")
        except OSError:
            pass
    return out


def pinned(command: list[str], cpu: int | None) -> list[str]:
    """``command`` run on ``cpu`` alone (None: as it is). A Python shim sets the affinity and
    execs the command, so the pid a caller sees (the daemon's job pid, Popen's) is the job's."""
    if cpu is None:
        return command
    shim = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); os.execvp(sys.argv[2], sys.argv[2:])"
    return [sys.executable, "-c", shim, str(cpu), *command]


class CpuSampler:
    """(wall time, CPU seconds) of one process every ``every_s`` on a thread, until it is gone
    or ``stop()``."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                c = cpu_s(self.pid)
            except (OSError, IndexError, ValueError):
                return  # gone (or reaped mid-read)
            self.samples.append((time.time(), c))
            self._stop.wait(self.every_s)

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def cpu_at(samples: list[tuple[float, float]], t: float) -> float | None:
    """CPU seconds used by wall time ``t``, linear between samples; clamped to the first and
    last sample (a record written after the last sample: at most ``every_s`` of CPU short).
    None without samples."""
    if not samples:
        return None
    times = [s[0] for s in samples]
    i = bisect.bisect_left(times, t)
    if i == 0:
        return samples[0][1]
    if i == len(samples):
        return samples[-1][1]
    (t0, c0), (t1, c1) = samples[i - 1], samples[i]
    return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
