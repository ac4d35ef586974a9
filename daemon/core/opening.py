"""What a starting daemon goes on with and says about the runs it finds (which one: policy/opening.py).

``find`` is the whole of it as one value (``Opened``): which run (continued, shown, or a new one
and from which queue entry), the older runs closed as interrupted, what is said before a run is
current and what is said of and saved on the continued run, and the holds the previous daemon
kept for it. The Supervisor applies it in one place (``Supervisor.open``): it alone makes a run
current and writes run state. The pieces return decisions: the runs re-created from their own
files after a lost store, a run closed as interrupted, a continued run's account (its own
command, its counts, a [job] that changed since) and a restart counted when the previous daemon
died under a running job. The one effect here is on processes the previous daemon left:
``end_leftover_jobs`` ends a killed daemon's whole job tree (jobproc's record in each run's dir)
before anything starts, ``end_orphan`` the continued run's own job. The run book's own files
(runs re-created, the queue seeded) are the book's to write.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from daemon.core.decisions import Decision, Emit, Hold, Save
from daemon.night.runbook import RunBook, RunRecord
from daemon.policy.jsonvalue import JSONObject
from daemon.policy.opening import choose
from daemon.state.store import QueueRow, RunRow, Store


@dataclass(frozen=True)
class Opened:
    """Which run a starting daemon goes on with, applied by the Supervisor in this order:
    ``before`` said (no run current yet), ``interrupt`` closed, the run made current, ``after``
    said of and saved on it."""
    row: RunRow | None  # the run continued, or shown when ``show_only``; None: a new run begins
    entry: QueueRow | None  # a new run's queue entry (None: from [job])
    show_only: bool  # every run has ended and nothing waits: the newest is shown, nothing starts
    interrupt: tuple[tuple[RunRow, str], ...]  # older unfinished runs closed, each with why
    before: list[Decision]  # leftover job trees ended, runs re-created from their files
    after: list[Decision]  # the continued run's account, its orphan ended, a death under it counted
    kept: JSONObject  # the continued run's holds as the previous daemon kept them (holds.restored)


async def find(book: RunBook, store: Store, runs_dir: Path, *, fresh: bool, now: float) -> Opened:
    """``fresh``: ``--new`` / ``--resume-from`` asked for a new run; ``runs_dir``: where each
    run's directory (and a killed daemon's job record) is."""
    before: list[Decision] = list(await end_leftover_jobs(runs_dir))
    # even for --new: the new run must not take a number whose directory holds an older run
    recovered = book.recover_from_disk()
    book.seed()  # after: a recovered run's entry is not queued again
    before += recreated(recovered)
    unfinished = {r["id"]: r for r in book.unfinished()}
    waiting = book.waiting()
    plan = choose(list(unfinished), fresh=fresh, any_run=store.latest_run() is not None,
                  waiting=bool(waiting))
    interrupt = tuple((unfinished[i], why) for i, why in plan.interrupt)
    if plan.show_latest:  # every run has ended and nothing waits: show the last one, start nothing
        return Opened(store.latest_run(), None, True, interrupt, before, [], {})
    if plan.continue_id is None:
        return Opened(None, waiting[0] if plan.from_queue else None, False, interrupt, before, [], {})
    row = unfinished[plan.continue_id]
    after = continued(row, book.record(row), differs=book.differs(row),
                      from_files=bool(recovered) and recovered[-1].id == row["id"])
    after += await end_orphan(row)
    after += died_under(row, now)
    return Opened(row, None, False, interrupt, before, after, store.recall(f"holds:run-{row['id']}") or {})


async def end_leftover_jobs(runs_dir: Path) -> list[Emit]:
    """A daemon killed while a job ran left its record (jobproc.TREE_FILE) in that run's dir:
    end the whole tree it names -- a wrapper's trainer too -- before anything starts, whichever
    run this daemon goes on with (never two trainers on one GPU)."""
    from daemon.job.jobproc import end_leftovers
    try:
        dirs = [d for d in runs_dir.iterdir() if d.is_dir()]
    except OSError:
        return []
    out = []
    for d in dirs:
        ended = await end_leftovers(d)
        if ended:
            out.append(Emit("orphan", f"stopped what was left of run {d.name}'s job, left by the "
                            f"previous daemon (pids {', '.join(map(str, ended))})", "warn"))
    return out


async def end_orphan(row: RunRow) -> list[Emit]:
    """The continued run's own job, left running by the previous daemon (its pid and start
    time in the row, so a reused pid is never hit): stopped before this daemon starts another."""
    from daemon.job.jobproc import same_process_alive, stop_orphan
    if not same_process_alive(row["job_pid"], row["job_create_time"]):
        return []
    await stop_orphan(row["job_pid"], row["job_create_time"])
    return [Emit("orphan", f"stopped job pid {row['job_pid']} left by the previous daemon", "warn")]


def recreated(recovered: list[RunRecord]) -> list[Emit]:
    """The runs a lost store got back from their files, but the newest (said if continued)."""
    return [Emit("run", f"run {rec.id} ({rec.name}) re-created from its own files (the state database "
                 f"was new), with its own command: {shlex.join(rec.command)}", "warn") for rec in recovered[:-1]]


def interrupted(row: RunRow, why: str) -> Emit:
    return Emit("run", f"run {row['id']} ({row['name']}, {row['state']} at step {row['step']}) closed as "
                f"interrupted: {why}", "warn")


def continued(row: RunRow, rec: RunRecord, *, from_files: bool, differs: list[str]) -> list[Decision]:
    """A continued run's account: with its own command, as it was created."""
    out: list[Decision] = []
    if from_files:
        out.append(Emit("run", f"continuing run {row['id']} from its files: the state database was new, "
                        "the run's directory, history and checkpoints were not", "warn"))
    out.append(Emit("run", f"continuing run {row['id']} ({rec.name}: {shlex.join(rec.command)}; state "
                    f"{row['state']}, {row['restarts']} restarts, {row['resets']} resets so far)"))
    if differs:
        out.append(Emit("run", f"[job] changed since run {row['id']} began ({'; '.join(differs)}): the run "
                        "continues as it was created; `nightshift run --new` starts a run with the new [job]",
                        "warn"))
    return out


def died_under(row: RunRow, now: float) -> list[Decision]:
    """The previous daemon died under a running job (its pid is still in the row): that is a
    restart too. Either way the row no longer names a job; a user's pause holds again."""
    out: list[Decision] = []
    if row["job_pid"]:
        times = json.loads(row.get("restart_times") or "[]")
        out += [Save({"restarts": row["restarts"] + 1, "restart_times": json.dumps(times + [now])}),
                Emit("restart", "the previous daemon stopped without stopping its job (a crash or kill -9): "
                     "the job starts again, counted as a restart", "warn")]
    out.append(Save({"job_pid": None, "job_create_time": None}))
    # the user's pause outlives the daemon: the job starts held (no job to tell yet)
    return out + ([Hold("user", "paused by the user", quiet=True)] if row.get("user_hold") else [])
