"""The values of queued runs' env (``[[queue]] env``, ``nightshift queue add --env K=V``), kept
out of the store the way ``[job] env`` is: the queue table and ``runs.env`` hold only the names
(values "<redacted>"), and GET /queue and /runs (no token needed) never show a value.

The values live here: in memory, and one file per entry, ``<state_dir>/queue-env/<id>.json``
(the directory 0700, each file 0600, written atomically), so a queued run still gets its env
after a daemon restart and an add writes that entry's few bytes, however long the queue (one
file for every entry made each add rewrite them all: O(n)). An entry's file goes when the entry
is removed from the queue; a run started from it keeps its values (it may be resumed, and
``nightshift runs`` compares runs' env values, shown redacted, in ``changes``).
``[[queue]]`` values are also in the config file, the way ``[job] env`` is. A write failure
(read-only or full disk) is logged once and the values stay in memory.

The older single file, ``<state_dir>/queue-env.json``, is moved into the directory at the first
start (a crash meanwhile: the next start moves it again; read-only, it is only read).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

OLD_FILE = "queue-env.json"  # before: every entry's values in one file
DIR = "queue-env"


def _load(text: str) -> dict[str, str] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return {str(n): str(v) for n, v in data.items()} if isinstance(data, dict) else None


class QueueEnv:
    def __init__(self, state_dir: str | os.PathLike, read_only: bool = False):
        self.dir = Path(state_dir) / DIR
        self.old = Path(state_dir) / OLD_FILE
        self.read_only = read_only
        self._env: dict[str, dict[str, str]] = {}  # read or written so far
        self._warned = False
        self._migrate()

    def _migrate(self) -> None:
        try:
            data = json.loads(self.old.read_text())
        except (OSError, ValueError):
            return  # none (the usual case), or unreadable: its entries run without their values
        entries = {str(k): {str(n): str(v) for n, v in e.items()}
                   for k, e in data.items() if isinstance(e, dict)} if isinstance(data, dict) else {}
        if self.read_only:
            self._env.update(entries)  # a stopped daemon's files are only read
            return
        ok = all(self._write(k, e) for k, e in entries.items())
        if ok:
            try:
                self.old.unlink()
            except OSError as e:
                log.warning("cannot remove %s after moving it into %s: %s", self.old, self.dir, e.strerror)

    def get(self, entry_id: int | None) -> dict[str, str] | None:
        if entry_id is None:
            return None
        key = str(entry_id)
        if key not in self._env:
            try:
                got = _load((self.dir / f"{key}.json").read_text())
            except OSError:
                return None  # no values for this entry (or unreadable: its names run without them)
            if got is None:
                return None
            self._env[key] = got
        return self._env[key]

    def put(self, entry_id: int, env: dict[str, str]) -> None:
        if not env:
            return
        self._write(str(entry_id), dict(env))

    def drop(self, entry_id: int | None) -> None:
        """The entry was removed from the queue (it will never run): its values go."""
        if entry_id is None or self.read_only:
            return
        self._env.pop(str(entry_id), None)
        try:
            (self.dir / f"{entry_id}.json").unlink(missing_ok=True)
        except OSError as e:
            log.warning("cannot remove the env values of queue entry #%s: %s", entry_id, e.strerror)

    def _write(self, key: str, env: dict[str, str]) -> bool:
        """This entry's file alone, atomically (temp file, fsync, rename, the directory fsynced)."""
        self._env[key] = env
        tmp = self.dir / f".{key}.json.{os.getpid()}"
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(env, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / f"{key}.json")
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)  # the rename itself survives a power cut
            finally:
                os.close(dfd)
            return True
        except OSError as e:
            if not self._warned:
                log.warning("cannot write %s (%s): queued runs' env values are kept in memory "
                            "only until the daemon stops", self.dir, e.strerror)
                self._warned = True
            return False
