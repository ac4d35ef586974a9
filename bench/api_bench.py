"""The API's cost while a job trains under the real daemon (issues 6 and 18): /status latency
at 200 requests/s, the daemon's CPU-seconds per 1000 /status requests, and the job's training
throughput under that load against none.

    .venv/bin/python bench/api_bench.py [--rps 200] [--window 10] [--pairs 5] [--out FILE]

`nightshift run` (python -m daemon.cli run) supervises the reference job pinned to core 0 with
one torch thread (taskset); the load generator, a separate process (paced threads on
keep-alive connections), is pinned to core 1; the daemon is left to the scheduler. Quiet and
loaded windows alternate in pairs (quiet-loaded, then loaded-quiet, ...), so a neighbour that
changes the machine's speed hits both sides of a pair alike; the figures are medians over the
pairs with min and max. CPU per 1000 requests is the daemon's own CPU time (user + system,
children excluded) in a loaded window minus that in its paired quiet window (polling,
progress tailing), divided by the requests answered. Goals: p99 < 20 ms; throughput >= 0.98.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import free_port, write_config  # noqa: E402


def load(port: int, rps: float, duration: float, threads: int = 8) -> dict:
    lat: list[float] = []
    errors = [0]
    per = rps / threads
    stop_at = time.monotonic() + duration

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        nxt = time.monotonic() + i / rps
        while nxt < stop_at:
            time.sleep(max(0.0, nxt - time.monotonic()))
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/status")
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    errors[0] += 1
                lat.append(time.perf_counter() - t0)
            except OSError:
                errors[0] += 1
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            nxt += 1.0 / per
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    lat.sort()
    return {"requests": len(lat), "achieved_rps": len(lat) / duration, "errors": errors[0],
            "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None}


def rate(progress: Path, t0: float, t1: float) -> float:
    recs = [json.loads(x) for x in progress.read_text().splitlines() if x.strip()]
    pts = [(r["t"], r["step"]) for r in recs if r.get("kind") == "progress" and t0 <= r["t"] <= t1]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        raise SystemExit(f"api_bench: fewer than two progress records in a {t1 - t0:.1f} s window; "
                         "use a longer --window (records come at most every 0.5 s)")
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rps", type=float, default=200)
    ap.add_argument("--window", type=float, default=10, help="seconds per quiet or loaded window")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "api.json"))
    ap.add_argument("--pin-daemon", action="store_true",
                    help="pin the daemon to the load generator's core (a diagnostic: the job's core then "
                         "carries no API work at all)")
    a = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    job_core, load_core = cores[0], cores[-1]
    pin = [shutil.which("taskset"), "-c", str(job_core)] if shutil.which("taskset") else []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        port = free_port()
        cfg = write_config(tmp, {"job": {"command": [*pin, sys.executable, "-m", "trainer.reference",
                                                     "--steps", "100000000", "--threads", "1"]},
                                 "api": {"enabled": True, "port": port}, "gpu": {"sensor": "auto"}})
        dpin = [shutil.which("taskset"), "-c", str(load_core)] if a.pin_daemon and pin else []
        d = subprocess.Popen([*dpin, sys.executable, "-m", "daemon.cli", "run", "-c", str(cfg)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        daemon = psutil.Process(d.pid)
        try:
            deadline = time.monotonic() + 120
            while True:
                progs = list((tmp / "state").rglob("progress.jsonl"))
                if progs and progs[0].read_text().count('"progress"') >= 5:
                    prog = progs[0]
                    break
                if d.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the daemon did not get the reference job training")
                time.sleep(0.5)
            time.sleep(3)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status?format=json", timeout=5) as r:
                status_bytes = len(r.read())
            code = (f"import os, sys, json; os.sched_setaffinity(0, {{{load_core}}}); "
                    f"sys.path.insert(0, {str(ROOT)!r}); from bench.api_bench import load; "
                    f"print(json.dumps(load({port}, {a.rps}, {a.window})))")
            pairs = []
            for i in range(a.pairs):
                window: dict[str, dict] = {}
                for kind in (("quiet", "loaded") if i % 2 == 0 else ("loaded", "quiet")):
                    t0, c0 = time.time(), cpu_s(daemon)
                    if kind == "quiet":
                        time.sleep(a.window)
                        got: dict = {}
                    else:
                        out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                             text=True, check=True).stdout
                        got = json.loads(out)
                    t1, c1 = time.time(), cpu_s(daemon)
                    window[kind] = got | {"steps_per_s": rate(prog, t0, t1), "daemon_cpu_s": c1 - c0,
                                          "seconds": t1 - t0}
                q, ld = window["quiet"], window["loaded"]
                extra_cpu = ld["daemon_cpu_s"] - q["daemon_cpu_s"] * ld["seconds"] / q["seconds"]
                pairs.append({"quiet": q, "loaded": ld,
                              "throughput_ratio": ld["steps_per_s"] / q["steps_per_s"],
                              "cpu_s_per_1000_status": 1000 * extra_cpu / max(1, ld["requests"]),
                              "cpu_s_per_1000_status_gross": 1000 * ld["daemon_cpu_s"] / max(1, ld["requests"])})
                print(f"pair {i + 1}/{a.pairs}: throughput {pairs[-1]['throughput_ratio']:.3f}, "
                      f"{pairs[-1]['cpu_s_per_1000_status']:.3f} CPU-s/1000 /status, "
                      f"p99 {ld['p99_ms']:.1f} ms, {ld['requests']} requests, {ld['errors']} errors",
                      flush=True)
        finally:
            d.terminate()
            try:
                d.wait(timeout=60)
            except subprocess.TimeoutExpired:
                d.kill()
    loaded = [p["loaded"] for p in pairs]
    res = {
        "command": "bench/api_bench.py " + " ".join(sys.argv[1:]),
        "rps": a.rps, "window_s": a.window, "pairs": a.pairs,
        "pinning": {"job_core": job_core, "load_generator_core": load_core, "job_threads": 1,
                    "daemon": f"core {load_core}" if a.pin_daemon else "unpinned"},
        "status_json_bytes": status_bytes, "load_average_after": os.getloadavg(),
        "requests": sum(x["requests"] for x in loaded), "errors": sum(x["errors"] for x in loaded),
        "achieved_rps": summary([x["achieved_rps"] for x in loaded]),
        "p50_ms": summary([x["p50_ms"] for x in loaded]),
        "p99_ms": summary([x["p99_ms"] for x in loaded]),
        "throughput_ratio": summary([p["throughput_ratio"] for p in pairs]),
        "cpu_s_per_1000_status": summary([p["cpu_s_per_1000_status"] for p in pairs]),
        "cpu_s_per_1000_status_gross": summary([p["cpu_s_per_1000_status_gross"] for p in pairs]),
        "steps_per_s_quiet": summary([p["quiet"]["steps_per_s"] for p in pairs]),
        "steps_per_s_loaded": summary([x["steps_per_s"] for x in loaded]),
        "pair_details": pairs,
    }
    res["verdict"] = {"throughput_ratio": "met" if res["throughput_ratio"]["median"] >= 0.98 else "MISS (goal >= 0.98)",
                      "p99_ms": "met" if res["p99_ms"]["median"] < 20 else "MISS (goal < 20)"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    t, c, p99 = res["throughput_ratio"], res["cpu_s_per_1000_status"], res["p99_ms"]
    print(f"throughput under {a.rps:.0f} req/s: {t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f}) (goal >= 0.98); "
          f"daemon CPU {c['median']:.3f} s per 1000 /status ({c['min']:.3f}-{c['max']:.3f}); "
          f"p99 {p99['median']:.1f} ms (max {p99['max']:.1f}); {res['errors']} errors of {res['requests']}")


if __name__ == "__main__":
    main()
