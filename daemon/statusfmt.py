"""/status as text for curl on a phone: about 40 columns, one fact per line."""

from __future__ import annotations

import time
from typing import Any

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 24) -> str:
    vals = values[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(BARS[min(len(BARS) - 1, int((v - lo) / span * (len(BARS) - 1) + 0.5))] for v in vals)


def duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _c(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f}C"


def render(st: dict[str, Any]) -> str:
    lines = [f"nightshift  {st['state'].upper()}", f"job   {st.get('job') or '?'}"]
    step, total = st.get("step"), st.get("total_steps")
    pct = f" {st['progress_pct']:.1f}%" if st.get("progress_pct") is not None else ""
    lines.append(f"step  {step if step is not None else '?'}/{total or '?'}{pct}")
    if st.get("loss") is not None:
        lines.append(f"loss  {st['loss']:.4g} {sparkline(st.get('loss_trend') or [], 20)}")
    rate = st.get("steps_per_s")
    lines.append(f"rate  {rate:.2f} st/s  ETA {duration(st.get('eta_s'))}" if rate else
                 f"rate  ?  ETA {duration(st.get('eta_s'))}")
    t = st.get("temps") or {}
    lines.append(f"temp  edge {_c(t.get('edge_c'))}  Tctl {_c(t.get('tctl_c'))}")
    r = st.get("resets") or {}
    heat = {True: "heat", False: "not heat", None: "?"}[r.get("heat_correlated")]
    lines.append(f"reset {r.get('in_window', 0)} in {duration(r.get('window_s'))}, "
                 f"{r.get('total', 0)} total ({heat})")
    cloud = st.get("cloud") or {}
    if st.get("backend") == "cloud" or (cloud.get("cost_usd") or 0) > 0:
        lines.append(f"cloud {cloud.get('gpu')} ${cloud.get('cost_usd', 0):.2f}"
                     f"/${cloud.get('budget_usd', 0):.2f}")
    else:
        lines.append("where local GPU")
    ck = st.get("checkpoint")
    if ck:
        lines.append(f"ckpt  step {ck['step']}, {duration(ck.get('age_s'))} ago")
    if st.get("paused_reason"):
        lines.append(f"why   {st['paused_reason'][:34]}")
    ev = st.get("last_event")
    if ev:
        ago = duration(time.time() - ev["t"]) if ev.get("t") else "?"
        lines.append(f"last  {ev['kind']} {ago} ago")
        lines.append(f"      {ev['message'][:34]}")
    if st.get("failure"):
        lines.append(f"FAIL  {st['failure'].splitlines()[0][:34]}")
    if (cloud.get("problem")):
        lines.append(f"cloud {cloud['problem'][:34]}")
    return "\n".join(lines) + "\n"
