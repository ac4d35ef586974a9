"""Thermal policy (pure): pause before the chip overheats, resume when it has cooled.

Hysteresis: pause at pause_at_c (edge) or tctl_pause_at_c (CPU-die Tctl: CPU and GPU share the
die and the firmware throttles on Tctl), or when the trend says edge will cross pause_at_c
before the next poll; resume at or below resume_at_c (and Tctl below its limit by the same gap)
once min_cooldown_s has passed; max_cooldown_s bounds one wait.

Unknown readings (None): never pause on an unknown alone (a missing sensor must not stall the
night), and never resume on an unknown before max_cooldown_s (we paused for a reason and can't
see it has gone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ThermalState:
    paused: bool
    paused_at: float | None
    reason: str = ""


@dataclass(frozen=True)
class ThermalObs:
    now: float
    edge_c: float | None
    tctl_c: float | None
    history: list[tuple[float, float]]  # recent (t, edge_c), oldest first
    poll_interval_s: float


@dataclass(frozen=True)
class ThermalDecision:
    action: str  # pause | resume | hold | none
    reason: str
    eta_cross_s: float | None = None


def slope_c_per_s(history: list[tuple[float, float]], span_s: float = 30.0) -> float | None:
    """Least-squares slope of edge temperature over the last ``span_s`` seconds."""
    if len(history) < 3:
        return None
    t_end = history[-1][0]
    pts = [(t, c) for t, c in history if t_end - t <= span_s]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mc = sum(c for _, c in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var <= 0:
        return None
    return sum((t - mt) * (c - mc) for t, c in pts) / var


def decide_thermal(obs: ThermalObs, state: ThermalState, cfg: dict[str, Any]) -> ThermalDecision:
    pause_at, resume_at = float(cfg["pause_at_c"]), float(cfg["resume_at_c"])
    tctl_lim = float(cfg["tctl_pause_at_c"])
    gap = pause_at - resume_at
    edge, tctl = obs.edge_c, obs.tctl_c
    if not state.paused:
        if edge is not None and edge >= pause_at:
            return ThermalDecision("pause", f"edge {edge:.1f} C >= pause_at_c {pause_at:g} C")
        if tctl is not None and tctl >= tctl_lim:
            return ThermalDecision("pause", f"Tctl {tctl:.1f} C >= tctl_pause_at_c {tctl_lim:g} C")
        if cfg.get("trend", True) and edge is not None:
            s = slope_c_per_s(obs.history)
            if s is not None and s > 0:
                eta = (pause_at - edge) / s
                if eta <= obs.poll_interval_s:
                    return ThermalDecision("pause", f"edge {edge:.1f} C rising {s * 60:.1f} C/min: "
                                           f"crosses {pause_at:g} C in {eta:.1f} s, before the next "
                                           "poll", eta)
        return ThermalDecision("none", "within limits")
    waited = obs.now - (state.paused_at if state.paused_at is not None else obs.now)
    if waited >= float(cfg["max_cooldown_s"]):
        return ThermalDecision("resume", f"max cooldown reached ({cfg['max_cooldown_s']:g} s); "
                               f"resuming at edge {_fmt(edge)}")
    if waited < float(cfg["min_cooldown_s"]):
        return ThermalDecision("hold", f"minimum cooldown: {waited:.0f}/{cfg['min_cooldown_s']:g} s")
    if edge is None:
        return ThermalDecision("hold", "temperature unknown: waiting (up to max_cooldown_s)")
    if edge > resume_at:
        return ThermalDecision("hold", f"cooling: edge {edge:.1f} C > resume_at_c {resume_at:g} C")
    if tctl is not None and tctl > tctl_lim - gap:
        return ThermalDecision("hold", f"cooling: Tctl {tctl:.1f} C > {tctl_lim - gap:g} C")
    return ThermalDecision("resume", f"cooled to {edge:.1f} C after {waited:.0f} s")


def _fmt(c: float | None) -> str:
    return "unknown" if c is None else f"{c:.1f} C"
