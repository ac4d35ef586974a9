"""The status document (GET /status, `nightshift status --json`, /metrics): one dict with the
stable field names documented in docs/api.md.

Built once per tick by the Supervisor from its own fields (read only) and published as its
snapshot; nothing reads the Supervisor's live structures from outside the loop.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.policy.supervise import shown_hold

if TYPE_CHECKING:
    from daemon.supervisor import Supervisor


def _num(x: Any) -> Any:
    """JSON has no NaN or Infinity: an unknown or non-finite number is null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _cloud(s: Supervisor, run: dict[str, Any], now: float) -> dict[str, Any]:
    o = s.cfg["offload"]
    st = s.off.remote
    eta = None
    if st is not None and st.steps_per_s and st.total_steps and st.step is not None:
        eta = (st.total_steps - st.step) / st.steps_per_s
    names = s.p.offloader.names
    return {
        "backend": run.get("remote_backend") or (names[0] if names else "none"),
        "backends": names, "gpu": o["gpu"], "call_id": run.get("remote_call_id"),
        "cost_usd": round(s.cost_now(now), 4), "budget_usd": o["budget_usd"],
        "estimate_usd": round(s.off.estimate.usd, 2) if s.off.estimate is not None else None,
        "remote_state": getattr(st, "state", None), "problem": s.off.problem, "eta_s": _num(eta),
    }


def build_status(s: Supervisor, now: float) -> dict[str, Any]:
    f = s.facts
    run = s.run
    r = s.last_reading
    ckpt = None
    if f.checkpoint and f.checkpoint.get("path"):
        ckpt = {"step": f.checkpoint.get("step"), "path": f.checkpoint["path"],
                "name": Path(str(f.checkpoint["path"])).name,
                "age_s": round(now - f.checkpoint["t"], 1) if f.checkpoint.get("t") else None}
    diag = s.diagnosis
    cloud = _cloud(s, run, now)
    live = s.state.value in ("running", "cooling", "remote")
    eta = f.eta_s() if live else None
    if s.state.value == "remote" and cloud.get("eta_s") is not None:
        eta = cloud["eta_s"]
    owner = shown_hold(frozenset(s.holds))
    return {
        "state": s.state.value,
        "run_id": s.run_id,
        "job": s.cfg["job"]["name"],
        "pid": s.runner.pid if s.runner is not None else None,
        "step": f.step,
        "total_steps": f.total_steps,
        "progress_pct": f.progress_pct,
        "loss": _num(f.loss),
        "loss_trend": [x for x in f.loss_trend() if math.isfinite(x)],
        "steps_per_s": round(f.steps_per_s, 3) if f.steps_per_s and live else None,
        "eta_s": round(eta) if eta is not None and math.isfinite(eta) else None,
        "temps": {"edge_c": _num(getattr(r, "edge_c", None)), "tctl_c": _num(getattr(r, "tctl_c", None))},
        "power_w": _num(getattr(r, "power_w", None)),
        "gpu_busy_pct": _num(getattr(r, "busy_pct", None)),
        "sensor": getattr(r, "source", None) or (None if r is None else "unknown"),
        "resets": {
            "in_window": s.resets_in_window(now),
            "total": run.get("resets", 0),
            "window_s": s.cfg["resets"]["window_s"],
            "heat_correlated": getattr(diag, "heat_correlated", None),
            "diagnosis": getattr(diag, "summary", None),
            "mitigations": list(getattr(diag, "mitigations", []) or []),
        },
        "backend": "cloud" if run.get("backend") == "cloud" else "local",
        "cloud": cloud,
        "checkpoint": ckpt,
        "checkpoint_interval": {
            "mode": "auto" if s.cfg["checkpoint"]["interval"] == "auto" else "fixed",
            "steps": s.interval_steps,
            "explanation": s.interval_explanation,
        },
        "held_by": owner,
        "holds": dict(s.holds),
        "paused_reason": s.holds.get(owner) if owner else None,
        "last_event": s.last_event,
        "failure": s.failure or run.get("failure"),
        "restarts": run.get("restarts", 0),
        "steps_lost": f.steps_lost,
        "pauses": run.get("pauses", 0),
        "problems": sorted(set(s.problems.values())),
        "updated": now,
    }
