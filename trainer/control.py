"""Job side of the control protocol (trainer/protocol.py, ARCHITECTURE.md "Control protocol").

The daemon writes ``$NIGHTSHIFT_RUN_DIR/control.json`` = {"hold", "commands", "checkpoint_interval"}
atomically and sends SIGUSR1. The signal handler only sets a flag; the file is read at the next
step boundary when the flag is set *and* at least once a second regardless, so a lost signal (or
a daemon that restarted and re-wrote the file) still takes effect within a second.

``hold`` is a state the job converges on; ``commands`` are one-shot (checkpoint, exit), each
acted on once by its seq. The daemon clears the command list before it starts a job, so every
command in the file when this process starts was meant for it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from trainer.protocol import CONTROL_FILE, ONE_SHOT_COMMANDS


class ControlChannel:
    def __init__(self, run_dir: str | os.PathLike, poll_s: float = 1.0):
        self.path = Path(run_dir) / CONTROL_FILE
        self.poll_s = poll_s
        self._flag = False
        self._next_check = 0.0
        self.hold = False
        self.interval: int | None = None
        self.seen_seq = 0
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
        except (OSError, ValueError):
            return None  # absent, or unreadable now: the next check retries
        return d if isinstance(d, dict) else None

    def restore_default_signal(self) -> None:
        """After the loop ends a late SIGUSR1 must not kill a finished job (Python restores the
        default action, terminate, at interpreter shutdown), so it is ignored from now on."""
        try:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        except ValueError:
            pass

    def poll(self, force: bool = False) -> list[tuple[str, int]]:
        """New one-shot (command, seq) pairs in seq order, and ``self.hold`` brought up to date.
        Cheap: one read a second unless signalled."""
        now = time.monotonic()
        if not (force or self._flag or now >= self._next_check):
            return []
        self._next_check = now + self.poll_s
        self._flag = False  # cleared before the read: a signal arriving during it is kept
        d = self._read()
        if not d:
            return []
        interval = _int(d.get("checkpoint_interval"))
        if interval > 0:
            self.interval = interval
        self.hold = d.get("hold") is True
        out = []
        cmds = d.get("commands")
        for c in sorted((c for c in cmds if isinstance(c, dict)) if isinstance(cmds, list) else [],
                        key=lambda c: _int(c.get("seq"))):
            seq, command = _int(c.get("seq")), c.get("command")
            if seq <= self.seen_seq:
                continue
            self.seen_seq = seq
            if command in ONE_SHOT_COMMANDS:  # a newer daemon's command: skipped, not guessed
                out.append((str(command), seq))
        return out


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0
