"""Job side of the control protocol (see ARCHITECTURE.md).

The daemon writes ``$NIGHTSHIFT_RUN_DIR/control.json`` = {"seq", "command", "checkpoint_interval"}
and sends SIGUSR1. The signal handler only sets a flag; the file is read at the next step
boundary when the flag is set *and* at least once a second regardless, so a lost signal (or a
daemon that restarted and re-wrote the file) still takes effect within a second. Each seq is
acted on once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any


class ControlChannel:
    def __init__(self, run_dir: str | os.PathLike, poll_s: float = 1.0):
        self.path = Path(run_dir) / "control.json"
        self.poll_s = poll_s
        self._flag = False
        self._next_check = 0.0
        self._mtime: float | None = None
        self.seen_seq = self._current_seq()  # commands written before we started are history
        self.command = "run"
        self.interval: int | None = None
        try:
            signal.signal(signal.SIGUSR1, self._on_signal)
        except ValueError:  # not the main thread: polling alone still works
            pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._flag = True

    def _read(self) -> dict[str, Any] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        if self._mtime == st.st_mtime_ns and not self._flag:
            return None
        self._mtime = st.st_mtime_ns
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # caught mid-replace: the next check sees it

    def _current_seq(self) -> int:
        d = self._read()
        if d is not None and d.get("command") in ("hold", "exit"):
            # A hold/exit still in force when we start (daemon restarted us while paused) applies.
            return int(d.get("seq", 0)) - 1
        return int(d.get("seq", 0)) if d else 0

    def poll(self, force: bool = False) -> tuple[str, int] | None:
        """A new (command, seq) to act on, or None. Cheap: at most one stat a second."""
        now = time.monotonic()
        if not (force or self._flag or now >= self._next_check):
            return None
        self._next_check = now + self.poll_s
        d = self._read()
        self._flag = False
        if not d:
            return None
        if d.get("checkpoint_interval"):
            self.interval = int(d["checkpoint_interval"])
        seq = int(d.get("seq", 0))
        self.command = str(d.get("command", "run"))
        if seq <= self.seen_seq:
            return None
        self.seen_seq = seq
        return self.command, seq
