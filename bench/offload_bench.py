"""Issue 7's measurement, with the local backend: the daemon's own overhead from the failover
decision to the remote job running from the checkpoint, and bytes uploaded vs the checkpoint.

    .venv/bin/python bench/offload_bench.py [--d-model 256]

The reference job trains under the daemon; once a checkpoint exists `nightshift offload` forces
the failover. Decision = the "-> offloading" event; running = the remote job's first progress
record. The interval includes the local job's final checkpoint and exit, the upload (only the
newest valid checkpoint goes up), the launch, and the remote interpreter's start-up + resume.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import free_port, write_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "offload.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        port = free_port()
        job = [sys.executable, "-m", "trainer.reference", "--steps", "600", "--d-model", str(a.d_model),
               "--checkpoint-interval", "20"]
        cfg = write_config(tmp, {"job": {"command": job}, "api": {"enabled": True, "port": port},
                                 "checkpoint": {"interval": 20},
                                 "offload": {"backend": "local", "budget_usd": 5.0,
                                             "local_dir": str(tmp / "volume")}})
        d = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "-c", str(cfg)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not list((tmp / "ckpt").glob("step_*")):
                time.sleep(0.2)
            r = subprocess.run([sys.executable, "-m", "daemon.cli", "offload", "-c", str(cfg)], cwd=ROOT,
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
            d.wait(timeout=600)
        finally:
            if d.poll() is None:
                d.terminate()
                d.wait()
        con = sqlite3.connect(tmp / "state" / "nightshift.db")
        con.row_factory = sqlite3.Row
        decided = next(e["t"] for e in con.execute("SELECT t, message FROM events WHERE kind='state' ORDER BY id")
                       if "-> offloading" in e["message"])
        off = next(json.loads(e["data"]) for e in con.execute("SELECT data FROM events WHERE kind='offloaded'"))
        vol = next((tmp / "volume").iterdir())
        recs = [json.loads(x) for x in (vol / "run" / "progress.jsonl").read_text().splitlines() if x.strip()]
        start = next(r for r in recs if r["kind"] == "start")
        first = next(r["t"] for r in recs if r["kind"] == "progress")
        # every checkpoint of this model has the same size; retention may have removed the
        # uploaded one by now, so measure the newest one at home
        ck = sorted((tmp / "ckpt").glob("step_*"))[-1]
        ck_bytes = sum(f.stat().st_size for f in ck.iterdir())
        all_ckpts = sum(f.stat().st_size for p in (tmp / "ckpt").glob("step_*") for f in p.iterdir())
        res = {"decision_to_remote_running_s": first - decided,
               "decision_to_launch_s": off["decision_to_launch_s"],
               "uploaded_bytes": off["upload_bytes"], "checkpoint_bytes": ck_bytes,
               "upload_over_checkpoint": off["upload_bytes"] / ck_bytes,
               "local_checkpoint_dir_bytes_at_end": all_ckpts,
               "remote_resumed_at_step": start["step"], "final_state": con.execute("SELECT state FROM runs").fetchone()[0]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
