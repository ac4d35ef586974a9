"""Where a /status request's CPU goes (issue 18): the server's own CPU time per 1000 requests,
for the same uvicorn + GuardedH11Protocol server (daemon.web.api.serve) in front of

- ``floor``: a bare ASGI app answering the same bytes (uvicorn + h11 + asyncio alone);
- ``fast``: the real app, plain GET /status (the fast path: cached bytes, no FastAPI work);
- ``routed``: the real app through FastAPI's route (``/status?via=fastapi``: routing, query
  validation, dependency solving, Response objects), same cached bytes;
- ``uncached``: the fast path with a source that publishes a new snapshot per request, so
  the JSON/text are rendered every time (the cost the cache removes).

    .venv/bin/python bench/api_cost_split.py [--requests 3000] [--rounds 5] [--rps 0] [--snapshot FILE]

Each variant is a server process pinned to one core, the client to the other; rounds rotate
the order so a busy neighbour hits all variants alike; figures are medians with min-max over
the rounds. Requests are sequential on one keep-alive connection, half text, half JSON, back
to back or paced (``--rps``: each request then finds the server idle, as in api_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("floor", "fast", "routed", "uncached")


def snapshot(path: str | None) -> dict:
    if path:
        return json.loads(Path(path).read_text())
    from tests.test_phone import _status  # a full status as the Supervisor publishes it
    return _status(loss_trend=[2.5 - i * 0.001 for i in range(120)], last_event=None)


def serve(variant: str, port: int, snap_file: str | None) -> None:
    from daemon.web import api

    st = snapshot(snap_file)

    class Source:
        def status(self):
            return dict(st) if variant == "uncached" else st

    async def main() -> None:
        if variant == "floor":
            body = api.strict_json(st)

            async def app(scope, receive, send):  # the least an ASGI app can do
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", str(len(body)).encode()),
                                        (b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
        else:
            src = Source()
            app = api.create_app(src, src, None)
        await api.serve(app, "127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def run(port: int, n: int, path: str, rps: float = 0) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    nxt = time.monotonic()
    for i in range(n):
        if rps:  # paced: every request wakes an idle server, as at 200 req/s from phones
            nxt += 1 / rps
            time.sleep(max(0.0, nxt - time.monotonic()))
        conn.request("GET", path + ("format=json" if i % 2 else "format=text"))
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"{path}: HTTP {r.status}")
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--snapshot", default=None, help="a /status?format=json body to serve")
    ap.add_argument("--rps", type=float, default=0, help="pace the requests (0: back to back)")
    ap.add_argument("--serve", nargs=2, metavar=("VARIANT", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "api_cost_split.json"))
    a = ap.parse_args()
    if a.serve:
        return serve(a.serve[0], int(a.serve[1]), a.snapshot)
    from tests.helpers import free_port

    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[-1]})
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for v in VARIANTS:
            port = free_port()
            cmd = ["taskset", "-c", str(cores[0]), sys.executable, __file__, "--serve", v, str(port)]
            if a.snapshot:
                cmd += ["--snapshot", a.snapshot]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            servers[v] = (p, port)
        paths = {"floor": "/status?", "fast": "/status?", "routed": "/status?via=fastapi&",
                 "uncached": "/status?"}
        for v, (_, port) in servers.items():
            run(port, 300, paths[v])  # warm-up: imports, first renders, allocator
        ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(a.rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for v in order:
                p, port = servers[v]
                proc = psutil.Process(p.pid)
                c0 = sum(proc.cpu_times()[:2])
                run(port, a.requests, paths[v], a.rps)
                time.sleep(0.05)
                ms[v].append(1000 * (sum(proc.cpu_times()[:2]) - c0) / a.requests)
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{v} {ms[v][-1]:.3f}" for v in VARIANTS),
                  flush=True)
    finally:
        for p, _ in servers.values():
            p.terminate()
            p.wait(10)

    def s(xs: list[float]) -> dict[str, float]:
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    st = snapshot(a.snapshot)
    from daemon.web import api
    res = {"command": "bench/api_cost_split.py " + " ".join(sys.argv[1:]),
           "requests_per_round": a.requests, "rounds": a.rounds, "rps": a.rps or "back to back",
           "status_json_bytes": len(api.strict_json(st)),
           "cpu_ms_per_request": {v: s(ms[v]) for v in VARIANTS},
           "load_average": os.getloadavg()}
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    for v in VARIANTS:
        m = res["cpu_ms_per_request"][v]
        print(f"{v:9s} {m['median']:.3f} CPU-ms per /status ({m['min']:.3f}-{m['max']:.3f})")


if __name__ == "__main__":
    main()
