"""The remote side of an offload: resume from the volume's newest checkpoint, run the same job
command, commit the volume after every checkpoint and at exit. The body of the Modal function,
and the process the local backend starts (`python -m daemon.offload.remote --spec FILE`).

A preempted attempt (killed at any moment) is simply run again: it resumes from the volume.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_remote(spec: dict[str, Any], volume_root: str, commit: Callable[[], None] = lambda: None,
               poll_s: float = 0.5) -> dict[str, Any]:
    from daemon.progress import ProgressTail
    from trainer.format import find_latest_valid

    vol = Path(volume_root)
    ckpt_dir, run_dir = vol / "ckpt", vol / "run"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = find_latest_valid(ckpt_dir)
    command = spec["resume_command"] if info and spec.get("resume_command") else spec["command"]
    if command and command[0] == "python":
        command = [sys.executable, *command[1:]]
    env = {**os.environ, **(spec.get("env") or {}), "NIGHTSHIFT_RUN_DIR": str(run_dir),
           "NIGHTSHIFT_CHECKPOINT_DIR": str(ckpt_dir), "NIGHTSHIFT_RESUME": str(info.path) if info else ""}
    env.pop("NIGHTSHIFT_SIM_GPU", None)  # the cloud GPU is not the flaky local one
    if spec.get("total_steps"):
        env["NIGHTSHIFT_TOTAL_STEPS"] = str(spec["total_steps"])
    if spec.get("checkpoint_interval"):
        env["NIGHTSHIFT_CHECKPOINT_INTERVAL"] = str(spec["checkpoint_interval"])
    (run_dir / "control.json").unlink(missing_ok=True)
    tail = ProgressTail(run_dir / "progress.jsonl", from_end=True)
    with open(vol / "job.log", "ab") as log:
        proc = subprocess.Popen(command, cwd=spec.get("workdir") or str(vol), env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

        def forward(signum: int, frame: Any) -> None:  # cancel/preemption: let the job checkpoint
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        signal.signal(signal.SIGTERM, forward)
        done = False
        while True:
            try:
                rc = proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                pass
            for rec in tail.read():
                if rec.get("kind") == "checkpoint":
                    commit()  # durable and visible to the daemon's poll/pull
                done = done or rec.get("kind") == "done"
    for rec in tail.read():
        done = done or rec.get("kind") == "done"
    commit()
    final = find_latest_valid(ckpt_dir)
    result = {"state": "succeeded" if rc == 0 and done else ("cancelled" if rc == 0 else "failed"),
              "returncode": rc, "step": final.step if final else None,
              "final_checkpoint": str(final.path) if final else None,
              "error": None if rc == 0 else _tail(vol / "job.log")}
    return result


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m daemon.offload.remote")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--volume", required=True)
    a = ap.parse_args()
    spec = json.loads(Path(a.spec).read_text())
    t0 = time.time()
    res = run_remote(spec, a.volume)
    res["seconds"] = time.time() - t0
    tmp = Path(a.volume) / "status.json.tmp"
    tmp.write_text(json.dumps(res))
    os.replace(tmp, Path(a.volume) / "status.json")
    return 0 if res["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
