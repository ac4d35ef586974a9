"""The run book: the night's runs, its queue, and their history.

Owned by the Supervisor (it holds the book; the book never sees the Supervisor). The book writes
what is fixed about a run -- its *history*, recorded once at creation and never rewritten -- and
the queue; the Supervisor stays the only writer of a run's *state* (state, step, counters).

History (issue 28): a run records, when it is created, its own command, resume command, env
names, workdir, ``total_steps`` and a hash of the job-relevant config. ``nightshift runs`` and a
restarted daemon use that record, never today's ``[job]``: a run started with ``--steps 3000``
stays a 3000-step run after ``[job]`` is edited. The same record is written to the run's own
directory (``runs/<N>/run.json``, and ``outcome.json`` once it ends), so a store rebuilt after
corruption re-creates each run with its own command instead of the config's.

The queue lives in the store (names of env vars only; values in ``queue-env/<id>.json``,
daemon/night/queueenv.py). Edits come from the API through the Supervisor's tick. The waiting
entries are read from the store once and kept here, every edit written through to that copy
(issue 30: the status read them from SQLite at each build, about once a second): the book is the
queue's only writer while the daemon holds the state dir's lock. While the store cannot be written
or read (writes kept in memory, a problem) the copy is dropped and each read goes to the file, as
the run rows do (a queued write must not show before it lands).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias, cast

from daemon.night.queueenv import QueueEnv
from daemon.policy.cfgtypes import Config, JobConfig
from daemon.policy.queue_entry import entry_problem, safe_text
from daemon.policy.records import Answer, QueueItem, RunTableRow
from daemon.policy.states import ENDED_STATES
from daemon.state.config import REDACTED, public_config
from daemon.state.store import QueueRow, RunRow, Store

log = logging.getLogger("nightshift")

CURVE_POINTS = 200  # GET /runs carries each run's curve, downsampled to at most this many points
NIGHT_GAP_S = 60.0  # a queued run starting this soon after the last one ended continues its night
# a run still going: (best loss, its step, the climb's step, final loss, [(step, loss), ...])
LiveFingerprint: TypeAlias = "tuple[float | None, int | None, int | None, float | None, list[tuple[int, float]]]"
RUN_FILE = "run.json"  # the run's history, in its own directory
OUTCOME_FILE = "outcome.json"  # how it ended, written once it has
# what decides what a job computes: a run's config hash covers these [job] keys
_JOB_KEYS = ("command", "resume_command", "workdir", "total_steps", "checkpoint_glob",
             "progress_pattern")


def ran_on(before: str | None, where: str) -> str:
    """Where a run has run, in the order it first ran there, "+"-joined: "local+modal",
    "local+ssh+modal" after a fallback. Kept apart from ``remote_backend`` (the call being
    followed, cleared once the result is home), so history still says where it ran."""
    seen = [p for p in (before or "").split("+") if p]
    return "+".join(seen if where in seen else [*seen, where])


@dataclass(frozen=True)
class RunRecord:
    """What a run is, fixed when it was created."""
    id: int
    name: str
    command: list[str]
    resume_command: list[str] | None
    env_names: list[str]
    workdir: str
    total_steps: int | None
    config_hash: str
    queue_id: int | None
    created: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunRecord:
        return cls(id=int(d["id"]), name=str(d["name"]), command=[str(c) for c in d["command"]],
                   resume_command=[str(c) for c in d["resume_command"]] if d.get("resume_command") else None,
                   env_names=[str(n) for n in d.get("env_names") or []], workdir=str(d["workdir"]),
                   total_steps=int(d["total_steps"]) if d.get("total_steps") else None,
                   config_hash=str(d.get("config_hash") or ""),
                   queue_id=int(d["queue_id"]) if d.get("queue_id") else None,
                   created=float(d["created"]))


def config_hash(job: Mapping[str, object], env_names: list[str]) -> str:
    """A short hash of what decides the job's computation (env values are left out: secrets)."""
    ident = {k: job.get(k) for k in _JOB_KEYS} | {"env": sorted(env_names)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class QueueEdit:
    answer: Answer  # for the asker (the API's response)
    said: str | None = None  # the event the Supervisor writes
    added: bool = False  # an entry was added: an idle daemon starts it


def _without(entries: list[QueueRow], qid: int) -> list[QueueRow]:
    return [e for e in entries if e["id"] != qid]


def _appended(entries: list[QueueRow], row: QueueRow) -> list[QueueRow]:
    """A new entry goes last (Store.queue_add: after every position used): O(1), in place."""
    if entries and (entries[-1]["pos"], entries[-1]["id"]) > (row["pos"], row["id"]):
        return _by_position([*entries, row])  # not where an add puts it: sorted, to be sure
    entries.append(row)
    return entries


def _by_position(entries: list[QueueRow]) -> list[QueueRow]:
    return sorted(entries, key=lambda e: (e["pos"], e["id"]))  # as Store.queue orders them


class RunBook:
    def __init__(self, store: Store, cfg: Config, clock: Callable[[], float],
                 runs_dir: Path, read_only: bool = False):
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.runs_dir = runs_dir  # <state_dir>/runs (or the read-only fallback's)
        self._qenv: QueueEnv | None = None
        self._waiting: list[QueueRow] | None = None  # the waiting entries, in order (see above)
        self.read_only = read_only  # the CLI's view of a stopped daemon's store (daemon/commands/offline.py)

    # ================================================================== history
    def create(self, entry: QueueRow | None, prev: RunRow | None = None,
               run_id: int | None = None, created: float | None = None) -> RunRecord:
        """A new run, from a queue entry or from ``[job]``; its history written now, once.
        ``run_id``/``created``: a run found on disk by an older version's files (no run.json)."""
        job = self.cfg["job"]
        if entry is not None:
            name, command = entry["name"], list(entry["command"])
            resume = entry["resume_command"]
            env_names = sorted(set(job["env"]) | set(entry["env"] or {}))
            total = entry["total_steps"] or job["total_steps"]
        else:
            name, command, resume = job["name"], list(job["command"]), job["resume_command"]
            env_names, total = sorted(job["env"]), job["total_steps"]
        run_id = self.store.create_run(name, public_config(self.cfg), total, run_id=run_id,
                                       created=created)
        night = None
        ended = prev.get("ended") if prev else None
        if entry is not None and prev and ended is not None and self.clock() - ended <= NIGHT_GAP_S:
            # the next run of a queue belongs to the same night as the one that just ended (a
            # run added to an idle daemon starts a night of its own): deadline_after_s counts
            # from the night's start, not from each run's creation
            night = prev.get("night_start") or prev.get("created")
        rec = RunRecord(id=run_id, name=name, command=command,
                        resume_command=list(resume) if resume else None, env_names=env_names,
                        workdir=str(job["workdir"]), total_steps=total,
                        config_hash=config_hash({**job, "command": command, "resume_command": resume,
                                                 "total_steps": total}, env_names),
                        queue_id=entry["id"] if entry is not None else None,
                        created=self.clock() if created is None else created)
        self._write_history(rec, night)
        if entry is not None:
            self.store.queue_set(entry["id"], state="started", run_id=run_id)
            self._wrote(lambda q: _without(q, entry["id"]))
        return rec

    def _write_history(self, rec: RunRecord, night: float | None) -> None:
        self.store.update_run(rec.id, command=json.dumps(rec.command),
                              resume_command=json.dumps(rec.resume_command) if rec.resume_command else None,
                              env=json.dumps({n: REDACTED for n in rec.env_names}),
                              workdir=rec.workdir, config_hash=rec.config_hash,
                              queue_id=rec.queue_id, night_start=night, created=rec.created)
        self._write_file(rec.id, RUN_FILE, rec.to_json())

    def _write_file(self, run_id: int, name: str, data: Mapping[str, object]) -> None:
        d = self.runs_dir / str(run_id)
        tmp = d / f".{name}.{os.getpid()}"
        try:
            d.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / name)
        except OSError as e:  # the store still has it; only a rebuilt store would miss it
            log.warning("cannot write %s for run %s: %s", name, run_id, e)

    def ended(self, run_id: int, state: str, when: float) -> None:
        """How the run ended and where it ran, beside its history (read back when the store
        is rebuilt)."""
        where = (self.store.get_run(run_id) or {}).get("backends")
        self._write_file(run_id, OUTCOME_FILE, {"state": state, "ended": when, "backends": where})

    def ran_here(self, run_id: int) -> None:
        """The run's job started on this machine's GPU (a remote launch says its own backend)."""
        before = (self.store.get_run(run_id) or {}).get("backends")
        if ran_on(before, "local") != before:
            self.store.update_run(run_id, backends=ran_on(before, "local"))

    def record(self, row: RunRow) -> RunRecord:
        """A run's history: from its row; a row of an older version (no command recorded) gives
        what its stored config said at creation."""
        if command := row.get("command"):
            env = json.loads(row.get("env") or "{}")
            resume_command = row.get("resume_command")
            return RunRecord(
                id=int(row["id"]), name=row["name"], command=json.loads(command),
                resume_command=json.loads(resume_command) if resume_command else None,
                env_names=sorted(env), workdir=row.get("workdir") or str(self.cfg["job"]["workdir"]),
                total_steps=row.get("total_steps"), config_hash=row.get("config_hash") or "",
                queue_id=row.get("queue_id"), created=float(row["created"]))
        job: dict[str, Any]  # an older version's stored [job]: whatever that version wrote
        try:
            job = json.loads(row.get("config") or "{}").get("job") or {}
        except ValueError:
            job = {}
        now = self.cfg["job"]
        return RunRecord(id=int(row["id"]), name=row["name"],
                         command=list(job.get("command") or now["command"]),
                         resume_command=job.get("resume_command") if "command" in job else now["resume_command"],
                         env_names=sorted(job.get("env") or {}), workdir=str(job.get("workdir") or now["workdir"]),
                         total_steps=row.get("total_steps"), config_hash="", queue_id=row.get("queue_id"),
                         created=float(row["created"]))

    def job(self, row: RunRow) -> JobConfig:
        """``[job]`` with this run's own command, env, workdir and total: what it runs with."""
        rec = self.record(row)
        job = self.cfg["job"].copy()
        queued = (self._qenv_obj().get(rec.queue_id) or {}) if rec.queue_id else {}
        env = {**job["env"], **queued}
        if rec.config_hash:  # the names it was created with (a value unknown now is left out)
            env = {k: v for k, v in env.items() if k in rec.env_names and v != REDACTED}
        job["name"], job["command"], job["resume_command"] = rec.name, rec.command, rec.resume_command
        job["workdir"], job["total_steps"], job["env"] = rec.workdir, rec.total_steps, env
        return job

    def differs(self, row: RunRow) -> list[str]:
        """How ``[job]`` now differs from what a ``[job]`` run was created with (a queued run's
        command came from its entry: the config's [job] is not its command)."""
        rec = self.record(row)
        if rec.queue_id is not None:
            return []
        job = self.cfg["job"]
        out = []
        if list(job["command"]) != rec.command:
            out.append(f"command is now {shlex.join(job['command'])}")
        if job["total_steps"] != rec.total_steps and job["total_steps"] is not None:
            out.append(f"total_steps is now {job['total_steps']}")
        if str(job["workdir"]) != rec.workdir:
            out.append(f"workdir is now {job['workdir']}")
        if sorted(job["env"]) != rec.env_names and rec.config_hash:
            out.append(f"env is now {', '.join(sorted(job['env'])) or 'empty'}")
        return out

    def unfinished(self) -> list[RunRow]:
        """Every run that has not ended, newest first."""
        return [r for r in reversed(self.store.runs()) if r["state"] not in ENDED_STATES]

    def recover_from_disk(self) -> list[RunRecord]:
        """After the store was lost (moved aside as corrupt, or deleted): every run directory
        with a ``run.json`` gets its row back, with its own history and, if it ended, its end
        state. Only when the store holds no run at all."""
        if self.store.latest_run() is not None:
            return []
        found: list[tuple[RunRecord, dict[str, Any]]] = []  # an outcome.json as this version wrote it
        try:
            dirs = [d for d in self.runs_dir.iterdir() if d.name.isdigit() and d.is_dir()]
        except OSError:
            return []
        for d in sorted(dirs, key=lambda d: int(d.name)):
            try:
                rec = RunRecord.from_json(json.loads((d / RUN_FILE).read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            try:
                outcome = json.loads((d / OUTCOME_FILE).read_text())
            except (OSError, ValueError):
                outcome = {}
            found.append((rec, outcome))
        for rec, outcome in found:
            self.store.create_run(rec.name, public_config(self.cfg), rec.total_steps,
                                  run_id=rec.id, created=rec.created)
            if rec.queue_id is not None:  # its env values are still under this id (queue-env/)
                self.store.queue_add(rec.name, rec.command, dict.fromkeys(rec.env_names, REDACTED),
                                     "recovered", rec.resume_command, rec.total_steps,
                                     entry_id=rec.queue_id, state="started", run_id=rec.id)
                self._waiting = None  # a started entry: not waiting, but read anew to be sure
            self._write_history(rec, None)
            if outcome.get("state"):
                self.store.update_run(rec.id, state=str(outcome["state"]), ended=outcome.get("ended"),
                                      backends=outcome.get("backends"))
            else:
                self.store.update_run(rec.id, state="stopped")
        return [rec for rec, _ in found]

    def legacy_on_disk(self, checkpoint_dir: str) -> tuple[int, float] | None:
        """The newest run that has files but no row and no run.json (an older version's)."""
        if self.store.latest_run() is not None:
            return None
        ids: dict[int, float] = {}
        for base, prefix in ((self.runs_dir, ""), (Path(checkpoint_dir), "run-")):
            try:
                for d in base.iterdir():
                    n = d.name[len(prefix):] if d.name.startswith(prefix) else ""
                    if d.is_dir() and n.isdigit():
                        ids[int(n)] = min(ids.get(int(n), d.stat().st_mtime), d.stat().st_mtime)
            except OSError:
                continue
        if not ids:
            return None
        newest = max(ids)
        return newest, ids[newest]

    # ================================================================== the queue
    def _qenv_obj(self) -> QueueEnv:
        """Queued runs' env values (daemon/night/queueenv.py): never in the store, never served."""
        if self._qenv is None:
            d = self.cfg["daemon"]
            self._qenv = QueueEnv(d.get("_fallback_dir") or d["state_dir"], read_only=self.read_only)
            for qid, env in ({} if self.read_only else self.store.take_queue_env()).items():  # an older db's
                self._qenv.put(qid, env)
                self._waiting = None  # its env column now holds names only: read anew
        return self._qenv

    def queued_env(self, row: RunRow) -> dict[str, str]:
        """A run's queued env with its values (names whose value is unknown are left out)."""
        names = json.loads(row.get("env") or "{}")
        values = self._qenv_obj().get(row.get("queue_id")) or {}
        return {k: values[k] for k in names if k in values}

    def seed(self) -> None:
        """[[queue]] entries from the config join the stored queue once (a restart re-reads
        the config; an entry already queued, started or removed is not added again)."""
        have = {(q["name"], json.dumps(q["command"])): q for q in self.store.queue(waiting_only=False)}
        for item in self.cfg.get("queue", []):
            q = have.get((item["name"], json.dumps(item["command"])))
            if q is None:
                qid = self.store.queue_add(item["name"], item["command"], item["env"], "config",
                                           item["resume_command"], item["total_steps"])
                self._waiting = None  # at start only: read anew
            elif q["state"] == "removed":
                continue  # it will never run: its values are not wanted back
            else:
                qid = int(q["id"])
            self._qenv_obj().put(qid, item["env"])  # the values, from the config, kept out of the store

    def _cacheable(self) -> bool:
        """The copy is kept only while the store holds what was written and reads it well."""
        return not self.read_only and not self.store.pending_writes and self.store.problem is None

    def _entries(self) -> list[QueueRow]:
        """The waiting entries, oldest position first: the copy, or the store when none is kept
        (the caller must not change them)."""
        if self._waiting is not None and self._cacheable():
            return self._waiting
        rows = self.store.queue()
        self._waiting = rows if self._cacheable() else None
        return rows

    def _wrote(self, change: Callable[[list[QueueRow]], list[QueueRow]]) -> None:
        """An edit was written to the store: the same edit to the copy (none kept: nothing to do)."""
        if self._waiting is not None:
            self._waiting = change(self._waiting) if self._cacheable() else None

    def waiting(self) -> list[QueueRow]:
        return [cast(QueueRow, dict(q)) for q in self._entries()]

    def queue(self) -> list[QueueItem]:
        return [{"id": q["id"], "name": q["name"], "command": q["command"], "env": q["env"],
                 "total_steps": q["total_steps"], "source": q["source"]} for q in self._entries()]

    def add(self, arg: Mapping[str, object]) -> tuple[Answer, int | None]:
        """(answer, the new entry's id or None when refused)."""
        command, env = arg.get("command"), arg.get("env") or {}
        problem = entry_problem(arg.get("name"), command, env, arg.get("total_steps"))
        if problem is not None:
            return {"ok": False, "message": f"not queued: {problem}"}, None
        # entry_problem passed: a list of str, a str -> str table, a str or None, an int or None
        command, env = cast(list[str], command), cast(dict[str, str], env)
        name = cast(str | None, arg.get("name"))
        total_steps = cast(int | None, arg.get("total_steps"))
        # O(1) in the queue's length: no listing of the entries (4,700 of them made each add a
        # rewrite-sized read: 5-10 adds/s)
        name = name or f"run-{self.store.queue_next_id()}"
        qid = self.store.queue_add(name, command, env, "cli", total_steps=total_steps)
        self._qenv_obj().put(qid, env)  # values kept out of the store (daemon/night/queueenv.py)
        # the row as stored, read by its id (O(1) in the queue's length, like the add)
        row = self.store.queue_entry(qid) if self._waiting is not None and self._cacheable() else None
        if row is None:
            self._waiting = None  # read anew at the next read
        else:
            self._wrote(lambda q: _appended(q, row))
        return {"ok": True, "message": f"queued {safe_text(name)!r} as #{qid}, position "
                f"{self.store.queue_position(qid)}"}, qid

    def edit(self, action: str, arg: Mapping[str, object]) -> QueueEdit:
        """queue_add / queue_remove / queue_move, and a cancel of a queued entry (`nightshift cancel
        '#N'`: removed), from the API through the Supervisor's tick: the answer for the asker, the
        event to say, whether an entry was added."""
        if action == "cancel":
            edit = self.edit("queue_remove", {"id": arg.get("queued")})
            return replace(edit, answer={**edit.answer, "message": f"cancelled queued #{arg.get('queued')}: "
                                         "it was removed"}) if edit.answer["ok"] else edit
        if action == "queue_add":
            answer, qid = self.add(arg)
            if qid is None:
                return QueueEdit(answer)
            # not the whole queue in the answer: an add costs O(1)
            return QueueEdit({**answer, "id": qid},
                             f"queued #{qid}: {shlex.join(cast(list[str], arg['command']))}", True)
        ids = [q["id"] for q in self.waiting()]
        asked = arg.get("id")
        if not isinstance(asked, int) or asked not in ids:
            return QueueEdit({"ok": False, "message": f"no waiting run #{asked} in the queue (waiting: "
                              f"{', '.join(f'#{i}' for i in ids) or 'none'})"})
        qid = asked
        if action == "queue_remove":
            self.remove(qid)
            return QueueEdit({"ok": True, "message": f"removed #{qid}", "queue": self.queue()},
                             f"removed #{qid} from the queue")
        if action == "queue_move":
            to_pos = arg.get("to")
            to = self.move(qid, int(to_pos) if isinstance(to_pos, (int, float, str)) and to_pos else 1)
            return QueueEdit({"ok": True, "message": f"#{qid} is now number {to}", "queue": self.queue()},
                             f"moved #{qid} to position {to}")
        raise ValueError(f"unknown queue edit {action!r}")

    def remove(self, qid: int) -> None:
        self.store.queue_set(qid, state="removed")
        self._wrote(lambda q: _without(q, qid))
        self._qenv_obj().drop(qid)  # it will never run: its values go (a run's stay: its `changes`)

    def move(self, qid: int, to: int) -> int:
        ids = [q["id"] for q in self._entries()]
        to = max(1, min(to, len(ids)))
        order = [i for i in ids if i != qid]
        order.insert(to - 1, qid)
        for pos, i in enumerate(order, 1):
            self.store.queue_set(i, pos=float(pos))
        new_pos = {i: float(pos) for pos, i in enumerate(order, 1)}
        self._wrote(lambda q: _by_position([cast(QueueRow, {**e, "pos": new_pos.get(e["id"], e["pos"])})
                                            for e in q]))
        return to

    # ================================================================== the table
    def curve(self, run_id: int, series: list[tuple[int, float]] | None = None,
              points: int = CURVE_POINTS) -> list[list[float]]:
        """A run's loss curve, [[step, loss], ...] by step, at most ``points`` of them: the live
        series of the current run, else the readings the daemon stored each poll."""
        if series is None:
            series = [(step, loss) for r in self.store.readings(run_id, limit=points * 4)
                      if (step := r["step"]) is not None and (loss := r["loss"]) is not None]
        by_step = dict(sorted(series))  # one loss per step, the last one reported
        pts = [[s, v] for s, v in by_step.items() if math.isfinite(v)]
        if len(pts) > points:
            stride = len(pts) / points
            pts = [pts[int(i * stride)] for i in range(points - 1)] + [pts[-1]]
        return pts

    def table(self, live: dict[int, LiveFingerprint] | None = None,
              against: int | None = None) -> list[RunTableRow]:
        """The comparison table (GET /runs, `nightshift runs`), oldest first; ``live``: the
        fingerprint of a run still going (run id -> best, best step, climb, final). ``changes``
        are against run ``against``, by default the first run of the newest night (the queue
        carries ``night_start`` from run to run)."""
        from daemon.policy.fingerprint import changes
        rows = self.store.runs()
        base = None
        if against is not None:
            base = next((r for r in rows if r["id"] == against), None)
            if base is None:
                raise KeyError(f"no run {against} (runs: {', '.join(str(r['id']) for r in rows) or 'none'})")
        elif rows:
            night = rows[-1].get("night_start") or rows[-1]["created"]
            base = next((r for r in rows if float(r["created"]) >= float(night) - 1e-6), rows[0])

        def cmd_env(r: RunRow) -> tuple[list[str], dict[str, str]]:
            # env values compared here, shown redacted (show_values=False)
            rec = self.record(r)
            return rec.command, {**dict.fromkeys(rec.env_names, REDACTED), **self.queued_env(r)}
        bcmd, benv = cmd_env(base) if base else ([], {})
        live_series = {k: v[4] for k, v in (live or {}).items()}  # the current run's losses
        out: list[RunTableRow] = []
        for r in rows:
            cmd, env = cmd_env(r)
            best = (r.get("best_loss"), r.get("best_step"), r.get("climb_step"), r.get("final_loss"))
            if live and r["id"] in live and r.get("ended") is None:
                best = live[r["id"]][:4]
            out.append({
                "id": r["id"], "name": r["name"], "state": r["state"], "command": cmd,
                "changes": [] if base is None or r["id"] == base["id"] else changes(bcmd, benv, cmd, env, show_values=False),
                "steps": r.get("step"), "total_steps": r.get("total_steps"),
                "best_loss": best[0], "best_step": best[1], "climb_step": best[2], "final_loss": best[3],
                # where it ran, kept after the pull (remote_backend: only while the call is followed)
                "backend": r.get("backends") or r.get("remote_backend") or "local",
                "cost_usd": round(float(r.get("cloud_cost_usd") or 0.0), 4),
                "started": r.get("created"), "ended": r.get("ended"),
                "workdir": self.record(r).workdir, "config_hash": r.get("config_hash"),
                "changes_against": base["id"] if base is not None else None,
                "curve": self.curve(r["id"], live_series.get(r["id"])),
            })
        return out
