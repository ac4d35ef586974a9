"""Job-side hook of the simulated GPU (daemon/simgpu.py); a no-op on real hardware.

Called by trainer.runtime at every step boundary. Under $NIGHTSHIFT_SIM_GPU it marks the
device busy (touching <root>/busy, at most 5 times a second) and, once the simulated GPU has
reset (<root>/fault exists), dies the way a ROCm job does: the runtime's message, then abort.
"""

from __future__ import annotations

import os
import sys
import time

_ROOT = os.environ.get("NIGHTSHIFT_SIM_GPU")
_next = 0.0
ABORT_MESSAGE = "HW Exception by GPU node-1 (Agent handle: 0x5581e2c4a0f0) reason :GPU Hang"


def on_step() -> None:
    global _next
    if not _ROOT:
        return
    now = time.monotonic()
    if now < _next:
        return
    _next = now + 0.2
    if os.path.exists(os.path.join(_ROOT, "fault")):
        sys.stderr.write(ABORT_MESSAGE + "\n")
        sys.stderr.flush()
        os.abort()
    busy = os.path.join(_ROOT, "busy")
    try:
        os.utime(busy)
    except FileNotFoundError:
        open(busy, "a").close()
