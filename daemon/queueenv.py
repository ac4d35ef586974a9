"""The values of queued runs' env (``[[queue]] env``, ``nightshift queue add --env K=V``), kept
out of the store the way ``[job] env`` is: the queue table and ``runs.env`` hold only the names
(values "<redacted>"), and GET /queue and /runs (no token needed) never show a value.

The values live here: in memory, and in ``<state_dir>/queue-env.json`` (0600, written
atomically) so a queued run still gets its env after a daemon restart. ``[[queue]]`` values are
also in the config file, the way ``[job] env`` is; a write failure (read-only or full disk) is
logged once and the values stay in memory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

FILE = "queue-env.json"


class QueueEnv:
    def __init__(self, state_dir: str | os.PathLike):
        self.path = Path(state_dir) / FILE
        self._env: dict[str, dict[str, str]] = {}
        self._warned = False
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self._env = {str(k): {str(n): str(v) for n, v in e.items()}
                             for k, e in data.items() if isinstance(e, dict)}
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or unreadable: entries then run with their names' values unknown

    def get(self, entry_id: int | None) -> dict[str, str] | None:
        return None if entry_id is None else self._env.get(str(entry_id))

    def put(self, entry_id: int, env: dict[str, str]) -> None:
        if not env:
            return
        self._env[str(entry_id)] = dict(env)
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(f".{FILE}.{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self._env, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            if not self._warned:
                log.warning("cannot write %s (%s): queued runs' env values are kept in memory "
                            "only until the daemon stops", self.path, e.strerror)
                self._warned = True
