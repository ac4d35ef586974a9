"""Issue 29 (1): is the ETA right? The ETA shown at a third and at two thirds of a run's wall
time, against the time the rest really took (error = shown / taken - 1; goal: within 15%).

Two kinds of run, both the real daemon with the reference job on the simulated GPU:
- ``demo``: `nightshift demo --long` (1500 steps paced at 10/s, thermal pauses every ~10 s,
  two injected GPU resets at 35% and 70% of the steps), read from the demo's summary.json;
- ``night``: a replayed night (bench/night_replay.py's profiles and scaling, ``--scale`` 600
  simulated s per real s, ``--k`` story steps per real step), local only (no offload, no
  deadline), ``nightshift run`` with its API polled every 0.5 s for ``eta_s``.

    .venv/bin/python bench/eta_bench.py [--demo-runs 1] [--nights thermal,firmware] [--seed 1]

"Taken" runs to the run's end, its ``succeeded`` event (the job's last step, final checkpoint
and exit), not to the daemon's own shutdown after it (``exit_when_done``; ``daemon_exit_s``).
Writes bench/results/eta.json (``--out``) and prints one line per check.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from night_replay import LOCAL_RATE, PROFILES, STORY_CKPT, STORY_STEPS, job_cmd  # noqa: E402

from daemon.commands.demo import eta_check  # noqa: E402
from tests.helpers import free_port, write_config  # noqa: E402


def run_demo() -> dict:
    with tempfile.TemporaryDirectory(prefix="eta-bench-") as work:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "daemon.cli", "demo", "--long", "--workdir", work],
                           cwd=ROOT, capture_output=True, text=True, timeout=1800)
        wall = time.monotonic() - t0
        summary = json.loads((Path(work) / "summary.json").read_text())
    return {"kind": "demo --long", "exit": r.returncode, "wall_s": round(wall, 1),
            "load_before": None, "checks": summary.get("eta_check") or []}


class StatusSampler:
    """(elapsed s, step, eta_s) from GET /status every ``poll_s`` while the daemon lives."""

    def __init__(self, port: int, poll_s: float = 0.5):
        self.url = f"http://127.0.0.1:{port}/status?format=json"
        self.poll_s, self.samples, self.t0 = poll_s, [], time.monotonic()
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.wait(self.poll_s):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    st = json.loads(r.read())
            except (OSError, ValueError):
                continue
            if st.get("eta_s") is not None and st.get("step"):
                self.samples.append((time.monotonic() - self.t0, st["step"], float(st["eta_s"])))


def run_night(profile: str, a: argparse.Namespace) -> dict:
    S = a.scale
    steps = STORY_STEPS // a.k
    with tempfile.TemporaryDirectory(prefix="eta-night-") as tmp_s:
        tmp = Path(tmp_s)
        port = free_port()
        cfg = write_config(tmp, {
            "job": {"command": job_cmd(steps), "heartbeat_timeout_s": 60.0, "restart_backoff_s": 0.2,
                    "env": {"NIGHTSHIFT_MAX_STEPS_PER_S": f"{LOCAL_RATE * S / a.k:.3f}"}},
            "gpu": {"sensor": "simulated", "poll_interval_s": 0.25,
                    "simulated": PROFILES[profile] | {"time_scale": S, "seed": float(a.seed)}},
            "thermal": {"pause_at_c": 88.0, "resume_at_c": 75.0, "min_cooldown_s": 120 / S,
                        "max_cooldown_s": 1800 / S},
            "resets": {"sources": ["auto"], "cooldown_s": 60 / S, "probe": True,
                       "window_s": 3 * 3600 / S, "offload_after": 1000, "probe_timeout_s": 30.0},
            "checkpoint": {"interval": max(1, round(STORY_CKPT / a.k))},
            "daemon": {"exit_when_done": True},
            "api": {"enabled": True, "host": "127.0.0.1", "port": port},
        })
        sampler = StatusSampler(port)
        t0_wall = time.time()
        r = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "-c", str(cfg)], cwd=ROOT,
                           capture_output=True, text=True, timeout=a.timeout)
        exited = time.monotonic() - sampler.t0
        sampler.stop.set()
        # the run's end is its "succeeded" event (what the ETA predicts), not the daemon's exit
        con = sqlite3.connect(tmp / "state" / "nightshift.db")
        row = con.execute("SELECT t FROM events WHERE kind='state' AND message LIKE '% -> succeeded:%' "
                          "ORDER BY id DESC LIMIT 1").fetchone()
        con.close()
        end = row[0] - t0_wall if row else exited
    return {"kind": f"night {profile}", "exit": r.returncode, "wall_s": round(end, 1),
            "daemon_exit_s": round(exited, 1),
            "checks": eta_check(sampler.samples, end),
            "samples": [[round(t, 1), step, round(e)] for t, step, e in sampler.samples]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-runs", type=int, default=1, help="how many `demo --long` runs")
    ap.add_argument("--nights", default="thermal,firmware", help="replayed-night profiles ('' for none)")
    ap.add_argument("--scale", type=float, default=600.0, help="simulated seconds per real second")
    ap.add_argument("--k", type=int, default=200, help="story steps per real step")
    ap.add_argument("--seed", type=int, default=1, help="the simulated GPU's seed")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is abandoned")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eta.json"), help="results file")
    a = ap.parse_args()
    rows = []
    for _ in range(a.demo_runs):
        rows.append(run_demo() | {"load_before": round(os.getloadavg()[0], 1)})
        print(json.dumps(rows[-1]), flush=True)
    for profile in [p for p in a.nights.split(",") if p]:
        rows.append(run_night(profile, a) | {"load_before": round(os.getloadavg()[0], 1)})
        print(json.dumps(rows[-1]), flush=True)
    Path(a.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))
    for r in rows:
        for c in r["checks"]:
            print(f"{r['kind']:<16} at {c['at_s']:>5.0f} s of {r['wall_s']:.0f} s: "
                  f"{c['shown_s']:.0f} s shown, {c['took_s']:.0f} s taken ({c['error']:+.0%})")


if __name__ == "__main__":
    main()
