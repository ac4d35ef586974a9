"""The machine's record of GPU incidents: what was counted, in which window, and what it means.

The Supervisor hands each incident the detector emits to ``record()`` and applies what comes
back (``Recorded``: the run counter to add to, the event to log); it stays the only writer of
run state. The log owns the ``resets`` table (incidents belong to the machine, not the run: a
queue's next run inherits them) and everything derived from it:

- only attributed **resets** count toward ``offload_after`` (``in_window``), the reset rate
  (``reset_times``, for the "auto" checkpoint interval) and the heat diagnosis; soft recoveries
  and GPU faults have their own counts, shown apart, and a line in the diagnosis; an incident
  no line tied to a card (several amdgpu cards) is shown as unattributed and counts toward
  nothing;
- one incident is one count: a revision of an incident already recorded (a late line turned
  a soft recovery into a reset) updates its row and moves its count, never adds a second;
- ``death_times()``: resets and faults (not soft recoveries: a compositor's), for "did the GPU
  kill the job?" (policy/supervise.reset_explains_death).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.gpu.diagnosis import Diagnosis, ResetSeen, diagnose
from daemon.gpu.resets.incident import ResetEvent
from daemon.policy.cfgtypes import Config
from daemon.policy.records import ResetsStatus, Temps
from daemon.state.store import ResetRow

# the run counter (runs table) each kind adds to; soft recoveries and faults are counted here
RUN_COUNTER = {"reset": "resets"}
EVENT_KIND = {"reset": "reset", "soft_recovery": "soft_recovery", "fault": "gpu_fault"}


class ResetStore(Protocol):
    def add_reset(self, run_id: int | None, t: float, sources: list[str], lines: list[str],
                  temps: Temps, signature: str | None = None, step: int | None = None,
                  kind: str = "reset", info: Mapping[str, object] | None = None) -> int: ...

    def update_reset(self, row_id: int, kind: str, lines: list[str],
                     info: Mapping[str, object], sources: list[str] | None = None) -> None: ...

    def resets(self, run_id: int | None = None,
               since: float | None = None) -> list[ResetRow]: ...


@dataclass
class Row:
    t: float
    kind: str
    temps: Temps
    run_id: int | None
    attributed: bool = True
    kernel_resets: int = 0
    label: str = ""
    row_id: int | None = None

    @property
    def counts(self) -> bool:
        """A reset tied to the watched card: what offload, the rate and the diagnosis count."""
        return self.kind == "reset" and self.attributed


@dataclass(frozen=True)
class Recorded:
    """What the Supervisor applies for one recorded (or revised) incident."""
    kind: str
    counters: dict[str, int]  # run counter -> amount to add (only the run's "resets")
    event_kind: str
    message: str
    level: str
    # the event's data (stored as JSON); untyped: it is passed as **kwargs to Supervisor.event,
    # whose own keyword detail= is a bool
    data: dict[str, Any] = field(default_factory=dict)
    detail: bool = False  # late evidence that changes nothing counted: a timeline detail


class ResetLog:
    def __init__(self, store: ResetStore, cfg: Config,
                 write: Callable[..., bool] | None = None, clock: Callable[[], float] = time.time):
        self.store = store
        self.cfg = cfg  # the daemon's config: [resets] window_s, [thermal] for the diagnosis
        self.write = write or _plain_write  # the Supervisor's StoreGuard: a sick disk is a problem
        self.clock = clock
        self.rows: list[Row] = []  # this window's incidents (of any run), oldest first
        self._by_incident: dict[int, Row] = {}  # detector id -> row, for revisions
        self._run_counts: dict[int | None, Counter[str]] = {}
        self.diagnosis: Diagnosis | None = None

    # -- start-up ---------------------------------------------------------------------------
    def load(self, now: float) -> None:
        """The window's incidents from the store (a restarted daemon forgets nothing)."""
        since = now - self.window_s
        for r in self.store.resets(None, since=since):
            info = r.get("info") or {}
            kernel_resets, label = info.get("kernel_resets"), info.get("label")
            self.rows.append(Row(float(r["t"]), r.get("kind") or "reset", r["temps"] or {},
                                 r["run_id"], bool(info.get("attributed", True)),
                                 kernel_resets if isinstance(kernel_resets, int) else 0,
                                 label if isinstance(label, str) else "", r["id"]))
        self._diagnose()

    @property
    def window_s(self) -> float:
        return float(self.cfg["resets"]["window_s"])

    # -- recording --------------------------------------------------------------------------
    def record(self, ev: ResetEvent, temps: Temps, run_id: int | None,
               step: int | None) -> Recorded:
        """Store one incident (or a revision of one already stored) and say what to apply."""
        ev.temps = temps
        info = {"label": ev.label, "kernel_resets": ev.kernel_resets, "device": ev.device,
                "attributed": ev.attributed, "incident": ev.id}
        old = self._by_incident.get(ev.id) if ev.id else None
        if old is not None:
            return self._revise(old, ev, info)
        row = Row(ev.t, ev.kind, temps, run_id, ev.attributed, ev.kernel_resets, ev.label)
        counts = self.run_counts(run_id)  # read before this row is in the store
        row_id: list[int] = []
        self.write(lambda: row_id.append(self.store.add_reset(
            run_id, ev.t, list(ev.sources), list(ev.lines), temps, ev.signature or None, step,
            kind=ev.kind, info=info)))
        row.row_id = row_id[0] if row_id else None
        self.rows.append(row)
        if ev.id:
            self._by_incident[ev.id] = row
        counts[self._count_key(row)] += 1
        self._diagnose()
        counters = {RUN_COUNTER[row.kind]: 1} if row.counts and row.kind in RUN_COUNTER else {}
        return Recorded(ev.kind, counters, self._event_kind(row), self._message(ev, temps, step),
                        "info" if ev.kind == "soft_recovery" else "warn",
                        {"sources": list(ev.sources), "lines": list(ev.lines)[:20], "temps": temps,
                         "incident_kind": ev.kind, "label": ev.label,
                         "kernel_resets": ev.kernel_resets,
                         "device": ev.device, "attributed": ev.attributed})

    def _revise(self, row: Row, ev: ResetEvent, info: Mapping[str, object]) -> Recorded:
        counted = row.counts
        if (row.kind, row.kernel_resets, row.label, row.attributed) == \
                (ev.kind, ev.kernel_resets, ev.label, ev.attributed):
            # only another source saw it (the job's death noticed after the reset was stored):
            # the row learns it, nothing counted changes, no second warning
            if row.row_id is not None:
                self.write(self.store.update_reset, row.row_id, ev.kind, list(ev.lines), info,
                           list(ev.sources))
            return Recorded(ev.kind, {}, "incident_evidence",
                            f"The GPU incident at {_clock(ev.t)} ({row.label or row.kind}) was also "
                            f"seen by: {', '.join(ev.sources)}", "info", detail=True,
                            data={"sources": list(ev.sources), "incident_kind": ev.kind})
        counts = self.run_counts(row.run_id)
        counts[self._count_key(row)] -= 1
        before = row.label or row.kind
        row.kind, row.kernel_resets, row.label = ev.kind, ev.kernel_resets, ev.label
        row.attributed = ev.attributed
        counts[self._count_key(row)] += 1
        if row.row_id is not None:
            self.write(self.store.update_reset, row.row_id, ev.kind, list(ev.lines), info,
                       list(ev.sources))
        self._diagnose()
        counters = {"resets": 1} if row.counts and not counted else {}
        return Recorded(ev.kind, counters, self._event_kind(row),
                        f"The GPU incident at {_clock(ev.t)} ({before}) was {ev.summary()} after "
                        "all: the kernel logged more of it", "warn",
                        {"incident_kind": ev.kind, "label": ev.label,
                         "kernel_resets": ev.kernel_resets,
                         "revised": True})

    @staticmethod
    def _count_key(row: Row) -> str:
        return row.kind if row.attributed else "unattributed"

    @staticmethod
    def _event_kind(row: Row) -> str:
        return EVENT_KIND.get(row.kind, "reset") if row.attributed else "gpu_unattributed"

    def _message(self, ev: ResetEvent, temps: Temps, step: int | None) -> str:
        edge = temps.get("edge_c")
        edge_s = "unknown" if edge is None else f"{edge:.0f} C"
        where = f"({', '.join(ev.sources)})" + (f" at step {step}" if step is not None else "")
        if not ev.attributed:
            return (f"GPU incident naming no card ({ev.summary() or ev.kind}) {where}: this "
                    "machine has several amdgpu cards, so it is not counted toward offload")
        if ev.kind == "soft_recovery":
            return (f"Soft recovery {where}: {ev.summary()}; the kernel recovered a hung ring "
                    "without a reset (often another program's): not counted as a reset")
        if ev.kind == "fault":
            return (f"GPU fault {where}: {ev.summary()}; the GPU was not reset. Usually the "
                    "job's or ROCm's bug, not the chip")
        headline = self.diagnosis.headline if self.diagnosis else ""
        cause = f": {ev.summary()}" if ev.label else ""
        return f"GPU reset {where}{cause}; edge {edge_s} just before. {headline}".strip()

    def _load_counts(self, run_id: int | None) -> Counter[str]:
        if run_id is None:
            return Counter()
        try:
            rows = self.store.resets(run_id)
        except Exception:  # noqa: BLE001 - an unreadable store: count from now on
            return Counter()
        return Counter((r.get("kind") or "reset") if (r.get("info") or {}).get("attributed", True)
                       else "unattributed" for r in rows)

    def _diagnose(self) -> None:
        rows: list[ResetSeen] = [{"t": r.t, "temps": r.temps} for r in self.rows if r.counts]
        by_kind = Counter(r.kind for r in self.rows if r.attributed)
        self.diagnosis = diagnose(rows, self.cfg["thermal"], faults=by_kind["fault"],
                                  soft_recoveries=by_kind["soft_recovery"]) \
            if self.rows else None

    # -- what the Supervisor and status read ------------------------------------------------
    def _recent(self, now: float) -> list[Row]:
        return [r for r in self.rows if now - r.t <= self.window_s]

    def in_window(self, now: float, kind: str = "reset") -> int:
        """Attributed incidents of ``kind`` within ``[resets] window_s``."""
        return sum(1 for r in self._recent(now) if r.kind == kind and r.attributed)

    def reset_times(self) -> list[float]:
        """When the counted resets happened (the reset rate for the checkpoint interval)."""
        return [r.t for r in self.rows if r.counts]

    def death_times(self) -> list[float]:
        """When resets and GPU faults happened: either explains a job's death near it
        (policy/supervise.reset_explains_death); a soft recovery (often the compositor's) does
        not."""
        return [r.t for r in self.rows if r.kind in ("reset", "fault")]

    def run_counts(self, run_id: int | None) -> Counter[str]:
        if run_id not in self._run_counts:
            self._run_counts[run_id] = self._load_counts(run_id)
        return self._run_counts[run_id]

    def status(self, now: float, run_id: int | None) -> ResetsStatus:
        """The ``resets`` block of the status (docs/api.md)."""
        run = self.run_counts(run_id)
        recent = self._recent(now)
        last = recent[-1] if recent else None
        diag = self.diagnosis
        return {
            "in_window": self.in_window(now),
            "kernel_resets_in_window": sum(r.kernel_resets for r in recent if r.counts),
            "soft_recoveries": {"in_window": self.in_window(now, "soft_recovery"),
                                "total": run["soft_recovery"]},
            "faults": {"in_window": self.in_window(now, "fault"), "total": run["fault"]},
            "unattributed": {"in_window": sum(1 for r in recent if not r.attributed),
                             "total": run["unattributed"]},
            "last": None if last is None else {
                "t": last.t, "kind": last.kind, "label": last.label,
                "kernel_resets": last.kernel_resets, "attributed": last.attributed},
            "heat_correlated": getattr(diag, "heat_correlated", None),
            "diagnosis": getattr(diag, "summary", None),
            "mitigations": list(getattr(diag, "mitigations", []) or []),
        }

    def prune(self, now: float) -> None:
        """Forget incidents older than the window (the store keeps them)."""
        keep = [r for r in self.rows if now - r.t <= self.window_s]
        if len(keep) != len(self.rows):
            self.rows = keep
            self._by_incident = {k: r for k, r in self._by_incident.items() if r in keep}
            self._diagnose()


def _plain_write(write: Callable[..., object], *args: object) -> bool:
    write(*args)
    return True


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))
