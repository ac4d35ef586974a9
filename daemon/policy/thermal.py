"""Thermal policy (pure): pause before the chip overheats, resume when it has cooled.

Pause when edge >= pause_at_c, or Tctl >= tctl_pause_at_c (CPU and GPU share the die and the
firmware throttles on Tctl), or (``trend``) when a robust slope over the recent edge readings
says edge will reach pause_at_c before the next poll. The supervisor still needs up to one step
to hold the job after a pause decision; that margin is its business, not this module's.

Resume once min_cooldown_s has passed since the pause AND edge <= resume_at_c AND Tctl is at or
below tctl_pause_at_c minus the same hysteresis gap (pause_at_c - resume_at_c). Between the two
thresholds nothing changes: a running job keeps running, a paused one stays paused, so the job
cannot flap. max_cooldown_s bounds one wait: past it the job resumes whatever the temperature
(reason "max cooldown reached ..."), because a chip that does not cool while idle is not heated
by the job, and the firmware's own throttling still protects it.

Unknown readings (None), chosen deliberately:
- never pause on an unknown alone: a sensor that fails must not stall the whole night;
- never resume on an unknown edge before max_cooldown_s: we paused for a reason and cannot see
  it has gone (reads fail with EPERM during a reset, exactly when caution matters). Exception:
  a machine with no edge sensor at all (no edge in the history either) resumes on Tctl alone.
- an unknown Tctl does not block a resume on a known, cool edge: many machines have no
  k10temp, and edge is the primary signal.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from daemon.policy.cfgtypes import ThermalConfig

# The problem shown while no temperature can be read: the sensor keeps it in its problems, the
# Supervisor's sensor rule (supervise.sensor_problem) words it. Here, not in gpu/sensors/, so the
# policies import nothing of the GPU package (which reads the config's types from policy/).
THERMAL_OFF = "thermal protection off: no temperature sensor"

# The trend looks at this much recent history (or 5 polls, if longer), and needs this many points.
TREND_SPAN_S = 30.0
TREND_MIN_POINTS = 3


def clock_cap_due(edge_c: float | None, cfg_thermal: ThermalConfig) -> bool:
    """The clock cap (daemon/gpu/clockcap.py) goes on halfway between resume_at_c and pause_at_c:
    early enough to slow the climb before a pause is needed, late enough that a cool GPU runs
    at full clock. An unknown edge never caps (like it never pauses)."""
    if edge_c is None:
        return False
    return edge_c >= (float(cfg_thermal["pause_at_c"]) + float(cfg_thermal["resume_at_c"])) / 2


@dataclass(frozen=True)
class ThermalState:
    paused: bool
    paused_at: float | None
    reason: str = ""

    def __post_init__(self) -> None:
        # A pause without its start time would make both cooldown bounds meaningless.
        if self.paused and self.paused_at is None:
            raise ValueError("a paused ThermalState needs paused_at (when the pause began)")


@dataclass(frozen=True)
class ThermalObs:
    now: float
    edge_c: float | None
    tctl_c: float | None
    history: list[tuple[float, float]] = field(default_factory=list)  # (t, edge_c), oldest first
    poll_interval_s: float = 2.0


@dataclass(frozen=True)
class ThermalDecision:
    action: str  # pause | resume | hold | none
    reason: str
    eta_cross_s: float | None = None  # trend pauses: predicted seconds until edge >= pause_at_c
    forced: bool = False  # resumed only because max_cooldown_s ran out


def slope_c_per_s(history: list[tuple[float, float]], span_s: float = TREND_SPAN_S) -> float | None:
    """Theil-Sen slope (median of pairwise slopes) of edge over the last ``span_s`` seconds.

    The median ignores a single noisy reading that a least-squares fit would turn into a steep
    (false) trend. None when there are too few points to say.
    """
    pts = [(t, c) for t, c in history if c is not None]
    if len(pts) < TREND_MIN_POINTS:
        return None
    t_end = pts[-1][0]
    pts = [(t, c) for t, c in pts if t_end - t <= span_s]
    slopes = [(c2 - c1) / (t2 - t1) for i, (t1, c1) in enumerate(pts)
              for t2, c2 in pts[i + 1:] if t2 != t1]
    if len(pts) < TREND_MIN_POINTS or not slopes:
        return None
    return statistics.median(slopes)


def decide_thermal(obs: ThermalObs, state: ThermalState, cfg: ThermalConfig) -> ThermalDecision:
    """What to do with the job now, from this reading, the pause state and ``cfg["thermal"]``."""
    if state.paused:
        return _while_paused(obs, state, cfg)
    return _while_running(obs, cfg)


def _while_running(obs: ThermalObs, cfg: ThermalConfig) -> ThermalDecision:
    pause_at, tctl_lim = float(cfg["pause_at_c"]), float(cfg["tctl_pause_at_c"])
    edge, tctl = obs.edge_c, obs.tctl_c
    if edge is not None and edge >= pause_at:
        return ThermalDecision("pause", f"edge {edge:.1f} C >= pause_at_c {pause_at:g} C")
    if tctl is not None and tctl >= tctl_lim:
        return ThermalDecision("pause", f"Tctl {tctl:.1f} C >= tctl_pause_at_c {tctl_lim:g} C")
    if edge is not None and cfg.get("trend", True):
        eta = _eta_cross_s(obs, pause_at)
        if eta is not None and eta <= obs.poll_interval_s:
            return ThermalDecision(
                "pause", f"edge {edge:.1f} C rising: crosses {pause_at:g} C in {eta:.1f} s, "
                f"before the next poll", eta)
    if edge is None and tctl is None:
        return ThermalDecision("none", "temperature unknown: not pausing on an unknown reading")
    return ThermalDecision("none", f"within limits (edge {_fmt(edge)}, Tctl {_fmt(tctl)})")


def _eta_cross_s(obs: ThermalObs, pause_at: float) -> float | None:
    """Seconds until edge reaches pause_at at the recent rate, or None if it isn't rising."""
    assert obs.edge_c is not None
    hist = list(obs.history)
    if not hist or hist[-1][0] < obs.now:
        hist.append((obs.now, obs.edge_c))  # the current reading is the freshest point
    span = max(TREND_SPAN_S, 5 * obs.poll_interval_s)
    # Readings older than the span are not "the trend now" (e.g. before a daemon restart).
    hist = [(t, c) for t, c in hist if obs.now - t <= span]
    s = slope_c_per_s(hist, span)
    if s is None or s <= 0:
        return None
    return (pause_at - obs.edge_c) / s


def _while_paused(obs: ThermalObs, state: ThermalState, cfg: ThermalConfig) -> ThermalDecision:
    pause_at, resume_at = float(cfg["pause_at_c"]), float(cfg["resume_at_c"])
    tctl_resume = float(cfg["tctl_pause_at_c"]) - (pause_at - resume_at)
    min_cd, max_cd = float(cfg["min_cooldown_s"]), float(cfg["max_cooldown_s"])
    assert state.paused_at is not None
    waited = obs.now - state.paused_at
    edge, tctl = obs.edge_c, obs.tctl_c
    if waited >= max_cd:
        return ThermalDecision(
            "resume", f"max cooldown reached ({max_cd:g} s): resuming at edge {_fmt(edge)}, "
            f"Tctl {_fmt(tctl)}", forced=True)
    if waited < min_cd:
        return ThermalDecision("hold", f"minimum cooldown: {waited:.0f}/{min_cd:g} s")
    if edge is None:
        has_edge_sensor = any(c is not None for _, c in obs.history)
        if has_edge_sensor or tctl is None:
            return ThermalDecision("hold", f"temperature unknown: waiting (at most "
                                   f"{max_cd - waited:.0f} s more)")
    elif edge > resume_at:
        return ThermalDecision("hold", f"cooling: edge {edge:.1f} C > resume_at_c {resume_at:g} C")
    if tctl is not None and tctl > tctl_resume:
        return ThermalDecision("hold", f"cooling: Tctl {tctl:.1f} C > {tctl_resume:g} C")
    return ThermalDecision("resume", f"cooled to edge {_fmt(edge)}, Tctl {_fmt(tctl)} after "
                           f"{waited:.0f} s")


def _fmt(c: float | None) -> str:
    return "unknown" if c is None else f"{c:.1f} C"
