"""The baseline nightshiftd is measured against: the watchdog script from the story.

Run the job; when it dies, sleep 15 (simulated) minutes and start it again; it resumes from its
last checkpoint, written every 500 (story) steps. No temperature watching, no pausing, no cloud.

    python bench/watchdog_baseline.py --sleep-s 3 -- python -m trainer.reference ...

It reads NIGHTSHIFT_* from its environment and passes them on, like the daemon would, and
prints one JSON line per attempt (start, end, returncode) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def newest_checkpoint(ckpt_dir: str) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from trainer.format import find_latest_valid

    info = find_latest_valid(ckpt_dir)
    return str(info.path) if info else ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sleep-s", type=float, required=True, help="the sleep after a death (real s)")
    ap.add_argument("--max-attempts", type=int, default=1000)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.command[1:] if a.command and a.command[0] == "--" else a.command
    for attempt in range(1, a.max_attempts + 1):
        env = dict(os.environ)
        env["NIGHTSHIFT_RESUME"] = newest_checkpoint(env["NIGHTSHIFT_CHECKPOINT_DIR"])
        t0 = time.time()
        rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        print(json.dumps({"attempt": attempt, "start": t0, "end": time.time(), "returncode": rc}),
              flush=True)
        if rc == 0:
            return 0
        time.sleep(a.sleep_s)
    return 1


if __name__ == "__main__":
    sys.exit(main())
