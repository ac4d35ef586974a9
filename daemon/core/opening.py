"""What a starting daemon says and decides about the runs it finds (which one: policy/opening.py).

Each function returns decisions the Supervisor carries out in order (it sets which run is
current and its state itself): the runs re-created from their own files after a lost store, a
run closed as interrupted, a continued run's account (its own command, its counts, a [job] that
changed since) and a restart counted when the previous daemon died under a running job. The one
effect here is on processes the previous daemon left: ``end_leftover_jobs`` ends a killed
daemon's whole job tree (jobproc's record in each run's dir) before anything starts.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from daemon.core.decisions import Decision, Emit, Hold, Save
from daemon.night.runbook import RunRecord
from daemon.state.store import RunRow


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
