"""The daemon's own CPU while it supervises, as CPU seconds per wall second, for one or more
code trees run in turn (ABAB...), so a before/after comparison shares the machine's drift.

    .venv/bin/python bench/daemon_cpu.py [--trees DIR ...] [--rounds 3] [--seconds 60]
        [--profile OUT.prof]

Each run starts the real daemon (``python -m daemon.cli run``, cwd and PYTHONPATH the tree)
with supervise_bench.py's parts: sensors and reset sources ``auto``, the HTTP API, polling every
2 s, supervising the reference job's tiny model paced at ``--pace`` steps/s (a paced job keeps
writing progress and checkpoints for the whole window and leaves the CPU to the daemon's
neighbours). From the job's first progress record, ``--seconds`` of wall time; the daemon's
utime+stime from /proc/<pid>/stat at both ends (all its threads). CPU time consumed is what
this measures, so a loaded machine slows the job but does not inflate the figure much.
``--cooling``: the job held for the whole window, COOLING (the simulated GPU, ``pause_at_c``
below its idle temperature so it never cools enough to resume); the window starts 2 s after the
daemon's ``paused_hot`` event (read from its store, read-only). The job is paused at the first
poll, before it has announced the control protocol, so it is held by SIGSTOP. What the daemon
costs while a job waits for the chip.
``--profile`` runs the daemon under cProfile (its main thread, the loop) from the window's start
to its exit and writes the stats.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.procstat import cpu_s, threads_s  # noqa: E402
from tests.helpers import free_port, write_config  # noqa: E402

TINY = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ctx", "32", "--batch", "8",
        "--threads", "1"]
THREADS = False  # --threads
TO_EXIT = 0  # --to-exit STEPS
COOLING = False  # --cooling


# The daemon under cProfile from SIGUSR2 (the window's start) to its exit: what it does while
# it supervises, without its start-up.
PROFILED = """
import atexit, cProfile, signal, sys
prof = cProfile.Profile()
signal.signal(signal.SIGUSR2, lambda *_: prof.enable())
cfg, out = sys.argv[1:3]
atexit.register(lambda: (prof.disable(), prof.dump_stats(out)))
sys.argv = ["nightshift", "run", "-c", cfg]
from daemon.cli import main
main()
"""


def _paused(tmp: Path) -> bool:
    """The daemon said it paused the job for heat (its store, opened read-only)."""
    db = tmp / "state" / "nightshift.db"
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return con.execute("SELECT 1 FROM events WHERE kind='paused_hot' LIMIT 1").fetchone() is not None
        finally:
            con.close()
    except sqlite3.Error:
        return False  # not created yet


def one_run(tree: Path, seconds: float, pace: float, profile: str | None) -> float:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if TO_EXIT:  # supervise_bench.py's run: unpaced, measured until the daemon exits
            job = [sys.executable, "-m", "trainer.reference", "--steps", str(TO_EXIT), "--device",
                   "cpu", *TINY]
        else:
            steps = int(pace * (seconds + 600))  # still training when the window ends
            job = [sys.executable, "-m", "trainer.reference", "--steps", str(steps), "--device",
                   "cpu", "--max-steps-per-s", str(pace), *TINY]
        cfg = write_config(tmp, {
            "job": {"command": job, "workdir": str(tree), "checkpoint_dir": str(tmp / "ckpt"),
                    "heartbeat_timeout_s": 120.0},
            "gpu": {"sensor": "auto", "poll_interval_s": 2.0},
            "resets": {"sources": ["auto"]},
            "api": {"enabled": True, "port": free_port()},
            **({"gpu": {"sensor": "simulated", "poll_interval_s": 2.0},  # idles at 40 C
                "thermal": {"pause_at_c": 35.0, "resume_at_c": 30.0, "min_cooldown_s": 0.0,
                            "max_cooldown_s": 86400.0}} if COOLING else {}),
        })
        env = {**os.environ, "PYTHONPATH": str(tree)}
        cmd = ["-c", PROFILED, str(cfg), profile] if profile else ["-m", "daemon.cli", "run", "-c",
                                                                    str(cfg)]
        d = subprocess.Popen([sys.executable, *cmd], cwd=tree, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            progress = tmp / "state" / "runs" / "1" / "progress.jsonl"
            deadline = time.monotonic() + 300
            while not (_paused(tmp) if COOLING else progress.exists() and '"progress"' in progress.read_text()):
                assert d.poll() is None, f"daemon exited {d.returncode} before the job trained"
                assert time.monotonic() < deadline, "the job wrote no progress record in 300 s"
                time.sleep(0.2)
            if COOLING:
                time.sleep(2.0)  # the pause's own ticks (the hold, its events) are over
            if profile:
                d.send_signal(signal.SIGUSR2)  # the window starts: profile from here
            c0, t0, th0 = cpu_s(d.pid), time.monotonic(), threads_s(d.pid)
            if TO_EXIT:
                while True:  # the last sample before the exit (a reaped pid has no /proc)
                    try:
                        c1, t1, th1 = cpu_s(d.pid), time.monotonic(), threads_s(d.pid)
                    except OSError:
                        break
                    if d.poll() is not None:
                        break
                    time.sleep(0.2)
            else:
                time.sleep(seconds)
                c1, t1, th1 = cpu_s(d.pid), time.monotonic(), threads_s(d.pid)
                assert d.poll() is None, f"daemon exited {d.returncode} inside the window"
        finally:
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)
            d.wait(60)
        if THREADS:
            print("  per thread, % of a core: " + ", ".join(
                f"{k}: {100 * (v - th0.get(k, 0.0)) / (t1 - t0):.3f}" for k, v in th1.items()))
        return (c1 - c0) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", nargs="+", default=[str(ROOT)], help="code trees, run in turn")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--pace", type=float, default=25.0, help="the job's steps/s")
    ap.add_argument("--profile", help="cProfile the daemon (one tree, one round)")
    ap.add_argument("--out", help="append the result as one JSON line")
    ap.add_argument("--to-exit", type=int, default=0, metavar="STEPS",
                    help="supervise_bench.py's window instead: an unpaced job of STEPS steps, "
                    "measured from its first progress record until the daemon exits")
    ap.add_argument("--threads", action="store_true", help="also each thread's share")
    ap.add_argument("--cooling", action="store_true", help="the job held, COOLING, all window")
    a = ap.parse_args()
    global THREADS, TO_EXIT, COOLING
    THREADS, TO_EXIT, COOLING = a.threads, a.to_exit, a.cooling
    res: dict[str, list[float]] = {t: [] for t in a.trees}
    load = [os.getloadavg()]
    for r in range(a.rounds):
        for t in a.trees:
            share = one_run(Path(t).resolve(), a.seconds, a.pace, a.profile)
            res[t].append(share)
            load.append(os.getloadavg())
            print(f"round {r + 1} {t}: {100 * share:.3f}% of a core "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    for t, v in res.items():
        print(f"{t}: median {100 * statistics.median(v):.3f}% of a core "
              f"({', '.join(f'{100 * x:.3f}' for x in v)})")
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(json.dumps({"seconds": a.seconds, "pace": a.pace, "cooling": a.cooling,
                                 "cpu_share": res, "load": load}) + "\n")


if __name__ == "__main__":
    main()
