"""Daemon side of the job control protocol (see ARCHITECTURE.md, "Control protocol").

The control file is the state and the signal only a wake-up: the job re-reads the file at
least once a second at step boundaries, so a lost SIGUSR1 or a daemon restart loses nothing.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

COMMANDS = ("run", "checkpoint", "hold", "exit")


class JobControl:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "control.json"
        self.seq, self.command, self.interval = self._read()

    def _read(self) -> tuple[int, str, int | None]:
        try:
            d = json.loads(self.path.read_text())
            return int(d.get("seq", 0)), str(d.get("command", "run")), d.get("checkpoint_interval")
        except (OSError, ValueError):
            return 0, "run", None

    def send(self, command: str, pgid: int | None, checkpoint_interval: int | None = None) -> int:
        """Write the command with a new seq, then wake the job's process group. Returns seq."""
        if command not in COMMANDS:
            raise ValueError(f"unknown job command {command!r}; expected one of {COMMANDS}")
        self.seq += 1
        self.command = command
        if checkpoint_interval is not None:
            self.interval = checkpoint_interval
        body = {"seq": self.seq, "command": command, "checkpoint_interval": self.interval}
        tmp = self.path.with_suffix(".json.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if pgid:
            try:
                # the job's main process only: a DataLoader worker started with spawn has no
                # handler, and SIGUSR1's default action would kill it
                os.kill(pgid, signal.SIGUSR1)
            except (ProcessLookupError, PermissionError):
                pass  # already gone: the file still says what to do if it comes back
        return self.seq

    def reset(self) -> None:
        """Before a fresh start of the job: a stale "hold" or "exit" must not bite the new one."""
        self.send("run", None)
