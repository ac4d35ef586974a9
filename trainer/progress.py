"""progress.jsonl writer (job -> daemon): one JSON object a line, flushed, never buffered long.

Per-step ``progress`` records are rate-limited (at most one every ``min_interval_s``, counted
from the last *progress* record, so frequent eval or checkpoint records never starve them) so a
fast loop does not spend its time writing; every other kind (checkpoint, held, done, ...) is
written at once. The daemon treats silence past its heartbeat timeout as a hang, so a held job
writes heartbeats. The file is line-buffered: each record is one write(2) the daemon can tail.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any


class ProgressWriter:
    def __init__(self, run_dir: str | os.PathLike, min_interval_s: float = 0.5):
        self.path = Path(run_dir) / "progress.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a", buffering=1, encoding="utf-8")
        self.min_interval_s = min_interval_s
        self._last = -1e9  # the first step always reports
        self._lock = threading.Lock()  # checkpoint records come from the persist thread

    def write(self, kind: str, **fields: Any) -> None:
        rec = {"t": time.time(), "kind": kind}
        rec.update({k: _finite(v) for k, v in fields.items()})
        line = json.dumps(rec) + "\n"
        with self._lock:
            self.f.write(line)

    def progress(self, force: bool = False, **fields: Any) -> bool:
        """One ``progress`` record unless one was written less than ``min_interval_s`` ago."""
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return False
        self._last = now
        self.write("progress", **fields)
        return True

    def close(self) -> None:
        self.f.close()


def _finite(v: Any) -> Any:
    """JSON has no NaN/inf: a diverged loss is reported as the string "nan"/"inf"."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v
