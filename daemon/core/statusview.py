"""The status document (GET /status, `nightshift status --json`, /metrics): one dict with the
stable field names documented in docs/api.md.

Built by the status face (daemon/core/statusface.py, read only) from the parts and the current
run's state and published as its snapshot; nothing reads the run's live structures from outside
the loop.

What a user sees first is ``display_state``: one word they can tell apart on a phone (RUNNING,
PAUSED, COOLING, RECOVERING, CLOUD, STARTING, STOPPED, DONE, FAILED) with ``display_detail``
saying by whom or why ("by you", "by the schedule"). The ETA divides what is left by the steady
rate times the measured duty cycle (daemon/policy/eta.py); rate and ETA are null whenever the
job is not training towards the end (paused by you or the schedule, stopped, done, failed), so
nothing stale stays on screen.

The duty cycle comes from the run's ``DutyMeter`` (pace.py: fed once per tick by the Supervisor,
seeded from the store's events after a daemon start); the failover's deadline check uses the same ETA.
"""

from __future__ import annotations

import math
from pathlib import Path

from daemon.core import waitview
from daemon.core.viewsource import StatusView
from daemon.gpu.sensors.base import Reading
from daemon.policy import eta as eta_mod
from daemon.policy.records import (
    CheckpointStatus,
    CloudStatus,
    EtaAt,
    EtaFaults,
    GovernorStatus,
    LossStopped,
    Status,
)
from daemon.policy.states import REMOTE_STATES, State
from daemon.policy.supervise import shown_hold
from daemon.state.store import RunRow
from daemon.web import statusfmt

# ``s`` below is the status face, read only, seen through what this view reads of it
# (daemon/core/viewsource.py); the face itself is not imported (it imports this module).
Face = StatusView


def _num(x: float | None) -> float | None:
    """JSON has no NaN or Infinity: an unknown or non-finite number is null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _cloud(s: Face, run: RunRow, now: float) -> CloudStatus:
    o = s.cfg["offload"]
    st = s.current.remote.remote
    eta = None
    if st is not None and st.steps_per_s and st.total_steps and st.step is not None:
        eta = (st.total_steps - st.step) / st.steps_per_s
    names = s.p.offloader.names
    est = s.current.remote.estimate
    backend = run.get("remote_backend") or (names[0] if names else "none")
    return {
        "backend": backend, "where": s.current.remote.where(backend),  # ssh: its box; else [offload] gpu
        "backends": names, "gpu": o["gpu"], "call_id": run.get("remote_call_id"),
        "cost_usd": round(s.cost_now(now), 4), "budget_usd": o["budget_usd"],
        "estimate_usd": round(est.usd, 2) if est is not None and est.usd is not None else None,
        "remote_state": getattr(st, "state", None), "problem": s.current.remote.problem, "eta_s": _num(eta),
        "remote": s.remote_description(),
    }


_CLOUD_DETAIL = {State.OFFLOADING: "moving the job to the cloud",
                 State.REMOTE: "training in the cloud",
                 State.CANCELLING: "stopping the cloud run (its final checkpoint first)",
                 State.PULLING: "bringing the result home"}
_HOLD_DETAIL = {"user": "by you", "schedule": "by the schedule",
                "disk": "for disk space (a disk is full)"}


def display_state(state: State, holds: frozenset[str] | set[str]) -> tuple[str, str]:
    """(word, detail) for the phone. A pause by you or the schedule wins over cooling: it is
    what decides when the job goes on (cooling ends by itself within minutes)."""
    if state in (State.RUNNING, State.COOLING, State.STARTING, State.IDLE):
        for owner in ("user", "schedule", "disk"):  # also before the start: the night window
            if owner in holds:
                extra = " (and cooling)" if "thermal" in holds or state == State.COOLING else ""
                return "PAUSED", _HOLD_DETAIL[owner] + extra
        if state == State.COOLING or (state == State.RUNNING and "thermal" in holds):
            return "COOLING", "paused until the GPU has cooled"
        if state == State.RUNNING:
            return "RUNNING", "training on this machine"
    if state in _CLOUD_DETAIL:
        return "CLOUD", _CLOUD_DETAIL[state]
    return {
        State.IDLE: ("STARTING", "about to start the job"),
        State.STARTING: ("STARTING", "starting the job"),
        State.RECOVERING: ("RECOVERING", "waiting for the GPU after a reset"),
        State.STOPPED: ("STOPPED", "stopped; `nightshift resume` continues it"),
        State.SUCCEEDED: ("DONE", "training finished"),
        State.FAILED: ("FAILED", "the run gave up; see failure"),
        State.CANCELLED: ("CANCELLED", "cancelled by you; the queue moves on"),
        State.INTERRUPTED: ("STOPPED", "interrupted; a newer run was continued"),
    }[state]


def headline(state: State, holds: dict[str, str] | frozenset[str] | set[str]) -> str:
    """The status' first words for this state and these holds ("PAUSED by you"): what a
    control reply says the run is now, rendered by the card's own function."""
    word, detail = display_state(state, frozenset(holds))
    return statusfmt.headline({"display_state": word, "display_detail": detail})


def _paused_reason(word: str, holds: dict[str, str]) -> str | None:
    """The reason of the hold the display names, in full (the phone wraps it, never cuts it)."""
    if word == "PAUSED":
        return holds.get("user") or holds.get("schedule") or holds.get("disk")
    if word == "COOLING":
        return holds.get("thermal")
    return None


def _governor(s: Face, r: Reading | None, mono: float) -> GovernorStatus | None:
    g = s.gov
    if g is None:
        return None
    from daemon.policy.governor import status_line
    # speed: measured step rate under the cap / at full clock (None until both are measured)
    speed = g.speed.speed(g.min_s(float(s.cfg["gpu"]["poll_interval_s"])))
    governed = g.governed_s(mono)
    return {"cap_mhz": g.state.cap_mhz, "learned_mhz": g.state.learned_mhz, "reason": g.reason,
            "speed": speed, "top_mhz": g.top, "pauses": g.pauses, "governed_s": governed,
            "problem": g.state.problem or s.problems.get("governor"),
            "held_s": round(g.caps.held_s, 1), "held_mean_mhz": g.caps.mean_mhz, "held_min_mhz": g.caps.lowest_mhz,
            "line": status_line(g.state, getattr(r, "edge_c", None), speed=speed, pauses=g.pauses,
                                governed_s=governed, top_mhz=g.top or 2700)}


def _faults(net: eta_mod.NetRate | None) -> EtaFaults | None:
    """The faults the ETA still expects (policy/faults.py), for the JSON."""
    o = net.faults if net is not None else None
    if o is None:
        return None
    return {"per_h": round(o.per_s * 3600, 3), "cost_s": round(o.cost_s, 1), "measured": o.measured,
            "prior": o.prior.source}


def _eta_at(eta: float | None, est: eta_mod.Eta | None, wall: float) -> EtaAt:
    """The ETA as wall-clock times (epoch seconds): when it ends, and the range while uncertain."""
    if eta is None or not math.isfinite(eta):
        return {"eta_at": None, "eta_low_at": None, "eta_high_at": None}
    lo = getattr(est, "low_s", None)
    hi = getattr(est, "high_s", None)
    return {"eta_at": round(wall + eta),
            "eta_low_at": round(wall + lo) if lo is not None else round(wall + eta),
            "eta_high_at": round(wall + hi) if hi is not None else round(wall + eta)}


def _step(s: Face, loading: bool) -> tuple[int | None, str | None]:
    """The step to show, and why when it is behind what was shown before: while a restarted
    job loads, the step it resumes from (not the dead attempt's stale one); until it has caught
    up, "back to step N after the restart" -- the step never goes backwards unexplained."""
    f = s.current.facts
    resume = getattr(s, "resume_step", None)
    if loading and resume is not None and f.step is not None and resume < f.step:
        return resume, f"back to step {resume} after the restart (it had reached {f.step})"
    if f.back_from is not None and f.step is not None and f.step < f.back_from:
        return f.step, f"redoing steps up to {f.back_from} after the restart"
    return f.step, None


# A snapshot is rebuilt when ``inputs_key`` changed, else at most this often (for the ages, the
# duty cycle and the ETA, which move with time alone). Issue 30: rebuilding it every 0.2 s tick
# was ~15% of the daemon's CPU while supervising.
REFRESH_S = 1.0


def inputs_key(s: Face) -> tuple[object, ...]:
    """What the status shows that can change without time passing, compared by value or by
    identity (the Supervisor and the parts replace those objects, never mutate them in place): a new
    progress record, reading, event, hold, problem, checkpoint, state, run-row write, remote
    status, queue plan or governor decision. Cheap: no I/O, no copy."""
    f = s.current.facts
    runner = s.current.runner
    g = s.gov
    run = s.run  # the store's cached row (a copy): its "updated" moves with every write
    return (s.state, s.run_id, runner.pid if runner is not None else None,
            runner.tail.bad_lines if runner is not None else 0,
            f.step, f.loss, f.last_record_t, f.total_steps, f.steps_lost, id(f.checkpoint),
            id(s.last_reading), id(s.last_event), id(s.diagnosis), len(s.reset_log.rows),
            id(s.queue_plan),
            id(s.current.remote.remote), id(s.current.remote.estimate), s.current.remote.problem,
            tuple(s.holds.items()), tuple(s.problems.items()), s.current.failure, s.stop_loss,
            s.store.problem, s.store.pending_writes, run.get("updated"),
            s.current.interval_steps, None if g is None else (id(g.state), g.reason, g.pauses))


def _stop_loss(stop: tuple[int, float] | None) -> LossStopped | None:
    """The loss of the divergence that stopped the run, as text ("nan", "inf", "2152"): JSON
    has no NaN, and null would read as "no loss"."""
    if stop is None:
        return None
    step, loss = stop
    return {"step": step, "loss": f"{loss:.4g}" if math.isfinite(loss) else str(loss)}


def build_status(s: Face, now: float) -> Status:
    f = s.current.facts
    run = s.run
    r = s.last_reading
    ckpt: CheckpointStatus | None = None
    if f.checkpoint and (path := f.checkpoint.get("path")):
        t = f.checkpoint.get("t")
        ckpt = {"step": f.checkpoint.get("step"), "path": path,
                "adopted": f.checkpoint.get("adopted"),
                "name": Path(str(path)).name,
                "age_s": round(now - t, 1) if t else None}
    cloud = _cloud(s, run, now)
    holds = frozenset(s.holds)
    word, detail = display_state(s.state, holds)
    loading = word == "RUNNING" and waitview.loading(s)
    if loading:  # started, not reported yet: importing torch, restoring -- not training
        word, detail = "STARTING", waitview.starting_detail(s)
    meter = s.duty  # the run's duty-cycle meter (pace.py), fed once per tick
    # rate and ETA only while the job is on its way to the end without waiting for someone
    live = word in ("RUNNING", "COOLING", "RECOVERING", "STARTING") or s.state == State.REMOTE
    remaining = (f.total_steps - f.step) if f.total_steps and f.step is not None else None
    duty = meter.duty(now)
    net = s.progress.rate() if hasattr(s, "progress") else None
    est = eta_mod.estimate(remaining, f.steps_per_s, duty, net) if live else None
    eta = est.seconds if est is not None else None
    if s.state == State.REMOTE:
        eta = cloud.get("eta_s")
    eta_at = _eta_at(eta, est if s.state != State.REMOTE else None, now)
    owner = shown_hold(holds)
    step, step_note = _step(s, loading)
    doc: Status = {
        "state": s.state.value,
        "display_state": word,
        "display_detail": detail,
        "run_id": s.run_id,
        "job": run.get("name") or s.cfg["job"]["name"],  # as the queue named the run (issue 28)
        "pid": s.current.runner.pid if s.current.runner is not None else None,
        "step": step,
        "step_note": step_note,
        "waiting": waitview.waiting(s, word, s.mono()),
        "total_steps": f.total_steps,
        "progress_pct": f.progress_pct,
        "loss": _num(f.loss),
        "loss_trend": [x for x in f.loss_trend() if math.isfinite(x)],
        "steps_per_s": round(f.steps_per_s, 3) if f.steps_per_s and live else None,
        "eta_s": round(eta) if eta is not None and math.isfinite(eta) else None,
        "eta_steady_s": round(est.steady_s) if est is not None and est.steady_s is not None
        and s.state != State.REMOTE else None,
        **eta_at,
        "eta_basis": ("cloud" if s.state == State.REMOTE else est.basis) if est is not None else None,
        "eta_why": est.why if est is not None and s.state != State.REMOTE else None,
        "eta_faults": _faults(net) if est is not None and est.basis == "progress" and s.state != State.REMOTE else None,
        "duty_cycle": round(duty.fraction, 3) if duty is not None else None,
        "duty_window_s": round(duty.observed_s) if duty is not None else None,
        "temps": {"edge_c": _num(getattr(r, "edge_c", None)), "tctl_c": _num(getattr(r, "tctl_c", None))},
        "thresholds": {k: s.cfg["thermal"][k] for k in ("pause_at_c", "resume_at_c",
                                                          "tctl_pause_at_c")},
        "power_w": _num(getattr(r, "power_w", None)),
        "gpu_busy_pct": _num(getattr(r, "busy_pct", None)),
        "sensor": getattr(r, "source", None) or (None if r is None else "unknown"),
        "gpu": {"card": getattr(s.p.sensor, "card", None),
                # the simulated card is the only one in its own tree: say what it is instead
                "why": 'the simulated GPU ([gpu] sensor = "simulated"), not real hardware'
                if getattr(s.p.sensor, "name", None) == "simulated"
                else getattr(s.p.sensor, "card_reason", None)},
        # resets count toward offload, the rate and the diagnosis; soft recoveries and faults
        # are shown apart (daemon/gpu/resets/resetlog.py)
        "resets": {**s.reset_log.status(now, s.run_id or None), "total": run.get("resets", 0),
                   "window_s": s.cfg["resets"]["window_s"]},
        "backend": "cloud" if run.get("backend") == "cloud" else "local",
        "cloud": cloud,
        "checkpoint": ckpt,
        "checkpoint_interval": {
            "mode": "auto" if s.cfg["checkpoint"]["interval"] == "auto" else "fixed",
            "steps": s.current.interval_steps,
            "explanation": s.interval_explanation,
        },
        "held_by": owner,
        "holds": dict(s.holds),
        "paused_reason": _paused_reason(word, s.holds),
        "last_event": s.last_event,
        "failure": s.current.failure or run.get("failure"),
        "loss_stopped": _stop_loss(s.stop_loss),
        "restarts": run.get("restarts", 0),
        "steps_lost": f.steps_lost,
        "pauses": run.get("pauses", 0),
        "problems": sorted(set(s.problems.values()) | ({s.store.problem} if s.store.problem else set())
                           # the cloud's (a cancel not confirmed: it may still be billing)
                           | ({s.current.remote.problem} if s.current.remote.problem and s.state in REMOTE_STATES else set())),
        "store": {"problem": s.store.problem, "pending_writes": s.store.pending_writes,
                  "moved_aside": str(s.store.moved_aside) if s.store.moved_aside else None},
        "bad_progress_lines": {"count": s.current.runner.tail.bad_lines if s.current.runner is not None else 0,
                               "last": s.current.runner.tail.last_bad if s.current.runner is not None else None},
        "queue": {"waiting": len(s.queue()), "plan": getattr(s.queue_plan, "reason", None)},
        "governor": _governor(s, r, s.mono()),
        "updated": now,
    }
    # the words every reader shows (card, dashboard, control replies): rendered once, here
    doc["headline"] = statusfmt.headline(doc)
    doc["eta_text"] = statusfmt.eta_text(doc)
    return doc
