"""Issue 3's measurement: the reference job's throughput under the daemon against run bare,
and the daemon's own CPU share and RSS while it supervises.

    .venv/bin/python bench/supervise_bench.py [--steps 600] [--rounds 2]

Runs bare and supervised alternately (ABAB...) so a drift in the machine's speed hits both.
Throughput is the job's steady-state steps/s from its own progress.jsonl (first to last
progress record), so interpreter start-up is excluded from both sides equally. The daemon runs
with its real parts: sensors (auto), reset sources (auto), the HTTP API, polling every 2 s.
Goals: ratio >= 0.99, daemon CPU < 1% of one core, daemon RSS < 80 MB.
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


def job_args(steps: int) -> list[str]:
    return [sys.executable, "-m", "trainer.reference", "--steps", str(steps), "--device", "cpu"]


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


def run_supervised(steps: int) -> tuple[float, float, float]:
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
        time.sleep(2.0)  # past start-up: measure the supervising, not the imports
        c0, t0 = proc.cpu_times(), time.monotonic()
        rss = []
        while d.poll() is None:
            try:
                rss.append(proc.memory_info().rss)
                c1, t1 = proc.cpu_times(), time.monotonic()
            except psutil.NoSuchProcess:
                break
            time.sleep(0.5)
        cpu = ((c1.user + c1.system) - (c0.user + c0.system)) / (t1 - t0)
        assert d.returncode == 0, f"daemon exited {d.returncode}"
        return steady_rate(tmp / "state" / "runs" / "1" / "progress.jsonl"), cpu, max(rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "supervise.json"))
    a = ap.parse_args()
    bare, sup, cpu, rss = [], [], [], []
    for i in range(a.rounds):
        bare.append(run_bare(a.steps))
        s, c, r = run_supervised(a.steps)
        sup.append(s), cpu.append(c), rss.append(r)
        print(f"round {i + 1}: bare {bare[-1]:.2f} steps/s, supervised {s:.2f} steps/s, "
              f"daemon cpu {100 * c:.2f}% of a core, rss {r / 2**20:.1f} MB", flush=True)
    res = {
        "steps": a.steps, "rounds": a.rounds,
        "bare_steps_per_s": statistics.median(bare), "supervised_steps_per_s": statistics.median(sup),
        "ratio": statistics.median(sup) / statistics.median(bare),
        "daemon_cpu_pct_of_core": 100 * max(cpu), "daemon_rss_mb": max(rss) / 2**20,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"throughput supervised/bare: {res['ratio']:.3f} (goal >= 0.99)")
    print(f"daemon CPU: {res['daemon_cpu_pct_of_core']:.2f}% of one core (goal < 1%)")
    print(f"daemon RSS: {res['daemon_rss_mb']:.1f} MB (goal < 80 MB)")


if __name__ == "__main__":
    main()
