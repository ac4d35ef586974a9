"""Daemon side of the control protocol (trainer/protocol.py; ARCHITECTURE.md "Control protocol").

The control file is the state and the signal only a wake-up: the job re-reads the file at
least once a second at step boundaries, so a lost SIGUSR1 or a daemon restart loses nothing.
The file holds the desired hold state and the one-shot commands not yet acknowledged, each with
its own seq: a pause and a checkpoint asked in the same second are both carried out.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from trainer.protocol import CONTROL_FILE, ONE_SHOT_COMMANDS

# How to wake the job after a write: its pid (SIGUSR1 to that process), a callable, or None (the
# job reads the file within a second anyway). Only a job that announced the protocol may be
# woken: before trainer/ installs its handler, SIGUSR1's default action kills the process.
Wake = int | Callable[[], object] | None
MAX_PENDING = 32  # unacknowledged commands kept in the file (a job that never acks: bounded)


class JobControl:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / CONTROL_FILE
        self.hold = False
        self.interval: int | None = None
        self.pending: list[dict[str, object]] = []
        self.seq = self._last_seq()

    def _last_seq(self) -> int:
        """Seqs only grow, across daemon restarts too (a job must never see one twice)."""
        try:
            d = json.loads(self.path.read_text())
            return max([int(c["seq"]) for c in d.get("commands", [])] + [int(d.get("seq", 0))])
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return 0

    def set_hold(self, hold: bool, wake: Wake = None) -> None:
        if hold != self.hold:
            self.hold = hold
            self._write(wake)

    def set_interval(self, steps: int | None, wake: Wake = None) -> None:
        if steps != self.interval:
            self.interval = steps
            self._write(wake)

    def command(self, command: str, wake: Wake = None) -> int:
        """Queue a one-shot command; returns its seq."""
        if command not in ONE_SHOT_COMMANDS:
            raise ValueError(f"unknown job command {command!r}; expected one of {ONE_SHOT_COMMANDS}")
        self.seq += 1
        self.pending = [*self.pending, {"seq": self.seq, "command": command}][-MAX_PENDING:]
        self._write(wake)
        return self.seq

    def acked(self, seq: int) -> None:
        self.pending = [c for c in self.pending if int(c["seq"]) > seq]  # type: ignore[call-overload]

    def fresh(self, hold: bool) -> None:
        """Before a job starts: no command from an earlier attempt may bite the new one; the
        hold state carries over (a paused run starts paused)."""
        self.pending = []
        self.hold = hold
        self._write(None)

    def _write(self, wake: Wake) -> None:
        body = {"seq": self.seq, "hold": self.hold, "commands": self.pending,
                "checkpoint_interval": self.interval}
        tmp = self.path.with_suffix(".json.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if callable(wake):
            wake()
        elif wake:
            try:
                # the job's main process only: a DataLoader worker started with spawn has no
                # handler, and SIGUSR1's default action would kill it
                os.kill(wake, signal.SIGUSR1)
            except (ProcessLookupError, PermissionError):
                pass  # already gone: the file still says what to do if it comes back
