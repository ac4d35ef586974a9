"""Issue 9: replay a night, time-compressed, on the simulated GPU with the real daemon and the
reference job, against the watchdog-script baseline, on two fault profiles.

    .venv/bin/python bench/night_replay.py [--scale 600] [--k 50] [--seed 1]

Scaling. ``--scale`` S simulated seconds pass per real second (S=600: a real second is ten
simulated minutes). One real training step stands for ``--k`` story steps, so the story's
50,000 steps are 50,000/k real steps, its local rate (0.56 steps/s) is 0.56*S/k real steps/s
and the cloud's (6.9 steps/s) 6.9*S/k. Checkpoints "every 500 steps" are every 500/k real
steps. Cloud prices are multiplied by S so real seconds cost what the simulated time would.
All reported times are simulated (real x S).

Profiles (the simulated GPU's parameters, simulated seconds):
- thermal: the chip heats under load and resets after about 60-90 minutes of sustained load
  (reaches 95 C after ~45 min, resets after 20 more minutes above it);
- firmware: resets at random times at normal temperatures (the 780M's MES hang), ~1.4/hour.

Policies, same profiles and seeds:
- baseline: bench/watchdog_baseline.py — after a death sleep 15 minutes, restart, resume from
  the last checkpoint (every 500 story steps); no temperature watching, no cloud;
- nightshiftd: the real daemon with thermal pausing, reset recovery, the auto checkpoint
  interval, and failover to the local backend standing in for the A100 (throttled to the
  A100's scaled rate), an 8-hour deadline and the story's budget;
- nightshiftd-no-deadline: the same without the deadline, so failover comes only from the
  resets themselves (shows the firmware diagnosis driving it);
- nightshiftd-governor (issue 20): no deadline, local only (no offload backend), pausing as
  the safety net and ``[thermal] governor = "clock"``: the daemon's own Supervisor runs the
  governor (daemon/policy/governor.py) every poll and writes the cap through the simulated
  GPU's pp_od_clk_voltage like on hardware; the row's ``learned_mhz`` is what the daemon
  remembered for the next night (its store's memory table);
- sweep (the oracle for this model): the same daemon, no governor, the simulated GPU's clock
  fixed at each of ``--sweep`` MHz (rows ``nightshiftd-fixed-<MHz>``).
Every row reports ``mean_clock_mhz``: the chip's clock averaged over the polls it was busy.
Writes bench/results/night_replay.json (``--out``) and prints a Markdown table for the README.
``--keep`` starts from the rows already in ``--out`` and re-runs only the policies asked for
(a long sweep can be finished in parts); every row records the command that produced it.

Known distortion: a job restart costs the real interpreter + torch import (~2-3 s real), which
the compression turns into 20-30 simulated minutes, for every policy alike (a real ROCm
restart with model load is ~1 minute).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from daemon.gpu.simgpu import SimulatedGPU  # noqa: E402
from tests.helpers import write_config  # noqa: E402

STORY_STEPS, LOCAL_RATE, CLOUD_RATE, STORY_CKPT, PRICE_A100 = 50_000, 0.56, 6.9, 500, 2.10
PROFILES = {
    "thermal": {"ambient_c": 45.0, "load_c": 55.0, "tau_heat_s": 1200.0, "tau_cool_s": 600.0,
                "reset_at_c": 95.0, "reset_after_s": 1200.0, "reset_duration_s": 120.0},
    "firmware": {"ambient_c": 40.0, "load_c": 25.0, "tau_heat_s": 1200.0, "tau_cool_s": 600.0,
                 "reset_at_c": 99.0, "reset_after_s": 1e9, "reset_rate_per_h": 1.4,
                 "reset_duration_s": 120.0},
}
MODEL = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ctx", "16", "--batch", "8",
         "--eval-every", "100000"]


def job_cmd(steps: int) -> list[str]:
    # the rate cap comes from NIGHTSHIFT_MAX_STEPS_PER_S, so the cloud run can go faster
    return [sys.executable, "-m", "trainer.reference", "--steps", str(steps), *MODEL]


def progress(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


class ClockSampler:
    """Polls the simulated GPU tree's freq1_input/gpu_busy_percent: mean clock while busy."""

    def __init__(self, root: Path, poll_s: float = 0.25):
        self.root, self.poll_s, self.samples = root, poll_s, []
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        dev = self.root / "class" / "drm" / "card0" / "device"
        while not self.stop.wait(self.poll_s):
            try:
                busy = float((dev / "gpu_busy_percent").read_text())
                mhz = float((dev / "hwmon" / "hwmon3" / "freq1_input").read_text()) / 1e6
            except (OSError, ValueError):
                continue
            if busy > 0:
                self.samples.append(mhz)

    def mean(self) -> float | None:
        self.stop.set()
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def run_baseline(profile: str, a: argparse.Namespace, steps: int, local_rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        sim = SimulatedGPU(tmp / "sim", PROFILES[profile] | {"time_scale": a.scale, "seed": a.seed})
        env = {**os.environ, "NIGHTSHIFT_RUN_DIR": str(tmp / "run"), "NIGHTSHIFT_CHECKPOINT_DIR": str(tmp / "ckpt"),
               "NIGHTSHIFT_SIM_GPU": str(sim.root), "NIGHTSHIFT_MAX_STEPS_PER_S": f"{local_rate:.3f}",
               "NIGHTSHIFT_CHECKPOINT_INTERVAL": str(max(1, round(STORY_CKPT / a.k)))}
        sim.start()
        sampler = ClockSampler(sim.root)
        t0 = time.time()
        p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "watchdog_baseline.py"),
                              "--sleep-s", f"{15 * 60 / a.scale:.3f}", "--", *job_cmd(steps)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)

        def follow() -> None:  # the sim kills the job it sees; the wrapper restarts it
            while p.poll() is None:
                recs = progress(tmp / "run" / "progress.jsonl")
                pid = next((r["pid"] for r in reversed(recs) if r["kind"] == "start"), None)
                if pid:
                    sim.attach_job(pid)
                time.sleep(0.2)
        threading.Thread(target=follow, daemon=True).start()
        out, _ = p.communicate(timeout=a.timeout)
        wall = time.time() - t0
        sim.stop()
        recs = progress(tmp / "run" / "progress.jsonl")
        return summarize(recs, wall, a, resets=sim.resets, cloud_s=0.0, cost=0.0,
                         extra={"causes": sorted(set(sim.reset_causes)), "mean_clock_mhz": sampler.mean()})


def summarize(recs: list[dict], wall: float, a: argparse.Namespace, *, resets: int, cloud_s: float,
              cost: float, extra: dict, remote: list[dict] | None = None) -> dict:
    starts = [r for r in recs if r["kind"] == "start"]
    lost, max_step = 0, 0
    for r in recs:
        if r["kind"] == "start":
            lost += max(0, max_step - r["step"])
            max_step = r["step"]
        elif r.get("step") is not None and r["kind"] in ("progress", "checkpoint", "held"):
            max_step = max(max_step, r["step"])
    final = max((r.get("step") or 0 for r in recs + (remote or [])), default=0)
    # Useful step time: each kept step at the speed of the device that ran it.
    remote_start = next((r["step"] for r in (remote or []) if r["kind"] == "start"), None)
    local_kept = final if remote_start is None else remote_start
    cloud_steps = 0 if remote_start is None else final - remote_start
    useful_s = local_kept / (LOCAL_RATE * a.scale / a.k) + cloud_steps / (CLOUD_RATE * a.scale / a.k)
    return {
        "finished": any(r["kind"] == "done" for r in recs) or extra.pop("finished", False),
        "time_h": wall * a.scale / 3600, "resets": resets, "restarts": max(0, len(starts) - 1),
        "steps_lost_story": lost * a.k, "steps_lost_per_reset_story": (lost * a.k / resets) if resets else 0.0,
        "goodput": min(1.0, useful_s / wall) if wall else None,
        "cloud_h": cloud_s * a.scale / 3600, "cost_usd": cost, **extra,
    }


def run_daemon(profile: str, a: argparse.Namespace, steps: int, local_rate: float, cloud_rate: float,
               deadline: bool, *, clock_mhz: float = 0.0, governor: bool = False,
               offload: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        S = a.scale
        sched = {"deadline_after_s": 8 * 3600 / S} if deadline else {}
        thermal = {"pause_at_c": 88.0, "resume_at_c": 75.0, "min_cooldown_s": 120 / S,
                   "max_cooldown_s": 1800 / S}
        cfg = write_config(tmp, {
            "job": {"command": job_cmd(steps), "heartbeat_timeout_s": 60.0,
                    "restart_backoff_s": 0.2, "env": {"NIGHTSHIFT_MAX_STEPS_PER_S": f"{local_rate:.3f}"}},
            "gpu": {"sensor": "simulated", "poll_interval_s": 0.25,
                    "simulated": PROFILES[profile] | {"time_scale": S, "seed": float(a.seed),
                                                      "clock_mhz": clock_mhz}},
            "thermal": thermal | ({"governor": "clock"} if governor else {}),
            "resets": {"sources": ["auto"], "cooldown_s": 60 / S, "probe": True, "window_s": 3 * 3600 / S,
                       "offload_after": 3, "probe_timeout_s": 30.0},
            "checkpoint": {"interval": "auto"},
            "schedule": sched,
            "offload": {"backend": "local" if offload else "none", "gpu": "A100-40GB", "budget_usd": 6.0,
                        "prices_usd_per_h": {"A100-40GB": PRICE_A100 * S},
                        "local_dir": str(tmp / "volume"), "local_steps_per_s": cloud_rate},
        })
        sim_root = tmp / "state" / "simgpu"
        sampler = ClockSampler(sim_root)
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "-c", str(cfg)], cwd=ROOT,
                           capture_output=True, text=True, timeout=a.timeout)
        wall = time.time() - t0
        con = sqlite3.connect(tmp / "state" / "nightshift.db")
        con.row_factory = sqlite3.Row
        gov = {}
        if governor:
            mem = con.execute("SELECT value FROM memory WHERE key='governor'").fetchone()
            evs = [dict(e) for e in con.execute("SELECT level, message FROM events WHERE kind='governor'")]
            gov = {"learned_mhz": json.loads(mem[0]).get("learned_mhz") if mem else None,
                   "governor_events": len(evs),
                   "cap_problems": sorted({e["message"] for e in evs if e["level"] != "info"})[:3]}
        run = dict(con.execute("SELECT * FROM runs").fetchone())
        kinds = [e["kind"] for e in con.execute("SELECT kind FROM events")]
        msgs = [e["message"] for e in con.execute("SELECT message FROM events WHERE kind='reset'")]
        recs = progress(tmp / "state" / "runs" / "1" / "progress.jsonl")
        remote = progress(tmp / "volume" / next(iter(os.listdir(tmp / "volume")), "x") / "run" / "progress.jsonl") \
            if (tmp / "volume").exists() and os.listdir(tmp / "volume") else []
        return summarize(recs, wall, a, remote=remote, resets=run["resets"], cloud_s=run["cloud_seconds"],
                         cost=run["cloud_cost_usd"], extra={
                             "finished": run["state"] == "succeeded", "state": run["state"],
                             "exit": r.returncode, "pauses": kinds.count("paused_hot"),
                             "offloaded": "offloaded" in kinds,
                             "diagnosis": msgs[-1].split(". ")[-1] if msgs else None,
                             "mean_clock_mhz": sampler.mean(), **gov})


def governor_goals(rows: dict[str, dict]) -> dict | None:
    """Issue 20's goals: governor time <= 0.6x baseline, and within 10% of the best fixed clock."""
    gov, base = rows.get("nightshiftd-governor"), rows.get("baseline")
    sweep = {int(k.rsplit("-", 1)[1]): r for k, r in rows.items() if k.startswith("nightshiftd-fixed-")}
    if gov is None:
        return None
    done = {mhz: r for mhz, r in sweep.items() if r["finished"]}
    best = min(done, key=lambda m: done[m]["time_h"]) if done else None
    out: dict = {"sweep_curve": [[mhz, round(r["time_h"], 2), r.get("pauses"), r["resets"],
                                  r["finished"]] for mhz, r in sorted(sweep.items())]}
    if base:
        out["vs_baseline"] = round(gov["time_h"] / base["time_h"], 3)
        out["goal_0.6x_baseline"] = out["vs_baseline"] <= 0.6
        out["full_clock_no_stop_lower_bound_vs_baseline"] = round(
            STORY_STEPS / LOCAL_RATE / 3600 / base["time_h"], 3)
    if best is not None:
        out["best_fixed_mhz"], out["best_fixed_time_h"] = best, round(done[best]["time_h"], 2)
        out["vs_best_fixed"] = round(gov["time_h"] / done[best]["time_h"], 3)
        out["goal_within_10pct_of_best_fixed"] = out["vs_best_fixed"] <= 1.10
    return out


def write(a: argparse.Namespace, steps: int, local_rate: float, cloud_rate: float,
          results: dict[str, dict[str, dict]]) -> None:
    meta = {"scale": a.scale, "k": a.k, "seed": a.seed, "story_steps": STORY_STEPS,
            "real_steps": steps, "local_steps_per_s_real": local_rate, "cloud_steps_per_s_real": cloud_rate,
            "command": " ".join(sys.argv)}
    goals = {p: g for p, rows in results.items() if (g := governor_goals(rows))}
    meta["kept_rows_from"] = sorted({r["command"] for rows in results.values() for r in rows.values()
                                     if r.get("command") and r["command"] != meta["command"]})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "results": results, "governor_goals": goals}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=600.0)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--profiles", default="thermal,firmware")
    ap.add_argument("--policies", default="baseline,nightshiftd,nightshiftd-no-deadline")
    ap.add_argument("--sweep", default="2000,2200,2300,2400,2450,2500,2600,2700",
                    help="fixed clocks (MHz) for the policy 'sweep'")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "night_replay.json"))
    ap.add_argument("--keep", action="store_true",
                    help="keep the rows already in --out; re-run only the policies asked for")
    a = ap.parse_args()
    steps = STORY_STEPS // a.k
    local_rate, cloud_rate = LOCAL_RATE * a.scale / a.k, CLOUD_RATE * a.scale / a.k
    results: dict[str, dict[str, dict]] = {}
    if a.keep and Path(a.out).exists():
        old = json.loads(Path(a.out).read_text())
        if any(old["meta"][k] != v for k, v in (("scale", a.scale), ("k", a.k), ("seed", a.seed))):
            raise SystemExit(f"--keep: {a.out} was made with another scale, k or seed")
        for rows in old["results"].values():
            for r in rows.values():
                r.setdefault("command", old["meta"]["command"])
        results = old["results"]
    for profile in a.profiles.split(","):
        results.setdefault(profile, {})
        runs = [("baseline", lambda: run_baseline(profile, a, steps, local_rate)),  # noqa: B023 - called at once
                ("nightshiftd", lambda: run_daemon(profile, a, steps, local_rate, cloud_rate, True)),  # noqa: B023
                ("nightshiftd-no-deadline", lambda: run_daemon(profile, a, steps, local_rate, cloud_rate, False)),  # noqa: B023
                ("nightshiftd-governor", lambda: run_daemon(profile, a, steps, local_rate, cloud_rate, False,  # noqa: B023
                                                            governor=True, offload=False))]
        if "sweep" in a.policies.split(","):
            runs += [(f"nightshiftd-fixed-{mhz}", lambda mhz=mhz, profile=profile: run_daemon(
                profile, a, steps, local_rate, cloud_rate, False, clock_mhz=float(mhz), offload=False))
                for mhz in a.sweep.split(",")]
        for name, fn in runs:
            if name not in a.policies.split(",") and not name.startswith("nightshiftd-fixed-"):
                continue
            print(f"{profile} / {name} ...", flush=True)
            results[profile][name] = fn() | {"command": " ".join(sys.argv)}
            print("  ", json.dumps(results[profile][name]), flush=True)
            write(a, steps, local_rate, cloud_rate, results)  # a crash later keeps what ran
    print("\n| profile | policy | finished | time (h) | goodput | resets | pauses | mean clock | steps lost / reset | cloud h | cost |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for profile, rows in results.items():
        for name, r in rows.items():
            print(f"| {profile} | {name} | {'yes' if r['finished'] else 'no'} | {r['time_h']:.1f} | "
                  f"{r['goodput']:.2f} | {r['resets']} | {r.get('pauses', '-')} | {r.get('mean_clock_mhz')} | "
                  f"{r['steps_lost_per_reset_story']:.0f} | {r['cloud_h']:.2f} | ${r['cost_usd']:.2f} |")


if __name__ == "__main__":
    main()
