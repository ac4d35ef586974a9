"""The state store: one SQLite file in WAL mode holding runs, events, resets, checkpoints, readings.

A run is a first-class row (never a global), so a daemon restarted after any stop, kill -9
included, continues the same run with the same counts, and a queue of runs fits later.
Every write is its own short transaction: a crash loses at most the write in flight.
Used from the daemon's event loop thread and, read-only, from the HTTP handlers (same thread).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from daemon.states import ENDED_STATES as TERMINAL_STATES  # a stopped run is continued

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
    step INTEGER
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
"""

_RUN_FIELDS = {
    "state", "total_steps", "step", "restarts", "code_errors", "resets", "pauses", "has_run",
    "job_pid", "job_create_time", "backend", "remote_call_id", "remote_started", "cloud_seconds",
    "cloud_cost_usd", "failure", "last_error_sig", "skip_steps", "updated", "user_hold",
    "restart_times", "remote_backend", "resume_from",
}
# Columns added after the first release: (name, declaration), added to an older file on open.
_ADDED_COLUMNS = (("user_hold", "INTEGER NOT NULL DEFAULT 0"),
                  ("restart_times", "TEXT NOT NULL DEFAULT '[]'"),
                  ("remote_backend", "TEXT"), ("resume_from", "TEXT"))


class Store:
    """SQLite-backed state. ``clock`` is injected so replays and tests control time."""

    def __init__(self, path: str | Path, clock=time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        # isolation_level=None: autocommit; each statement is its own transaction.
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(runs)")}
        for name, decl in _ADDED_COLUMNS:
            if name not in have:
                self.db.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")

    def close(self) -> None:
        self.db.close()

    # -- runs -------------------------------------------------------------------------------
    def create_run(self, name: str, config: dict[str, Any], total_steps: int | None) -> int:
        now = self.clock()
        cur = self.db.execute(
            "INSERT INTO runs(name, created, updated, state, config, total_steps) VALUES (?,?,?,?,?,?)",
            (name, now, now, "idle", json.dumps(config, default=str), total_steps),
        )
        return int(cur.lastrowid)

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return dict(row) if row else None

    def current_run(self) -> dict[str, Any] | None:
        """The newest run that has not ended (the one a restarted daemon continues)."""
        q = "SELECT * FROM runs WHERE state NOT IN ({}) ORDER BY id DESC LIMIT 1".format(
            ",".join("?" * len(TERMINAL_STATES)))
        row = self.db.execute(q, tuple(TERMINAL_STATES)).fetchone()
        return dict(row) if row else None

    def latest_run(self) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return dict(row) if row else None

    def update_run(self, run_id: int, **fields: Any) -> None:
        bad = set(fields) - _RUN_FIELDS
        if bad:
            raise KeyError(f"unknown run fields: {sorted(bad)}")
        fields.setdefault("updated", self.clock())
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE runs SET {cols} WHERE id=?", (*fields.values(), run_id))

    def increment(self, run_id: int, field: str, by: int | float = 1) -> None:
        if field not in _RUN_FIELDS:
            raise KeyError(field)
        self.db.execute(f"UPDATE runs SET {field}={field}+?, updated=? WHERE id=?",
                        (by, self.clock(), run_id))

    # -- events -----------------------------------------------------------------------------
    def add_event(self, run_id: int | None, kind: str, message: str, level: str = "info",
                  data: dict[str, Any] | None = None, t: float | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO events(run_id, t, kind, level, message, data) VALUES (?,?,?,?,?,?)",
            (run_id, self.clock() if t is None else t, kind, level, message,
             json.dumps(data, default=str) if data is not None else None),
        )
        return int(cur.lastrowid)

    def events(self, run_id: int | None = None, limit: int = 50, before_id: int | None = None,
               kind: str | None = None) -> list[dict[str, Any]]:
        """Newest first. Filter by run, by kind, and page with ``before_id``."""
        where, args = [], []
        if run_id is not None:
            where.append("run_id=?")
            args.append(run_id)
        if before_id is not None:
            where.append("id<?")
            args.append(before_id)
        if kind is not None:
            where.append("kind=?")
            args.append(kind)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(int(limit))
        out = []
        for row in self.db.execute(sql, args):
            d = dict(row)
            d["data"] = json.loads(d["data"]) if d["data"] else None
            out.append(d)
        return out

    # -- resets -----------------------------------------------------------------------------
    def add_reset(self, run_id: int | None, t: float, sources: list[str], lines: list[str],
                  temps: dict[str, Any], signature: str | None = None, step: int | None = None) -> int:
        cur = self.db.execute(
            "INSERT INTO resets(run_id, t, sources, signature, lines, temps, step) VALUES (?,?,?,?,?,?,?)",
            (run_id, t, json.dumps(sources), signature, json.dumps(lines), json.dumps(temps), step),
        )
        return int(cur.lastrowid)

    def resets(self, run_id: int | None = None, since: float | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM resets WHERE 1=1", []
        if run_id is not None:
            sql += " AND run_id=?"
            args.append(run_id)
        if since is not None:
            sql += " AND t>=?"
            args.append(since)
        out = []
        for row in self.db.execute(sql + " ORDER BY t", args):
            d = dict(row)
            for k in ("sources", "lines", "temps"):
                d[k] = json.loads(d[k])
            out.append(d)
        return out

    # -- checkpoints ------------------------------------------------------------------------
    def add_checkpoint(self, run_id: int | None, step: int, path: str, t: float | None = None,
                       bytes_: int | None = None, stall_s: float | None = None,
                       persist_s: float | None = None) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO checkpoints(run_id, step, path, t, bytes, stall_s, persist_s) "
            "VALUES (?,?,?,?,?,?,?)",
            (run_id, step, path, self.clock() if t is None else t, bytes_, stall_s, persist_s),
        )

    def checkpoints(self, run_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM checkpoints", []
        if run_id is not None:
            sql += " WHERE run_id=?"
            args.append(run_id)
        return [dict(r) for r in self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]

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
                 limit: int = 2000) -> list[dict[str, Any]]:
        """Oldest first, at most ``limit`` rows, evenly thinned over a long night."""
        sql, args = "SELECT * FROM readings WHERE 1=1", []
        if run_id is not None:
            sql += " AND run_id=?"
            args.append(run_id)
        if since is not None:
            sql += " AND t>=?"
            args.append(since)
        rows = [dict(r) for r in self.db.execute(sql + " ORDER BY t", args)]
        if len(rows) > limit:
            stride = len(rows) / limit
            rows = [rows[int(i * stride)] for i in range(limit)]
        return rows
