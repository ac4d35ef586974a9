"""daemon/state/store.py's row TypedDicts say what its tables hold: each names exactly its table's
columns (a column added to the schema or to _ADDED_COLUMNS and not to its type fails here), with
a type that matches the column's declared one, and update_run's RunFields are _RUN_FIELDS."""

from __future__ import annotations

import sqlite3
import typing

import pytest

from daemon.state import store as store_mod
from daemon.state.store import (
    _RUN_FIELDS,
    CheckpointRow,
    EventRow,
    QueueRow,
    ReadingRow,
    ResetRow,
    RunFields,
    RunRow,
    Store,
)

# a SQLite column type -> what a row of it may hold (a nullable column adds None)
AFFINITY = {"INTEGER": int, "REAL": float, "TEXT": str}
# columns the readers hand back decoded from their JSON text, with the type they decode to
DECODED = {("queue", "command"), ("queue", "resume_command"), ("queue", "env"), ("events", "data"),
           ("resets", "sources"), ("resets", "lines"), ("resets", "temps"), ("resets", "info")}
TABLES = {"runs": RunRow, "queue": QueueRow, "events": EventRow, "resets": ResetRow,
          "checkpoints": CheckpointRow, "readings": ReadingRow}


def _columns(tmp_path, table: str) -> list[tuple[str, str, bool]]:
    s = Store(tmp_path / "n.db")  # created and migrated: every added column is there
    try:
        db = sqlite3.connect(tmp_path / "n.db")
        rows = db.execute(f"PRAGMA table_info({table})").fetchall()
        db.close()
    finally:
        s.close()
    # (name, declared type, may be NULL): the primary key is never NULL
    return [(r[1], r[2].upper(), not r[3] and not r[5]) for r in rows]


@pytest.mark.parametrize("table", sorted(TABLES))
def test_a_row_type_names_exactly_its_tables_columns(tmp_path, table):
    hints = typing.get_type_hints(TABLES[table], globalns=vars(store_mod))
    cols = _columns(tmp_path, table)
    assert set(hints) == {c[0] for c in cols}, f"{table}: the row type and the table's columns differ"
    for name, decl, nullable in cols:
        if (table, name) in DECODED:
            continue
        want = AFFINITY[decl]
        have = set(typing.get_args(hints[name])) or {hints[name]}
        assert want in have, f"{table}.{name}: {hints[name]} holds no {decl}"
        assert (type(None) in have) == nullable, f"{table}.{name}: NULL allowed is {nullable}, type says {hints[name]}"


def test_update_runs_fields_are_the_writable_columns():
    assert set(typing.get_type_hints(RunFields, globalns=vars(store_mod))) == _RUN_FIELDS
