"""Issue 6's measurement: /status p99 latency at 200 requests/s for 30 s while the reference
job trains under the daemon, and the job's throughput under that load against none.

    .venv/bin/python bench/api_bench.py [--rps 200] [--duration 30]

The load comes from a separate process (paced threads on keep-alive connections), so the
daemon's event loop is measured, not the client. Goals: p99 < 20 ms; throughput >= 0.98.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)]}


def rate(progress: Path, t0: float, t1: float) -> float:
    recs = [json.loads(x) for x in progress.read_text().splitlines() if x.strip()]
    pts = [(r["t"], r["step"]) for r in recs if r["kind"] == "progress" and t0 <= r["t"] <= t1]
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rps", type=float, default=200)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "api.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        port = free_port()
        cfg = write_config(tmp, {"job": {"command": [sys.executable, "-m", "trainer.reference", "--steps", "1000000"]},
                                 "api": {"enabled": True, "port": port}, "gpu": {"sensor": "auto"}})
        d = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "-c", str(cfg)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        prog = tmp / "state" / "runs" / "1" / "progress.jsonl"
        try:
            while not prog.exists() or prog.read_text().count('"progress"') < 5:
                time.sleep(0.5)
            time.sleep(5)
            t0 = time.time()
            time.sleep(a.duration)
            quiet = rate(prog, t0, time.time())
            code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); from bench.api_bench import load; "
                    f"print(json.dumps(load({port}, {a.rps}, {a.duration})))")
            t1 = time.time()
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            loaded = rate(prog, t1, time.time())
            res = json.loads(out) | {"steps_per_s_quiet": quiet, "steps_per_s_loaded": loaded,
                                     "throughput_ratio": loaded / quiet}
        finally:
            d.terminate()
            d.wait(timeout=60)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
