"""Issue 5's measurement, on the simulated GPU with the real daemon and the reference job:

1. pause latency: from the threshold crossing (the first poll that saw edge >= pause_at_c, or
   the trend decision that came before it) to the job held (its "held" record: checkpoint
   durable, device idle). Goal: one poll interval plus one step.
2. recovery latency: from a reset (the first source that saw it) to the job running again
   (its first progress record after the restart), with the configured cooldown subtracted.
   Goal: 5 s plus the job's load time (interpreter + torch import + checkpoint restore, also
   reported on its own).

    .venv/bin/python bench/thermal_bench.py [--poll 1.0] [--resets 3]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import write_config  # noqa: E402


def records(run_dir: Path) -> list[dict]:
    p = run_dir / "progress.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--cooldown", type=float, default=2.0)
    ap.add_argument("--resets", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "thermal.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        cfg = write_config(tmp, {
            "job": {"command": [sys.executable, "-m", "trainer.reference", "--steps", str(a.steps),
                                "--d-model", "64", "--layers", "2", "--ctx", "32", "--batch", "16"],
                    "heartbeat_timeout_s": 60.0},
            "gpu": {"sensor": "simulated", "poll_interval_s": a.poll,
                    "simulated": {"time_scale": 60.0, "ambient_c": 45.0, "load_c": 60.0,
                                  "tau_heat_s": 300.0, "tau_cool_s": 150.0, "reset_at_c": 99.0,
                                  "reset_after_s": 600.0, "reset_duration_s": 30.0}},
            "thermal": {"pause_at_c": 88.0, "resume_at_c": 72.0, "min_cooldown_s": 2.0,
                        "max_cooldown_s": 60.0, "trend": False},
            "resets": {"sources": ["auto"], "cooldown_s": a.cooldown, "probe": True, "offload_after": 99},
            "checkpoint": {"interval": 50},
        })
        run_dir = tmp / "state" / "runs" / "1"
        d = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "-c", str(cfg)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def injector() -> None:  # a reset at evenly spaced steps, while running
            marks = [int(a.steps * (i + 1) / (a.resets + 1)) for i in range(a.resets)]
            while d.poll() is None and marks:
                steps = [r.get("step") or 0 for r in records(run_dir) if r["kind"] == "progress"]
                if steps and steps[-1] >= marks[0]:
                    (tmp / "state" / "simgpu" / "inject_reset").touch()
                    marks.pop(0)
                time.sleep(0.1)
        th = threading.Thread(target=injector, daemon=True)
        th.start()
        d.wait(timeout=1800)
        con = sqlite3.connect(tmp / "state" / "nightshift.db")
        con.row_factory = sqlite3.Row
        readings = [(r["t"], r["edge_c"]) for r in con.execute("SELECT t, edge_c FROM readings ORDER BY t")]
        events = [dict(r) for r in con.execute("SELECT t, kind, message FROM events ORDER BY id")]
        resets = [r["t"] for r in con.execute("SELECT t FROM resets ORDER BY t")]
        recs = records(run_dir)

    pauses = []
    for ev in (e for e in events if e["kind"] == "paused_hot"):
        # The chip crossed 88 C between the last reading below it and the first at or above it:
        # interpolate, so the latency includes the wait for the next poll.
        known = [(t, c) for t, c in readings if c is not None and t <= ev["t"] + 0.05]
        i = max(j for j, (t, c) in enumerate(known) if c >= 88.0) if any(c >= 88.0 for _, c in known) else None
        while i is not None and i > 0 and known[i - 1][1] >= 88.0:
            i -= 1
        if i is None or i == 0:
            continue
        (t0, c0), (t1, c1) = known[i - 1], known[i]
        cross = t0 + (88.0 - c0) / (c1 - c0) * (t1 - t0)
        held = next((r["t"] for r in recs if r["kind"] == "held" and r["t"] >= ev["t"]), None)
        if held:
            pauses.append(held - cross)
    step_s = None
    prog = [r for r in recs if r["kind"] == "progress" and r.get("steps_per_s")]
    if prog:
        step_s = 1.0 / statistics.median(r["steps_per_s"] for r in prog)
    recoveries, loads = [], []
    for rt in resets:
        start = next((r["t"] for r in recs if r["kind"] == "start" and r["t"] > rt), None)
        first = next((r["t"] for r in recs if r["kind"] == "progress" and start and r["t"] > start), None)
        launched = next((e["t"] for e in events if e["kind"] == "state" and "-> running" in e["message"]
                         and e["t"] > rt), None)
        if first and launched:
            recoveries.append(first - rt - a.cooldown)
            loads.append(first - launched)
    res = {
        "poll_interval_s": a.poll, "step_s": step_s,
        "pause_latency_s": {"n": len(pauses), "median": statistics.median(pauses) if pauses else None,
                            "max": max(pauses) if pauses else None},
        "pause_goal_s": a.poll + (step_s or 0),
        "recovery_latency_minus_cooldown_s": {"n": len(recoveries),
                                              "median": statistics.median(recoveries) if recoveries else None,
                                              "max": max(recoveries) if recoveries else None},
        "job_load_time_s": statistics.median(loads) if loads else None,
    }
    res["recovery_overhead_beyond_load_s"] = (res["recovery_latency_minus_cooldown_s"]["median"] - res["job_load_time_s"]
                                              if recoveries and loads else None)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
