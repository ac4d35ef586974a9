"""`nightshift demo --governor` against the same story on the same simulated chip with the
pause policy alone (the hidden --governor-chip-pause-only), alternated (issue 20): wall time,
thermal pauses, the governor's summary line. Writes bench/results/demo_governor.json. Usage:

    python bench/demo_governor.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def once(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="demo-gov-") as work:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "daemon.cli", "demo", "--workdir", work, *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - t0
    pauses = re.search(r"thermal pauses: +(\d+)", r.stdout)
    gov = re.search(r"^governor: +(.*)", r.stdout, re.M)  # the summary's line, not an event
    return {"args": extra, "exit": r.returncode, "wall_s": round(wall, 1),
            "pauses": int(pauses.group(1)) if pauses else None,
            "governor": gov.group(1) if gov else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo_governor.json"))
    a = ap.parse_args()
    rows = []
    for _ in range(a.runs):  # alternated: a slow moment of the machine hits both
        for extra in (["--governor-chip-pause-only"], ["--governor"]):
            rows.append(once(extra))
            print(json.dumps(rows[-1]), flush=True)
    out = {"command": f"python bench/demo_governor.py --runs {a.runs}", "runs": rows}
    # the same chip (demo --governor's) with the pause policy alone, and with the governor
    for name, extra in (("pause_only", ["--governor-chip-pause-only"]), ("governor", ["--governor"])):
        sel = [r for r in rows if r["args"] == extra]
        out[name] = {"median_wall_s": statistics.median(r["wall_s"] for r in sel),
                     "pauses": [r["pauses"] for r in sel]}
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("pause_only", "governor")}))


if __name__ == "__main__":
    main()
