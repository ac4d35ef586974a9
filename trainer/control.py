"""Job side of the control protocol (see ARCHITECTURE.md, "Control protocol").

The daemon writes ``$NIGHTSHIFT_RUN_DIR/control.json`` = {"seq", "command", "checkpoint_interval"}
atomically and sends SIGUSR1. The signal handler only sets a flag; the file is read at the next
step boundary when the flag is set *and* at least once a second regardless, so a lost signal (or
a daemon that restarted and re-wrote the file) still takes effect within a second. Each seq is
acted on once. The file is the state, the signal only a hint.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

COMMANDS = ("run", "checkpoint", "hold", "exit")


class ControlChannel:
    def __init__(self, run_dir: str | os.PathLike, poll_s: float = 1.0):
        self.path = Path(run_dir) / "control.json"
        self.poll_s = poll_s
        self._flag = False
        self._next_check = 0.0
        self.command = "run"
        self.interval: int | None = None
        self.seen_seq = self._initial_seq()
        try:
            signal.signal(signal.SIGUSR1, self._on_signal)
        except ValueError:  # not the main thread: polling alone still works
            pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._flag = True  # only record it: the step boundary does the work

    def _read(self) -> dict[str, Any] | None:
        # A read, not a stat-and-compare: control.json is replaced by rename, and two writes in
        # one timestamp tick with a recycled inode would look unchanged to a stat; reading a tiny
        # file once a second costs about as much as the stat.
        try:
            d = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable now (a foreign writer mid-write?): the next check retries
        return d if isinstance(d, dict) else None

    def _initial_seq(self) -> int:
        """Commands written before this process started are history, except a hold or exit still
        in force (the daemon restarted us while paused, or restarted itself): those apply."""
        d = self._read()
        if not d:
            return 0
        seq = _int(d.get("seq"))
        return seq - 1 if d.get("command") in ("hold", "exit") else seq

    def restore_default_signal(self) -> None:
        """After the loop ends a late SIGUSR1 must not kill a finished job (Python restores the
        default action, terminate, at interpreter shutdown), so it is ignored from now on."""
        try:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        except ValueError:
            pass

    def poll(self, force: bool = False) -> tuple[str, int] | None:
        """A new (command, seq) to act on, or None. Cheap: one read a second unless signalled."""
        now = time.monotonic()
        if not (force or self._flag or now >= self._next_check):
            return None
        self._next_check = now + self.poll_s
        self._flag = False  # cleared before the read: a signal arriving during it is kept
        d = self._read()
        if not d:
            return None
        interval = _int(d.get("checkpoint_interval"))
        if interval > 0:
            self.interval = interval
        command = str(d.get("command", "run"))
        if command not in COMMANDS:
            return None  # a newer daemon's command: ignore rather than guess
        self.command = command
        seq = _int(d.get("seq"))
        if seq <= self.seen_seq:
            return None
        self.seen_seq = seq
        return command, seq


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0
