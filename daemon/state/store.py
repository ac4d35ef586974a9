"""The state store: one SQLite file in WAL mode holding runs, events, resets, checkpoints, readings.

A run is a first-class row (never a global), so a daemon restarted after any stop, kill -9
included, continues the same run with the same counts, and a queue of runs fits later.
Every write is its own short transaction: a crash loses at most the write in flight.
Used from the daemon's event loop thread and, read-only, from the HTTP handlers (same thread).

A sick disk never stops the daemon (issue 13): every statement goes through ``_Guarded``.
- A corrupt file (not a database, or failing ``PRAGMA quick_check``) is moved aside as
  ``nightshift.db.corrupt-<time>`` and a fresh one started, with a ``store_corrupt`` event; the
  run then continues from its checkpoints on disk.
- A write that fails for lack of space or a read-only file or file system (ENOSPC, EROFS,
  SQLite's "database or disk is full", "readonly database", "disk I/O error") is kept in a
  bounded in-memory queue and retried, in order, before the next write (``retry_pending()``
  retries on demand); meanwhile ``problem`` says what is wrong and where. A queued INSERT gets
  its id allocated at once, so ``create_run`` still returns the run's id.
- A file that cannot be opened at all (a read-only state dir on first start) gives an
  in-memory store for this process, and ``problem`` says so.
- The state dir is 0700 and the file 0600: the store holds the run's config and events.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypedDict, Unpack, cast

from daemon.policy.jsonvalue import JSON, JSONObject
from daemon.policy.records import Temps
from daemon.policy.states import ENDED_STATES as TERMINAL_STATES  # a stopped run is continued
from daemon.state.config import REDACTED  # the names of env vars stay, never values

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    total_steps INTEGER,
    step INTEGER,
    restarts INTEGER NOT NULL DEFAULT 0,
    code_errors INTEGER NOT NULL DEFAULT 0,
    resets INTEGER NOT NULL DEFAULT 0,
    pauses INTEGER NOT NULL DEFAULT 0,
    has_run INTEGER NOT NULL DEFAULT 0,
    job_pid INTEGER,
    job_create_time REAL,
    backend TEXT NOT NULL DEFAULT 'local',
    remote_call_id TEXT,
    remote_started REAL,
    cloud_seconds REAL NOT NULL DEFAULT 0,
    cloud_cost_usd REAL NOT NULL DEFAULT 0,
    failure TEXT,
    last_error_sig TEXT,
    skip_steps TEXT NOT NULL DEFAULT '',
    user_hold INTEGER NOT NULL DEFAULT 0,
    restart_times TEXT NOT NULL DEFAULT '[]',
    remote_backend TEXT,
    resume_from TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id INTEGER,
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, id);
CREATE TABLE IF NOT EXISTS resets (
    id INTEGER PRIMARY KEY,
    run_id INTEGER,
    t REAL NOT NULL,
    sources TEXT NOT NULL,
    signature TEXT,
    lines TEXT NOT NULL,
    temps TEXT NOT NULL,
    step INTEGER,
    kind TEXT NOT NULL DEFAULT 'reset',
    info TEXT
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    run_id INTEGER,
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    t REAL NOT NULL,
    bytes INTEGER,
    stall_s REAL,
    persist_s REAL,
    UNIQUE(run_id, path)
);
CREATE TABLE IF NOT EXISTS readings (
    run_id INTEGER,
    t REAL NOT NULL,
    edge_c REAL,
    tctl_c REAL,
    power_w REAL,
    busy_pct REAL,
    step INTEGER,
    loss REAL
);
CREATE INDEX IF NOT EXISTS readings_run ON readings(run_id, t);
CREATE TABLE IF NOT EXISTS memory (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY,
    pos REAL NOT NULL,
    name TEXT NOT NULL,
    command TEXT NOT NULL,
    resume_command TEXT,
    env TEXT NOT NULL DEFAULT '{}',
    total_steps INTEGER,
    state TEXT NOT NULL DEFAULT 'waiting',
    run_id INTEGER,
    source TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_waiting ON queue(state, pos);
CREATE INDEX IF NOT EXISTS queue_pos ON queue(pos);
"""

_RUN_FIELDS = {
    "state", "total_steps", "step", "restarts", "code_errors", "resets", "pauses", "has_run",
    "job_pid", "job_create_time", "backend", "remote_call_id", "remote_started", "cloud_seconds",
    "cloud_cost_usd", "failure", "last_error_sig", "skip_steps", "updated", "user_hold",
    "restart_times", "remote_backend", "resume_from", "command", "env", "queue_id", "best_loss",
    "best_step", "climb_step", "final_loss", "ended", "night_start",
    "steps_lost", "max_step",  # counters that outlive the daemon (issue 25)
    "resume_command", "workdir", "config_hash", "created",  # a run's history (daemon/night/runbook.py)
    "remote_state",  # the remote run's record (daemon/remote_run.Record)
    "backends",  # where the run has run, "+"-joined ("local+modal"; daemon/runbook.ran_on)
}
# Columns added after the first release: (name, declaration), added to an older file on open.
_ADDED_COLUMNS = (("user_hold", "INTEGER NOT NULL DEFAULT 0"),
                  ("restart_times", "TEXT NOT NULL DEFAULT '[]'"),
                  ("remote_backend", "TEXT"), ("resume_from", "TEXT"),
                  # a night's queue: what the run ran, and its fingerprint (issue 14)
                  ("command", "TEXT"), ("env", "TEXT"), ("queue_id", "INTEGER"),
                  ("best_loss", "REAL"), ("best_step", "INTEGER"), ("climb_step", "INTEGER"),
                  ("final_loss", "REAL"), ("ended", "REAL"),
                  # when the night's queue began: [schedule] deadline_after_s counts from it
                  ("night_start", "REAL"),
                  # a run's own history, recorded at creation (issue 28, daemon/night/runbook.py)
                  ("resume_command", "TEXT"), ("workdir", "TEXT"), ("config_hash", "TEXT"),
                  # the remote run's record (daemon/remote_run.Record, JSON): what follows the
                  # pull, the cancel asked/confirmed, deaths per backend, a launch in flight
                  ("remote_state", "TEXT"),
                  # steps recomputed after restarts, the furthest step reached (issue 25)
                  ("steps_lost", "INTEGER NOT NULL DEFAULT 0"), ("max_step", "INTEGER"),
                  # where the run has run (its history: remote_backend is cleared after a pull)
                  ("backends", "TEXT"))




# The rows as the readers below return them: SQLite's columns with their declared types (a
# JSON column decoded where the reader says so). tests/test_store_rows.py keeps each TypedDict
# equal to its table's columns.
class RunFields(TypedDict, total=False):
    """The run columns ``update_run`` may write (``_RUN_FIELDS``), each optional there."""

    state: str
    total_steps: int | None
    step: int | None
    restarts: int
    code_errors: int
    resets: int
    pauses: int
    has_run: int  # 0/1 (True is stored as 1)
    job_pid: int | None
    job_create_time: float | None
    backend: str
    remote_call_id: str | None
    remote_started: float | None
    cloud_seconds: float
    cloud_cost_usd: float
    failure: str | None
    last_error_sig: str | None
    skip_steps: str  # "a-b,c-d": step ranges a rollback skips
    updated: float
    user_hold: int  # 0/1
    restart_times: str  # JSON list of monotonic-free wall times
    remote_backend: str | None
    resume_from: str | None
    command: str | None  # JSON list: what the run ran
    env: str | None  # JSON object: env names, values redacted
    queue_id: int | None
    best_loss: float | None
    best_step: int | None
    climb_step: int | None
    final_loss: float | None
    ended: float | None
    night_start: float | None
    steps_lost: int
    max_step: int | None
    resume_command: str | None  # JSON list
    workdir: str | None
    config_hash: str | None
    created: float
    remote_state: str | None  # JSON: daemon/remote_run.Record
    backends: str | None  # where the run has run, "+"-joined ("local+modal"; runbook.ran_on)


class RunRow(RunFields, total=False):
    """A ``runs`` row. Read whole from SQLite, every key is there; total=False because "no
    run yet" is the empty row ``{}`` to its readers (Supervisor.run)."""

    id: int
    name: str
    config: str  # JSON: the run's public config (config.public_config)


class QueueRow(TypedDict):
    id: int
    pos: float
    name: str
    command: list[str]
    resume_command: list[str] | None
    env: dict[str, str]  # names -> "<redacted>": the values live in queueenv.QueueEnv
    total_steps: int | None
    state: str  # waiting | started | removed
    run_id: int | None
    source: str  # "config" | "api" | "cli" ...
    created: float


class EventRow(TypedDict):
    id: int
    run_id: int | None
    t: float
    kind: str
    level: str  # info | warn | error
    message: str
    data: JSONObject | None


class ResetRow(TypedDict):
    id: int
    run_id: int | None
    t: float
    sources: list[str]
    signature: str | None
    lines: list[str]
    temps: Temps
    step: int | None
    kind: str  # reset | soft_recovery | fault
    info: JSONObject | None


class CheckpointRow(TypedDict):
    id: int
    run_id: int | None
    step: int
    path: str
    t: float
    bytes: int | None
    stall_s: float | None
    persist_s: float | None


class ReadingRow(TypedDict):
    run_id: int | None
    t: float
    edge_c: float | None
    tctl_c: float | None
    power_w: float | None
    busy_pct: float | None
    step: int | None
    loss: float | None


log = logging.getLogger(__name__)
MAX_PENDING = 10_000  # queued writes while the disk is full; the oldest are dropped beyond
_WRITE_FAULTS = ("database or disk is full", "readonly database", "read-only file system",
                 "disk i/o error", "no space left", "unable to open database file")
_INSERT = re.compile(r"^\s*INSERT (OR IGNORE )?INTO (runs|events|resets|checkpoints)\((.*?)\) VALUES \(",
                     re.S)


def _why(e: BaseException) -> str:
    text = str(e).lower()
    if "full" in text or "no space" in text:
        return "the disk is full"
    if "readonly" in text or "read-only" in text:
        return "the file or its file system is read-only"
    return str(e)


class _NoRows:
    """What a failed read or a queued write returns: no rows, and the allocated id if any."""

    def __init__(self, lastrowid: int | None = None):
        self.lastrowid = lastrowid

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[sqlite3.Row]:
        return []

    def __iter__(self) -> Iterator[sqlite3.Row]:
        return iter(())


class _Guarded:
    """The connection, with disk faults turned into a queue and a ``problem`` (see above)."""

    def __init__(self, conn: sqlite3.Connection, store: Store):
        self.conn = conn
        self.store = store
        self.pending: collections.deque[tuple[str, tuple[object, ...]]] = collections.deque()
        self.dropped = 0
        self.why = "a write failed"
        self._next_id: dict[str, int] = {}

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Cursor | _NoRows:
        if sql.lstrip()[:6].upper() in ("SELECT", "PRAGMA"):
            try:
                return self.conn.execute(sql, args)
            except sqlite3.DatabaseError as e:
                self.store._fault(f"cannot read {self.store.path}: {_why(e)}")
                return _NoRows()
        args = tuple(args)
        if self.pending and not self.retry():
            return self._queue(sql, args)
        try:
            cur = self.conn.execute(sql, args)
        except sqlite3.OperationalError as e:
            if not any(f in str(e).lower() for f in _WRITE_FAULTS):
                raise
            return self._queue(sql, args, e)
        m = _INSERT.match(sql)
        if m and cur.lastrowid:
            self._next_id[m.group(2)] = max(self._next_id.get(m.group(2), 0), cur.lastrowid + 1)
        return cur

    def _queue(self, sql: str, args: tuple[object, ...], e: BaseException | None = None) -> _NoRows:
        rowid = None
        m = _INSERT.match(sql)
        if m:  # allocate the id now: the caller (create_run) needs it
            table = m.group(2)
            try:
                top = self.conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
            except sqlite3.DatabaseError:
                top = 0
            rowid = max(top + 1, self._next_id.get(table, 0))
            self._next_id[table] = rowid + 1
            sql = sql[:m.start(3)] + "id, " + sql[m.start(3):m.end()] + "?, " + sql[m.end():]
            args = (rowid, *args)
        if len(self.pending) >= MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1
        self.pending.append((sql, args))
        if e is not None:
            self.why = _why(e)
        dropped = f", {self.dropped} dropped" if self.dropped else ""
        problem = (f"cannot write {self.store.path}: {self.why}; {len(self.pending)} write(s) "
                   f"kept in memory{dropped} and retried (free space or fix the permissions of "
                   f"{self.store.path.parent})")
        if self.store.problem is None or e is not None and self.why not in self.store.problem:
            self.store._fault(problem)  # logged when it starts or its cause changes
        self.store.problem = problem
        return _NoRows(rowid)

    def retry(self) -> bool:
        """Write the queued statements in order; True when none is left."""
        while self.pending:
            sql, args = self.pending[0]
            try:
                self.conn.execute(sql, args)
            except sqlite3.IntegrityError:
                pass  # an id taken meanwhile (INSERT OR IGNORE semantics): drop that write
            except sqlite3.DatabaseError:
                return False
            self.pending.popleft()
        # clear only a problem the queue raised: an in-memory fallback (the file could not be
        # opened at all) stays said until restart -- the per-tick retry used to erase it at once
        if self.store.problem is not None and "keeping state in memory" not in self.store.problem:
            log.warning("the state store is writable again: %s", self.store.path)
            self.store.problem = None
            self.dropped = 0
        return True


class Store:
    """SQLite-backed state. ``clock`` is injected so replays and tests control time.

    ``problem`` is None, or one line saying what is wrong with the file and where."""
    def __init__(self, path: str | Path, clock=time.time):
        self.path = Path(path)
        self.clock = clock
        self.problem: str | None = None
        self.moved_aside: Path | None = None  # where a corrupt file went
        # Run rows read once and written through: the Supervisor reads its run several times a
        # tick, and this Store is the only writer of the runs table while the daemon holds the
        # state dir's lock (issue 30: the row used to be a SELECT on each access).
        self._runs: dict[int, RunRow] = {}
        self._run_types: dict[str, str] = {}  # column -> declared type, for the write-through
        self._cache_runs = True
        _private_dir(self.path.parent)
        try:
            conn = self._open(self.path)
        except OSError as e:  # the file cannot even be created: a read-only state dir
            conn = self._open_in_memory(e)
        except sqlite3.OperationalError as e:  # "database is locked" is no corruption: raise
            if not any(f in str(e).lower() for f in _WRITE_FAULTS):
                raise
            conn = self._open_in_memory(e)
        except sqlite3.DatabaseError as e:  # not a database, malformed, failed quick_check
            conn = self._move_aside_and_open(e)
        self.db: _Guarded | sqlite3.Connection = _Guarded(conn, self)
        if self.moved_aside:
            self.add_event(None, "store_corrupt", f"{self.path} was corrupt; moved aside to "
                           f"{self.moved_aside.name} and a fresh store started (the run goes on "
                           "from its checkpoints)", "error")

    @classmethod
    def open_read_only(cls, path: str | Path) -> Store:
        """The store of a daemon that is not running, for the CLI (`runs`, `events`, `queue`,
        `status` in the morning): never written, never migrated, and it never holds a lock a
        daemon starting meanwhile would wait on (WAL readers do not block the writer).
        FileNotFoundError when there is no database; sqlite3.Error when it cannot be read."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(str(p))
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=1000")
        db.execute("PRAGMA query_only=1")
        db.execute("SELECT COUNT(*) FROM runs").fetchone()  # fails here, not later, if unreadable
        self = cls.__new__(cls)
        self.path, self.clock, self.problem, self.moved_aside = p, time.time, None, None
        self.db = db  # reads only: no write queue to guard
        self._runs, self._run_types = {}, {}
        self._cache_runs = False  # another process (a daemon starting) may write meanwhile
        return self

    def _open(self, path: Path | str) -> sqlite3.Connection:
        if path != ":memory:":
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        # isolation_level=None: autocommit; each statement is its own transaction.
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            db.executescript(_SCHEMA)
            # _migrate runs on the bare connection: a fault here is a fault at open
            self.db = db
            self._migrate()
        except BaseException:
            db.close()
            raise
        for suffix in ("", "-wal", "-shm"):
            _private_file(Path(f"{path}{suffix}"))
        return db

    def _move_aside_and_open(self, e: BaseException) -> sqlite3.Connection:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(self.clock()))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        log.error("%s is corrupt (%s); moving it aside to %s and starting a fresh one",
                  self.path, e, aside.name)
        for suffix in ("", "-wal", "-shm"):
            try:
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            except FileNotFoundError:
                pass
        self.moved_aside = aside
        return self._open(self.path)

    def _open_in_memory(self, e: BaseException) -> sqlite3.Connection:
        why = e.strerror if isinstance(e, OSError) and e.strerror else _why(e)
        self._fault(f"cannot open {self.path}: {why}; keeping state in memory until "
                    f"restarted (make {self.path.parent} writable)")
        return self._open(":memory:")

    def _fault(self, problem: str) -> None:
        if problem != self.problem:
            log.error("state store: %s", problem)
        self.problem = problem

    def retry_pending(self) -> bool:
        """Retry the writes queued while the disk was full or read-only; True when all done.
        Also (each poll) notices a deleted WAL file, see ``_durable``."""
        self._check_wal()
        return self.db.retry() if isinstance(self.db, _Guarded) else True

    # A deleted -wal file (a cleaner, a user tidying the state dir) does not stop SQLite: it
    # writes on into the unlinked file, and a crash then loses every write not yet
    # checkpointed into the database file -- the user's pause and the queue edits with them.
    # So what the user asked for is checkpointed at once (``_durable``), and a WAL found
    # missing is checkpointed and created anew.
    def _durable(self) -> None:
        """Copy the WAL into the database file now (fsynced): the writes so far survive a
        crash even if the WAL file is lost."""
        if self.problem is not None:
            return
        try:
            getattr(self.db, "conn", self.db).execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.DatabaseError:
            pass  # the WAL still has it; a full or read-only disk is said by the writes

    def _check_wal(self) -> None:
        if self.problem is not None or not self.path.exists():
            return
        wal = Path(f"{self.path}-wal")
        if wal.exists():
            return
        try:
            conn = getattr(self.db, "conn", self.db)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA journal_mode=WAL")  # a new -wal file
        except sqlite3.DatabaseError as e:
            log.warning("the state store's WAL file %s was deleted; could not recreate it: %s",
                        wal, _why(e))
            return
        _private_file(wal)
        log.warning("the state store's WAL file %s had been deleted; its writes are now in %s "
                    "and a new WAL file is in use", wal, self.path.name)

    @property
    def pending_writes(self) -> int:
        return len(self.db.pending) if isinstance(self.db, _Guarded) else 0

    def _migrate(self) -> None:
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(runs)")}
        for name, decl in _ADDED_COLUMNS:
            if name not in have:
                self.db.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
        # GPU incidents have kinds (issue 26): reset, soft_recovery, fault; info = label, device...
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(resets)")}
        for name, decl in (("kind", "TEXT NOT NULL DEFAULT 'reset'"), ("info", "TEXT")):
            if name not in have:
                self.db.execute(f"ALTER TABLE resets ADD COLUMN {name} {decl}")

    def close(self) -> None:
        self.retry_pending()
        self.db.close()

    # -- runs -------------------------------------------------------------------------------
    def create_run(self, name: str, config: Mapping[str, object], total_steps: int | None,
                   run_id: int | None = None, created: float | None = None) -> int:
        """``run_id``/``created``: re-create a run found on disk after the database was lost
        (its run dir and checkpoint namespace keep their number)."""
        now = self.clock()
        if run_id is not None:
            self._runs.pop(run_id, None)
        cur = self.db.execute(
            "INSERT INTO runs(id, name, created, updated, state, config, total_steps) VALUES (?,?,?,?,?,?,?)",
            (run_id, name, now if created is None else created, now, "idle",
             json.dumps(config, default=str), total_steps),
        )
        return run_id if run_id is not None else _rowid(cur)

    def runs(self) -> list[RunRow]:
        """Every run, oldest first."""
        return [_run_row(r) for r in self.db.execute("SELECT * FROM runs ORDER BY id")]

    # -- what the daemon learns about this machine (e.g. the governor's sustainable clock) --
    def remember(self, key: str, value: JSONObject) -> None:
        self.db.execute("INSERT INTO memory(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                        "SET value=excluded.value", (key, json.dumps(value)))

    def recall(self, key: str) -> JSONObject | None:
        """What ``remember`` stored under ``key`` (an object), None when nothing was."""
        row = self.db.execute("SELECT value FROM memory WHERE key=?", (key,)).fetchone()
        value: JSON = json.loads(row[0]) if row else None
        return value if isinstance(value, dict) else None

    # -- the queue (edited through the Supervisor only: one writer) -------------------------
    def queue_add(self, name: str, command: list[str], env: dict[str, str], source: str,
                  resume_command: list[str] | None = None, total_steps: int | None = None,
                  entry_id: int | None = None, state: str = "waiting", run_id: int | None = None) -> int:
        """``entry_id``/``state``/``run_id``: an entry re-created from a run's own files after
        the store was lost (its env values are still kept under that id)."""
        row = self.db.execute("SELECT MAX(pos) FROM queue").fetchone()
        pos = (row[0] if row and row[0] is not None else 0.0) + 1.0
        cur = self.db.execute(
            "INSERT INTO queue(id, pos, name, command, resume_command, env, total_steps, source, created, "
            "state, run_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (entry_id, pos, name, json.dumps(command), json.dumps(resume_command) if resume_command else None,
             json.dumps(_names_only(env)), total_steps, source, self.clock(), state, run_id))
        self._durable()  # a queue edit is the user's: it must survive a lost WAL
        return entry_id if entry_id is not None else _rowid(cur)

    def queue_next_id(self) -> int:
        """The id the next entry will most likely get (a default name), from the rowid index."""
        row = self.db.execute("SELECT MAX(id) FROM queue").fetchone()
        return (row[0] if row and row[0] is not None else 0) + 1

    def queue_position(self, entry_id: int) -> int:
        """A waiting entry's place in the queue (1 = next), by the (state, pos) index."""
        row = self.db.execute("SELECT COUNT(*) FROM queue WHERE state='waiting' AND pos <= "
                              "(SELECT pos FROM queue WHERE id=?)", (entry_id,)).fetchone()
        return int(row[0]) if row else 0

    def take_queue_env(self) -> dict[int, dict[str, str]]:
        """Env values an older version stored in the queue table: returned (for QueueEnv) and
        replaced by their names there and in runs.env, so the file holds no value any more."""
        found: dict[int, dict[str, str]] = {}
        for r in self.db.execute("SELECT id, env FROM queue").fetchall():
            env = json.loads(r["env"] or "{}")
            if any(v != REDACTED for v in env.values()):
                found[int(r["id"])] = env
                self.db.execute("UPDATE queue SET env=? WHERE id=?", (json.dumps(_names_only(env)), r["id"]))
        for r in self.db.execute("SELECT id, env FROM runs WHERE env IS NOT NULL").fetchall():
            env = json.loads(r["env"] or "{}")
            if any(v != REDACTED for v in env.values()):
                self.db.execute("UPDATE runs SET env=? WHERE id=?", (json.dumps(_names_only(env)), r["id"]))
                self._runs.pop(int(r["id"]), None)
        return found

    def queue(self, waiting_only: bool = True) -> list[QueueRow]:
        sql = "SELECT * FROM queue" + (" WHERE state='waiting'" if waiting_only else "") + " ORDER BY pos, id"
        return [_queue_row(r) for r in self.db.execute(sql)]

    def queue_entry(self, entry_id: int) -> QueueRow | None:
        """One entry by its id (the primary key: O(1) in the queue's length)."""
        row = self.db.execute("SELECT * FROM queue WHERE id=?", (entry_id,)).fetchone()
        return _queue_row(row) if row else None

    def queue_set(self, entry_id: int, **fields: int | float | str | None) -> None:
        bad = set(fields) - {"state", "run_id", "pos"}
        if bad:
            raise KeyError(f"unknown queue fields: {sorted(bad)}")
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE queue SET {cols} WHERE id=?", (*fields.values(), entry_id))
        self._durable()

    def get_run(self, run_id: int) -> RunRow | None:
        """A copy of the run's row (the caller may change it; the cache stays the store's).
        While writes wait on a sick disk the row is read from the file, as it is there (the
        cache is for the common case, and a queued write must not show before it lands)."""
        cached = self._runs.get(run_id) if self._cache_runs and not self.pending_writes else None
        if cached is None:
            row = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            self._runs.pop(run_id, None)
            if not row:
                return None
            cached = _run_row(row)
            if self._cache_runs and not self.pending_writes:
                self._runs[run_id] = cached
        return cached.copy()

    def current_run(self) -> RunRow | None:
        """The newest run that has not ended (the one a restarted daemon continues)."""
        q = "SELECT * FROM runs WHERE state NOT IN ({}) ORDER BY id DESC LIMIT 1".format(
            ",".join("?" * len(TERMINAL_STATES)))
        row = self.db.execute(q, tuple(TERMINAL_STATES)).fetchone()
        return _run_row(row) if row else None

    def latest_run(self) -> RunRow | None:
        row = self.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return _run_row(row) if row else None

    def update_run(self, run_id: int, **fields: Unpack[RunFields]) -> None:
        bad = set(fields) - _RUN_FIELDS
        if bad:
            raise KeyError(f"unknown run fields: {sorted(bad)}")
        fields.setdefault("updated", self.clock())
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE runs SET {cols} WHERE id=?", (*fields.values(), run_id))
        if "user_hold" in fields or "state" in fields:  # the user's pause; a run's end
            self._durable()
        if self.pending_writes:  # queued, not written: read back from the file until it lands
            self._runs.pop(run_id, None)
        elif run_id in self._runs:  # written through: what was written is what is read back
            cached: dict[str, object] = dict(self._runs[run_id])
            cached.update({k: self._as_stored(k, v) for k, v in fields.items()})
            self._runs[run_id] = cast(RunRow, cached)  # RunFields' values, as SQLite stores them

    def _as_stored(self, column: str, value: object) -> object:
        """``value`` as SQLite hands it back from ``runs.column`` (its type affinity: True is
        1, an int in a REAL column 1.0), so a cached row reads the same as a fresh SELECT."""
        if not self._run_types:
            self._run_types = {r[1]: r[2].upper() for r in self.db.execute("PRAGMA table_info(runs)")}
        kind = self._run_types.get(column, "")
        if isinstance(value, bool):
            value = int(value)
        if kind == "REAL" and isinstance(value, int):
            return float(value)
        if kind == "INTEGER" and isinstance(value, float) and value.is_integer():
            return int(value)
        if kind == "TEXT" and isinstance(value, int):
            return str(value)
        return value

    def increment(self, run_id: int, field: str, by: int | float = 1) -> None:
        if field not in _RUN_FIELDS:
            raise KeyError(field)
        now = self.clock()
        self.db.execute(f"UPDATE runs SET {field}={field}+?, updated=? WHERE id=?", (by, now, run_id))
        row = self._runs.get(run_id)
        if self.pending_writes:
            self._runs.pop(run_id, None)
        elif row is not None:
            cached: dict[str, object] = dict(row)
            old = cached[field]
            if isinstance(old, (int, float)):  # NULL + n is NULL: None stays
                cached[field] = old + by
            cached["updated"] = now
            self._runs[run_id] = cast(RunRow, cached)  # a numeric column, a number added

    # -- events -----------------------------------------------------------------------------
    def add_event(self, run_id: int | None, kind: str, message: str, level: str = "info",
                  data: Mapping[str, object] | None = None, t: float | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO events(run_id, t, kind, level, message, data) VALUES (?,?,?,?,?,?)",
            (run_id, self.clock() if t is None else t, kind, level, message,
             json.dumps(data, default=str) if data is not None else None),
        )
        return _rowid(cur)

    def events(self, run_id: int | None = None, limit: int = 50, before_id: int | None = None,
               kind: str | None = None) -> list[EventRow]:
        """Newest first. Filter by run, by kind, and page with ``before_id``."""
        sql, args = _where("SELECT * FROM events", [("run_id=?", run_id), ("id<?", before_id),
                                                    ("kind=?", kind)])
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(int(limit))
        out = []
        for row in self.db.execute(sql, args):
            d = dict(row)
            d["data"] = json.loads(d["data"]) if d["data"] else None
            out.append(cast(EventRow, d))  # the events table's columns, data decoded
        return out

    # -- resets -----------------------------------------------------------------------------
    def add_reset(self, run_id: int | None, t: float, sources: list[str], lines: list[str],
                  temps: Temps, signature: str | None = None, step: int | None = None,
                  kind: str = "reset", info: Mapping[str, object] | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO resets(run_id, t, sources, signature, lines, temps, step, kind, info) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (run_id, t, json.dumps(sources), signature, json.dumps(lines), json.dumps(temps), step,
             kind, json.dumps(info) if info is not None else None),
        )
        return int(cur.lastrowid or 0)

    def update_reset(self, row_id: int, kind: str, lines: list[str], info: Mapping[str, object],
                     sources: list[str] | None = None) -> None:
        """A GPU incident the kernel logged more of, or another source saw late: its kind, lines
        (and sources), revised in place."""
        self.db.execute("UPDATE resets SET kind=?, lines=?, info=?, sources=COALESCE(?, sources) "
                        "WHERE id=?", (kind, json.dumps(lines), json.dumps(info),
                                       None if sources is None else json.dumps(sources), row_id))

    def resets(self, run_id: int | None = None, since: float | None = None) -> list[ResetRow]:
        sql, args = _run_since("SELECT * FROM resets", run_id, since)
        out = []
        for row in self.db.execute(sql + " ORDER BY t", args):
            d = dict(row)
            for k in ("sources", "lines", "temps"):
                d[k] = json.loads(d[k])
            d["info"] = json.loads(d["info"]) if d.get("info") else None
            out.append(cast(ResetRow, d))  # the resets table's columns, its JSON ones decoded
        return out

    # -- checkpoints ------------------------------------------------------------------------
    def add_checkpoint(self, run_id: int | None, step: int, path: str, t: float | None = None,
                       bytes_: float | None = None, stall_s: float | None = None,
                       persist_s: float | None = None) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO checkpoints(run_id, step, path, t, bytes, stall_s, persist_s) "
            "VALUES (?,?,?,?,?,?,?)",
            (run_id, step, path, self.clock() if t is None else t, bytes_, stall_s, persist_s),
        )

    def checkpoints(self, run_id: int | None = None, limit: int = 100) -> list[CheckpointRow]:
        sql, args = "SELECT * FROM checkpoints", list[object]()
        if run_id is not None:
            sql += " WHERE run_id=?"
            args.append(run_id)
        return [cast(CheckpointRow, dict(r)) for r in self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]

    # -- readings (a summary per poll, for the dashboard's charts) --------------------------
    def add_reading(self, run_id: int | None, t: float, edge_c: float | None, tctl_c: float | None,
                    power_w: float | None = None, busy_pct: float | None = None,
                    step: int | None = None, loss: float | None = None) -> None:
        self.db.execute(
            "INSERT INTO readings(run_id, t, edge_c, tctl_c, power_w, busy_pct, step, loss) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (run_id, t, edge_c, tctl_c, power_w, busy_pct, step, loss),
        )

    def readings(self, run_id: int | None = None, since: float | None = None,
                 limit: int = 2000) -> list[ReadingRow]:
        """Oldest first, at most ``limit`` rows, evenly thinned over a long night."""
        sql, args = _run_since("SELECT * FROM readings", run_id, since)
        rows = [cast(ReadingRow, dict(r)) for r in self.db.execute(sql + " ORDER BY t", args)]
        if len(rows) > limit:
            stride = len(rows) / limit
            rows = [rows[int(i * stride)] for i in range(limit)]
        return rows


def _rowid(cur: sqlite3.Cursor | _NoRows) -> int:
    """The id an INSERT gave its row (a queued INSERT's id is allocated when it is queued)."""
    if cur.lastrowid is None:
        raise sqlite3.DatabaseError("the INSERT gave no row id")
    return cur.lastrowid


def _queue_row(r: sqlite3.Row) -> QueueRow:
    d = dict(r)
    d["command"] = json.loads(d["command"])
    d["resume_command"] = json.loads(d["resume_command"]) if d["resume_command"] else None
    d["env"] = json.loads(d["env"] or "{}")
    return cast(QueueRow, d)  # the queue table's columns, its JSON ones decoded


def _run_row(row: sqlite3.Row) -> RunRow:
    """A ``runs`` row as a dict: the table's columns, which RunRow names (test_store_rows.py)."""
    return cast(RunRow, dict(row))


def _names_only(env: dict[str, str]) -> dict[str, str]:
    return {k: REDACTED for k in env}


def _private_dir(d: Path) -> None:
    """Create the state dir 0700; tighten an existing one of ours that others can read."""
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    _private_file(d, 0o700)


def _private_file(p: Path, mode: int = 0o600) -> None:
    try:
        st = p.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(p, mode)
    except OSError:
        pass  # missing, or not ours to change


def _where(select: str, conds: list[tuple[str, object]]) -> tuple[str, list[object]]:
    """``select`` with a WHERE of the conditions whose value is given (not None), and their
    arguments in order."""
    kept = [(c, v) for c, v in conds if v is not None]
    return select + (" WHERE " + " AND ".join(c for c, _ in kept) if kept else ""), [v for _, v in kept]


def _run_since(select: str, run_id: int | None, since: float | None) -> tuple[str, list[object]]:
    """``select`` narrowed to one run and to rows from ``since`` on, when given (the resets'
    and the readings' queries)."""
    return _where(select, [("run_id=?", run_id), ("t>=?", since)])
