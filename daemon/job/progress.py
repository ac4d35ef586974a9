"""Tail the job's progress.jsonl incrementally, and validate every record against one schema.

The file is written by a job we do not control, and re-read from the start after a daemon
restart, so a bad line must never crash the daemon (it would crash again on every restart).
``ProgressTail.read()`` never raises: a line that is not a valid record is skipped, counted in
``bad_lines`` with the reason in ``last_bad``, and logged at most once a minute.

The schema (ARCHITECTURE.md, "progress.jsonl"):
- a line is at most ``MAX_LINE`` bytes of UTF-8 JSON, an object nested at most ``MAX_DEPTH`` deep;
- ``kind`` is one of ``KINDS``; ``progress``, ``eval``, ``checkpoint``, ``done`` and ``start``
  carry a ``step``;
- steps (``step``, ``total_steps``, ``loss_max_step``) are integers in [0, 2**53);
- ``loss`` and ``loss_max`` are a finite number, null, or the trainer's marker of a diverged
  loss ("nan", "inf", "-inf"); a bare NaN/Infinity (not JSON, but Python writes it) becomes
  that marker, so the divergence detector still sees it and no status document carries it;
- ``metrics`` is an object of finite numbers or null (a non-finite value becomes null);
- the fields in ``_NUM`` are numbers or null, those in ``_STR`` strings; every other number in
  the record is finite and fits in 64 bits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TypedDict, cast

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
MAX_DEPTH = 4  # {"metrics": {"x": ...}} is depth 2
MAX_STEP = 2**53
CHUNK = 1 << 20  # bytes read at a time: memory stays bounded whatever the job wrote
WARN_EVERY_S = 60.0

KINDS = frozenset({"start", "progress", "eval", "checkpoint", "checkpoint_error", "held",
                   "released", "control_ack", "done", "exiting", "heartbeat"})
_NEEDS_STEP = frozenset({"start", "progress", "eval", "checkpoint", "done"})
_STEP_FIELDS = ("step", "total_steps", "loss_max_step")
_LOSS_FIELDS = ("loss", "loss_max")
_LOSS_MARKERS = frozenset({"nan", "inf", "-inf"})
_NUM = ("t", "samples_per_s", "steps_per_s", "epoch", "bytes", "stall_s", "persist_s", "seq",
        "pid", "protocol")
_STR = ("path", "error", "command", "reason", "state")
_STR_OR_NULL = ("checkpoint", "resumed_from")


class ProgressRecord(TypedDict, total=False):
    """One valid progress.jsonl record, as ``validate_record`` leaves it (trainer/protocol.py
    writes them; an output pattern makes them from a script's lines). Only ``kind`` is always
    there; which others a kind carries is the protocol's. A key not named here is kept as the
    job wrote it (JSON)."""

    kind: str  # one of KINDS
    t: float
    step: int | None  # _STEP_FIELDS: integers in [0, 2**53)
    total_steps: int | None
    loss_max_step: int | None
    loss: float | str | None  # _LOSS_FIELDS: a number, or "nan" / "inf" / "-inf"
    loss_max: float | str | None
    metrics: dict[str, float | None]  # a non-finite metric becomes None
    samples_per_s: float  # _NUM
    steps_per_s: float
    epoch: float
    bytes: float
    stall_s: float
    persist_s: float
    seq: float
    pid: float
    protocol: float
    path: str  # _STR
    error: str
    command: str
    reason: str
    state: str
    checkpoint: str | None  # _STR_OR_NULL
    resumed_from: str | None


class BadRecord(ValueError):
    pass


def _no_constants(name: str) -> float:
    # NaN/Infinity tokens parse to floats so the schema can decide where they are allowed
    return float(name.replace("Infinity", "inf"))


def _depth(v: object) -> int:
    """Nesting depth, iteratively (a recursive walk is what deep nesting attacks)."""
    best, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            best = max(best, d)
            if d > MAX_DEPTH:
                return d
            stack.extend((y, d + 1) for y in (x.values() if isinstance(x, dict) else x))
    return best


def _finite_numbers(v: object) -> bool:
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return True


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_record(rec: object) -> ProgressRecord:
    """The record, normalized, or BadRecord saying what is wrong with it."""
    if not isinstance(rec, dict):
        raise BadRecord(f"not a JSON object but {type(rec).__name__}")
    if _depth(rec) > MAX_DEPTH:
        raise BadRecord(f"nested deeper than {MAX_DEPTH}")
    kind = rec.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise BadRecord(f"kind {str(kind)[:40]!r} is not one of {', '.join(sorted(KINDS))}")
    if kind in _NEEDS_STEP and rec.get("step") is None:
        raise BadRecord(f"a {kind} record without a step")
    for f in _STEP_FIELDS:
        v = rec.get(f)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_STEP):
            raise BadRecord(f"{f} = {str(v)[:40]!r} is not an integer in [0, 2**53)")
    out = dict(rec)
    for f in _LOSS_FIELDS:
        v = rec.get(f)
        if v is None or (isinstance(v, str) and v in _LOSS_MARKERS):
            continue
        if not _is_number(v):
            raise BadRecord(f"{f} = {str(v)[:40]!r} is not a number")
        if isinstance(v, int) and abs(v) > MAX_STEP:
            raise BadRecord(f"{f} is too large")
        if isinstance(v, float) and not math.isfinite(v):
            out[f] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    metrics = rec.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise BadRecord("metrics is not an object")
        clean = {}
        for k, v in metrics.items():
            if v is not None and not _is_number(v):
                raise BadRecord(f"metrics.{k[:40]} is not a number")
            clean[k] = v if v is None or math.isfinite(v) else None
        out["metrics"] = clean
    for f in _NUM:
        if rec.get(f) is not None and not _is_number(rec[f]):
            raise BadRecord(f"{f} = {str(rec[f])[:40]!r} is not a number")
    for f in _STR:
        if f in rec and not isinstance(rec[f], str):
            raise BadRecord(f"{f} is not a string")
    for f in _STR_OR_NULL:
        if rec.get(f) is not None and not isinstance(rec[f], str):
            raise BadRecord(f"{f} is not a string or null")
    if kind == "checkpoint" and not isinstance(rec.get("path"), str):
        raise BadRecord("a checkpoint record without a path")
    rest = {k: v for k, v in out.items() if k not in _LOSS_FIELDS and k != "metrics"}
    if not _finite_numbers(rest):
        raise BadRecord("a non-finite number outside loss and metrics")
    for k, v in rest.items():
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**63:
            raise BadRecord(f"{k[:40]} is too large for 64 bits")
    return cast(ProgressRecord, out)  # each named field checked above


def parse_line(line: bytes) -> ProgressRecord:
    """One line -> a valid record, or BadRecord. Never anything else."""
    if len(line) > MAX_LINE:
        raise BadRecord(f"line of {len(line)} bytes (at most {MAX_LINE})")
    try:
        rec = json.loads(line, parse_constant=_no_constants)
    except RecursionError:
        raise BadRecord(f"nested deeper than {MAX_DEPTH}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit integer
        raise BadRecord(f"not JSON: {str(e)[:80]}") from None
    return validate_record(rec)


class ProgressTail:
    def __init__(self, path: str | Path, from_end: bool = False, clock=time.monotonic):
        self.path = Path(path)
        self.offset = 0
        self._partial = b""
        self._skipping = False  # inside an over-long line: drop bytes until its newline
        self._inode: int | None = None
        self.clock = clock
        self.bad_lines = 0
        self.last_bad: str | None = None
        self._warned_at: float | None = None
        self._unwarned = 0
        if from_end:
            try:
                st = self.path.stat()
                self.offset, self._inode = st.st_size, st.st_ino
            except OSError:
                pass

    def _bad(self, reason: str) -> None:
        self.bad_lines += 1
        self.last_bad = reason
        self._unwarned += 1
        now = self.clock()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_S:
            more = f" ({self._unwarned - 1} more since the last warning)" if self._unwarned > 1 else ""
            log.warning("skipping a malformed line in %s: %s%s; %d skipped in all", self.path,
                        reason, more, self.bad_lines)
            self._warned_at, self._unwarned = now, 0

    def read(self) -> list[ProgressRecord]:
        """New valid records since the last call. Truncation or replacement restarts at 0."""
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if self._inode is not None and (st.st_ino != self._inode or st.st_size < self.offset):
            self.offset, self._partial, self._skipping = 0, b"", False
        self._inode = st.st_ino
        out: list[ProgressRecord] = []
        if st.st_size == self.offset:
            return out
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                while True:
                    data = f.read(CHUNK)
                    if not data:
                        break
                    self.offset += len(data)
                    self._feed(data, out)
        except OSError as e:
            self._bad(f"read error: {e.strerror}")
        return out

    def _feed(self, data: bytes, out: list[ProgressRecord]) -> None:
        lines = data.split(b"\n")
        last = lines.pop()  # bytes after the last newline: an incomplete line
        for i, line in enumerate(lines):
            if i == 0:
                if self._skipping:  # the newline that ends an over-long line
                    self._skipping = False
                    continue
                line = self._partial + line
                self._partial = b""
            if not line.strip():
                continue
            try:
                out.append(parse_line(line))
            except BadRecord as e:
                self._bad(str(e))
        if self._skipping:
            return
        self._partial += last
        if len(self._partial) > MAX_LINE:  # never hold a 10 MB "line" in memory
            self._bad(f"a line longer than {MAX_LINE} bytes")
            self._partial, self._skipping = b"", True
