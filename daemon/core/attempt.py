"""The job's current attempt here, as the Supervisor remembers it between ticks.

What it was started with (the resume it was given, the checkpoint step it resumed from, the
adopted copy it was resumed from), what was last heard from it (its last record, since when it
looks hung) and why the daemon asked it to end. A new ``Attempt`` at each start, so nothing of an
earlier attempt leaks into the next; its exit (``ended``) hands over what the exit is judged by
and keeps only what status still shows (the resume step, the last record's time).
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.core.intent import ExitIntent
from daemon.policy.scriptckpt import Resumed


@dataclass
class Attempt:
    resume_passed: str = ""  # NIGHTSHIFT_RESUME it was given (daemon/job/resume.py)
    resume_step: int | None = None  # the checkpoint step it resumed from (status)
    resumed: Resumed | None = None  # the adopted copy it resumed from: the restore chain's, once
    record_seen_at: float | None = None  # (mono) when its last record was read
    suspect_since: float | None = None  # (mono) since when it looks hung
    exit_intent: ExitIntent | None = None  # why the daemon asked it to end

    def ended(self) -> tuple[ExitIntent | None, Resumed | None]:
        """It has exited: why it was asked to (None: it was not) and the adopted copy it resumed
        from, each handed over once; a dead job is not suspected of hanging."""
        intent, resumed = self.exit_intent, self.resumed
        self.exit_intent = self.resumed = self.suspect_since = None
        return intent, resumed
