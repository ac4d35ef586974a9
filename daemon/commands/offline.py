"""What the CLI shows when no daemon answers: the night, read from the store on disk.

In the morning, after the daemon exited (`exit_when_done`, a reboot, a crash), `runs`,
`events`, `queue` and `status` used to say "not running" although everything was on disk. They
now open the state database read-only (``Store.open_read_only``: never written, never
migrated, no lock a daemon starting meanwhile waits on) and say where the answer came from;
`status` is the last known state, marked as such, with exit status 1 (the daemon is not
running: a script asking "is it running?" still gets no).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from daemon.night.runbook import RunBook
from daemon.policy.cfgtypes import Config
from daemon.policy.records import QueueItem, RunTableRow
from daemon.state.store import EventRow, Store

DB_FILE = "nightshift.db"


class NoStore(Exception):
    """No database to read: the message says why and what to do."""


def db_path(cfg: Config) -> Path:
    return Path(cfg["daemon"]["state_dir"]) / DB_FILE


def note(cfg: Config) -> str:
    """One line for stderr: where this answer came from."""
    return (f"nightshift: the daemon is not running; read from {db_path(cfg)} (last known; "
            "`nightshift run` or `systemctl start nightshiftd` starts it)")


def open_store(cfg: Config) -> Store:
    path = db_path(cfg)
    try:
        return Store.open_read_only(path)
    except FileNotFoundError:
        raise NoStore(f"and there is no state database at {path} yet") from None
    except sqlite3.Error as e:
        raise NoStore(f"and its state database {path} cannot be read: {e}") from None


def book(cfg: Config, store: Store) -> RunBook:
    return RunBook(store, cfg, time.time, Path(cfg["daemon"]["state_dir"]) / "runs", read_only=True)


def runs(cfg: Config, against: int | None = None) -> list[RunTableRow]:
    store = open_store(cfg)
    try:
        return book(cfg, store).table(against=against)
    finally:
        store.close()


def queue(cfg: Config) -> list[QueueItem]:
    store = open_store(cfg)
    try:
        return book(cfg, store).queue()
    finally:
        store.close()


def events(cfg: Config, limit: int, kind: str | None) -> list[EventRow]:
    store = open_store(cfg)
    try:
        return store.events(None, limit=limit, kind=kind)
    finally:
        store.close()


def running_run(cfg: Config) -> int | None:
    """The run a daemon would be on: the newest unfinished one, else None (logs' default)."""
    try:
        store = open_store(cfg)
    except NoStore:
        return None
    try:
        unfinished = book(cfg, store).unfinished()
        return int(unfinished[0]["id"]) if unfinished else None
    finally:
        store.close()


def status(cfg: Config, json_out: bool = False) -> str:
    """The last known state of the newest run, marked as such."""
    store = open_store(cfg)
    try:
        row = store.latest_run()
        last = store.events(None, limit=1)
        waiting = book(cfg, store).queue()
    finally:
        store.close()
    facts: dict[str, object] = {"last_known": True, "daemon": "not running"}
    if row is not None:
        facts["run"] = {k: row.get(k) for k in ("id", "name", "state", "step", "total_steps",
                                                  "restarts", "resets", "failure", "updated")}
    if last:
        facts["last_event"] = {k: last[0][k] for k in ("t", "kind", "message")}
    facts["queued"] = len(waiting)
    if json_out:
        return json.dumps(facts, indent=2)
    lines = ["nightshift  NOT RUNNING (last known state, from the store)"]
    if row is not None:
        total = f" of {row['total_steps']}" if row.get("total_steps") else ""
        lines.append(f"job   {row['name']} (run {row['id']})")
        lines.append(f"state {row['state']} at step {row.get('step') if row.get('step') is not None else '-'}{total}")
        lines.append(f"as of {time.strftime('%a %H:%M:%S', time.localtime(row['updated']))}")
        if row.get("failure"):
            lines.append(f"why   {str(row['failure']).splitlines()[0]}")
    else:
        lines.append("no run yet")
    if last:
        ago = time.strftime("%a %H:%M:%S", time.localtime(last[0]["t"]))
        lines.append(f"last  {ago}: {last[0]['message']}")
    lines.append(f"queue {len(waiting)} waiting")
    return "\n".join(lines)
