"""Issue 3's measurement: the reference job's throughput under the daemon against run bare,
and the daemon's own CPU share and RSS while it supervises.

    .venv/bin/python bench/supervise_bench.py [--steps 600] [--pairs 5] [--tiny]

Runs bare and supervised alternately (ABAB...) so a drift in the machine's speed hits both.
Throughput is the job's steady-state steps/s from its own progress.jsonl (first to last
progress record), so interpreter start-up is excluded from both sides equally. The daemon runs
with its real parts: sensors (auto), reset sources (auto), the HTTP API, polling every 2 s.
Goals (issue 30): supervised/bare >= 0.99 as the median of the pairs' ratios (at least 5
pairs), daemon CPU < 0.5% of one core, daemon RSS < 80 MB.

The daemon's CPU is measured from the job's first progress record to the job's exit: the
supervising. The same figure to the daemon's exit is reported beside it: it adds the run's end
and the daemon's own exit, once-a-night costs (Python's teardown of the daemon's modules alone
is ~0.1 s of CPU, measured on this box) that weigh 0.3-0.5% of a core in a 20-40 s run. ``--tiny`` trains the demo's small
model (one layer, d_model 32, one thread): on a machine shared with other work the default
model can run at a few steps per second, too slow for 10 runs; the daemon's own cost does not
depend on the job's size (it ticks on time, and progress records come at most twice a second).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import free_port, write_config  # noqa: E402

TINY = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ctx", "32", "--batch", "8",
        "--threads", "1"]
TINY_JOB = False  # --tiny


def job_args(steps: int) -> list[str]:
    return [sys.executable, "-m", "trainer.reference", "--steps", str(steps), "--device", "cpu",
            *(TINY if TINY_JOB else [])]


def steady_rate(progress: Path) -> float:
    recs = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    prog = [r for r in recs if r.get("kind") == "progress"]
    a, b = prog[len(prog) // 10], prog[-1]  # skip the first 10%: warm-up
    return (b["step"] - a["step"]) / (b["t"] - a["t"])


def run_bare(steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "NIGHTSHIFT_RUN_DIR": tmp, "NIGHTSHIFT_CHECKPOINT_DIR": f"{tmp}/ckpt",
               "NIGHTSHIFT_RESUME": ""}
        subprocess.run(job_args(steps), cwd=ROOT, env=env, check=True, capture_output=True)
        return steady_rate(Path(tmp) / "progress.jsonl")


def run_supervised(steps: int) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        cfg = write_config(tmp, {
            "job": {"command": job_args(steps), "heartbeat_timeout_s": 120.0},
            "gpu": {"sensor": "auto", "poll_interval_s": 2.0},
            "resets": {"sources": ["auto"]},
            "api": {"enabled": True, "port": free_port()},
        })
        d = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "-c", str(cfg)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = psutil.Process(d.pid)
        # Past start-up: measure the supervising, not the imports. The job's first progress
        # record comes after the daemon has imported and started everything, the API included
        # (a fixed 2 s was not enough on a loaded machine: the API's import fell inside).
        progress = tmp / "state" / "runs" / "1" / "progress.jsonl"
        deadline = time.monotonic() + 300
        while not (progress.exists() and '"progress"' in progress.read_text()):
            assert d.poll() is None, f"daemon exited {d.returncode} before the job trained"
            assert time.monotonic() < deadline, "the job wrote no progress record in 300 s"
            time.sleep(0.1)
        c0, t0 = proc.cpu_times(), time.monotonic()
        jobs = proc.children()  # the job: while it lives, the daemon is supervising
        rss = []
        c_job = t_job = None
        while d.poll() is None:
            try:
                rss.append(proc.memory_info().rss)
                c1, t1 = proc.cpu_times(), time.monotonic()
            except psutil.NoSuchProcess:
                break
            if c_job is None and not any(j.is_running() and j.status() != psutil.STATUS_ZOMBIE
                                         for j in jobs):
                c_job, t_job = c1, t1  # the job has ended: what follows is the run's end
            time.sleep(0.1)
        cpu = ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0)
        if c_job is None or t_job is None or t_job <= t0:
            c_job, t_job = c1, t1
        sup_cpu = ((c_job.user + c_job.system) - (c0.user + c0.system)) / (t_job - t0)
        assert d.returncode == 0, f"daemon exited {d.returncode}"
        return steady_rate(tmp / "state" / "runs" / "1" / "progress.jsonl"), sup_cpu, cpu, max(rss)


def main() -> None:
    global TINY_JOB
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--pairs", "--rounds", type=int, default=5, help="ABAB pairs (at least 5)")
    ap.add_argument("--tiny", action="store_true", help="the demo's small model (see above)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "supervise.json"))
    a = ap.parse_args()
    TINY_JOB = a.tiny
    load_before = os.getloadavg()
    bare, sup, cpu, cpu_exit, rss = [], [], [], [], []
    for i in range(a.pairs):
        bare.append(run_bare(a.steps))
        s, c, ce, r = run_supervised(a.steps)
        sup.append(s), cpu.append(c), cpu_exit.append(ce), rss.append(r)
        print(f"pair {i + 1}: bare {bare[-1]:.2f} steps/s, supervised {s:.2f} steps/s "
              f"({s / bare[-1]:.3f}), daemon cpu {100 * c:.2f}% of a core while the job ran "
              f"({100 * ce:.2f}% to the daemon's exit), rss {r / 2**20:.1f} MB, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    ratios = [s / b for s, b in zip(sup, bare, strict=True)]
    res = {
        "steps": a.steps, "pairs": a.pairs, "tiny": a.tiny,
        "bare_steps_per_s": statistics.median(bare), "supervised_steps_per_s": statistics.median(sup),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "per_pair": [{"bare": b, "supervised": s, "ratio": r, "daemon_cpu_pct": 100 * c,
                      "daemon_cpu_pct_to_exit": 100 * ce, "daemon_rss_mb": m / 2**20}
                     for b, s, r, c, ce, m in zip(bare, sup, ratios, cpu, cpu_exit, rss,
                                                  strict=True)],
        "daemon_cpu_pct_of_core": 100 * statistics.median(cpu),
        "daemon_cpu_pct_max": 100 * max(cpu),
        "daemon_cpu_pct_to_exit": 100 * statistics.median(cpu_exit),
        "daemon_rss_mb": max(rss) / 2**20,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"throughput supervised/bare: median of {a.pairs} pairs {res['ratio']:.3f} "
          f"({res['ratio_min']:.3f}-{res['ratio_max']:.3f}) (goal >= 0.99)")
    print(f"daemon CPU while the job ran: median {res['daemon_cpu_pct_of_core']:.2f}%, max "
          f"{res['daemon_cpu_pct_max']:.2f}% of one core (goal < 0.5%); to the daemon's exit "
          f"(the run's end and the interpreter's teardown too): median "
          f"{res['daemon_cpu_pct_to_exit']:.2f}%")
    print(f"daemon RSS: {res['daemon_rss_mb']:.1f} MB (goal < 80 MB)")
    print(f"load average before {load_before}, after {res['load_average_after']}")


if __name__ == "__main__":
    main()
