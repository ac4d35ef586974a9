"""A training script that does NOT use trainer/: it keeps its own checkpoint (a JSON file with
the step) and writes progress.jsonl itself. Behaviour is chosen by argv, to play the failures
the daemon must tell apart:

  plainjob.py STEPS MODE [ARG]
  MODE ok          finish normally
  MODE hip N       on the first attempt, die at step N like ROCm does on a GPU hang
  MODE error N     raise the same ValueError at step N on every attempt (deterministic bug)
  MODE flaky N     raise a different error at step N on the first attempt only
  MODE hang N      on the first attempt, stop making progress at step N (no exit)
  MODE sleepy      finish normally but slowly (for kill/restart tests)
"""

import json
import os
import sys
import time
from pathlib import Path

steps, mode = int(sys.argv[1]), sys.argv[2]
arg = int(sys.argv[3]) if len(sys.argv) > 3 else 0
run_dir = Path(os.environ.get("NIGHTSHIFT_RUN_DIR", "."))
ckpt_dir = Path(os.environ.get("NIGHTSHIFT_CHECKPOINT_DIR", "ckpt"))
ckpt_dir.mkdir(parents=True, exist_ok=True)
own = ckpt_dir / "plain.json"
attempts_file = ckpt_dir / "attempts"
attempt = int(attempts_file.read_text()) + 1 if attempts_file.exists() else 1
attempts_file.write_text(str(attempt))
start = json.loads(own.read_text())["step"] if own.exists() else 0
progress = open(run_dir / "progress.jsonl", "a", buffering=1)


def rec(**kw):
    progress.write(json.dumps({"t": time.time(), **kw}) + "\n")


rec(kind="start", step=start, total_steps=steps, pid=os.getpid(), attempt=attempt)
print(f"plainjob attempt {attempt} from step {start} args {sys.argv[2:]}", flush=True)
delay = 0.2 if mode == "sleepy" else 0.02
for step in range(start + 1, steps + 1):
    time.sleep(delay)
    if step == arg and mode == "hip" and attempt == 1:
        print("HW Exception by GPU node-1 (Agent handle: 0x55d0c8a3e2b0) reason :GPU Hang",
              file=sys.stderr, flush=True)
        os.abort()
    if step == arg and mode == "error":
        raise ValueError(f"shape mismatch in layer 3 at step {step}")
    if step == arg and mode == "flaky" and attempt == 1:
        raise RuntimeError("a transient failure")
    if step == arg and mode == "hang" and attempt == 1:
        while True:
            time.sleep(1)
    rec(kind="progress", step=step, total_steps=steps, loss=1.0 / step)
    if step % 5 == 0:
        tmp = own.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": step}))
        os.replace(tmp, own)
rec(kind="done", step=steps)
print("plainjob done", flush=True)
