"""The status document (GET /status, `nightshift status --json`, /metrics): one dict with the
stable field names documented in docs/api.md, built from the daemon's live facts.
Cheap and synchronous: it runs in the HTTP handler on the daemon's loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.service import Daemon
    from daemon.wiring import Components


def build_status(d: Daemon, parts: Components) -> dict[str, Any]:
    f = d.facts
    now = d.clock()
    run = d.run
    r = d.last_reading
    ckpt = None
    if f.checkpoint and f.checkpoint.get("path"):
        ckpt = {"step": f.checkpoint.get("step"), "path": f.checkpoint["path"],
                "name": Path(str(f.checkpoint["path"])).name,
                "age_s": round(now - f.checkpoint["t"], 1) if f.checkpoint.get("t") else None}
    diag = parts.diagnosis
    off = parts.offload
    cloud = off.status(d, now)
    eta = f.eta_s()
    if d.state == "remote" and cloud.get("eta_s") is not None:
        eta = cloud["eta_s"]
    return {
        "state": d.state,
        "run_id": d.run_id,
        "job": d.cfg["job"]["name"],
        "pid": d.job.pid if d.job is not None and d.job.running else None,
        "step": f.step,
        "total_steps": f.total_steps,
        "progress_pct": f.progress_pct,
        "loss": f.loss,
        "loss_trend": f.loss_trend(),
        "steps_per_s": round(f.steps_per_s, 3) if f.steps_per_s else None,
        "eta_s": round(eta) if eta is not None else None,
        "temps": {"edge_c": getattr(r, "edge_c", None), "tctl_c": getattr(r, "tctl_c", None)},
        "power_w": getattr(r, "power_w", None),
        "gpu_busy_pct": getattr(r, "busy_pct", None),
        "sensor": getattr(r, "source", None) or (None if r is None else "unknown"),
        "resets": {
            "in_window": parts.resets_in_window(now),
            "total": run.get("resets", 0),
            "window_s": d.cfg["resets"]["window_s"],
            "heat_correlated": getattr(diag, "heat_correlated", None),
            "diagnosis": getattr(diag, "summary", None),
            "mitigations": list(getattr(diag, "mitigations", []) or []),
        },
        "backend": "cloud" if run.get("backend") == "cloud" else "local",
        "cloud": cloud,
        "checkpoint": ckpt,
        "checkpoint_interval": {
            "mode": "auto" if d.cfg["checkpoint"]["interval"] == "auto" else "fixed",
            "steps": d.interval_steps,
            "explanation": d.interval_explanation,
        },
        "paused_reason": d.paused_reason,
        "last_event": d.last_event,
        "failure": d.failure or run.get("failure"),
        "restarts": run.get("restarts", 0),
        "steps_lost": f.steps_lost,
        "pauses": run.get("pauses", 0),
        "problems": sorted(parts.problems_seen),
        "updated": now,
    }
