"""A script (no trainer/) that saves on SIGTERM, as many real ones do: it prints a line every
0.2 s; on SIGTERM it says so (a ``got-term`` file next to its checkpoint), takes ``SAVE_S``
seconds to write ``final.json`` and exits 0. A SIGKILL during the save loses the checkpoint."""

import json
import os
import signal
import sys
import time
from pathlib import Path

SAVE_S = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
ckpt = Path(os.environ.get("NIGHTSHIFT_CHECKPOINT_DIR", "ckpt"))
ckpt.mkdir(parents=True, exist_ok=True)
asked = []
signal.signal(signal.SIGTERM, lambda *_: asked.append(time.monotonic()))
step = 0
while not asked:
    step += 1
    print(f"step {step}", flush=True)
    time.sleep(0.2)
(ckpt / "got-term").write_text(str(step))
print(f"SIGTERM at step {step}: saving for {SAVE_S} s", flush=True)
end = time.monotonic() + SAVE_S
while time.monotonic() < end:  # the save takes real time, whatever the wall clock says
    time.sleep(0.05)
(ckpt / "final.json").write_text(json.dumps({"step": step, "saved_at": time.time()}))
print("saved", flush=True)
