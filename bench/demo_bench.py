"""How long `nightshift demo` takes, idle and under load (issue 19: <= 60 s on an idle 2-core
machine, the same length whatever the load).

Runs the real `nightshift demo` (python -m daemon.cli demo) ``--runs`` times one after the other,
optionally with ``--burners K`` extra CPU burners (busy-looping processes) running the whole time,
and records per run the wall time, the exit status and the 1-minute load average before and after,
appended to bench/results/demo.json (one entry per invocation of this script, so an idle and a
loaded invocation sit side by side). Usage:

    python bench/demo_bench.py --runs 2                # as idle as the machine is
    python bench/demo_bench.py --runs 2 --burners 3    # with three more CPU burners
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 60.0


def _burn() -> None:  # one busy CPU until killed
    while True:
        pass


def run_demo(extra: list[str], log: Path | None = None) -> dict:
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="demo-bench-") as work:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "daemon.cli", "demo", "--workdir", work, *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=1800)
        wall = time.monotonic() - t0
    if log is not None:  # the whole terminal story, for reading (not kept in the results)
        log.write_text(r.stdout + r.stderr)
    tail = (r.stdout + r.stderr).strip().splitlines()[-12:]
    return {"wall_s": round(wall, 1), "rc": r.returncode, "load1_before": round(load0, 2),
            "load1_after": round(os.getloadavg()[0], 2), "tail": tail}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--burners", type=int, default=0, help="extra CPU burners during the runs")
    ap.add_argument("--long", action="store_true", help="time `nightshift demo --long` instead")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo.json"))
    ap.add_argument("--log-dir", help="write each run's whole output to DIR/demo-N.log")
    a = ap.parse_args()
    burners = [mp.Process(target=_burn, daemon=True) for _ in range(a.burners)]
    for b in burners:
        b.start()
    try:
        if burners:
            time.sleep(20)  # let the load average see them before the first run
        runs = []
        for i in range(a.runs):
            log = Path(a.log_dir) / f"demo-{i + 1}.log" if a.log_dir else None
            res = run_demo(["--long"] if a.long else [], log)
            runs.append(res)
            print(f"run {i + 1}: {res['wall_s']} s, rc {res['rc']}, load {res['load1_before']} -> "
                  f"{res['load1_after']}", flush=True)
    finally:
        for b in burners:
            b.kill()
            b.join()
    walls = [r["wall_s"] for r in runs]
    entry = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
             "burners": a.burners, "long": a.long, "runs": runs,
             "command": " ".join(["python bench/demo_bench.py", f"--runs {a.runs}"]
                                 + ([f"--burners {a.burners}"] if a.burners else [])
                                 + (["--long"] if a.long else [])),
             "max_wall_s": max(walls) if walls else None,
             "verdict": None if a.long or not walls else
             ("met" if max(walls) <= GOAL_S and all(r["rc"] == 0 for r in runs) else "MISS")}
    out = Path(a.out)
    data = json.loads(out.read_text()) if out.exists() else []
    data.append(entry)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps({k: v for k, v in entry.items() if k != "runs"}))
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
