"""What a waiting run waits for, and about how long: the status' ``waiting`` field.

"Why it paused" is history; at 3 am the question is "until when". Each waiting state answers it
in one phrase that the card shows on its ``wait`` line (daemon/web/statusfmt.py):
- COOLING: the edge below ``resume_at_c`` (now N C), in about T from the cooling curve
  (policy/cooling.py) -- and not before ``min_cooldown_s`` is over;
- RECOVERING: the GPU after a reset: the cooldown left, the probe running, the next probe;
- STARTING: the job loading (the interpreter, torch, the data), "resuming from step N" after a
  restart;
- PAUSED by the schedule: until the night window opens; by you: until `nightshift resume`.

Reads the status face (daemon/core/statusface.py) like statusview.py does: never written.
"""

from __future__ import annotations

from daemon.core.viewsource import StatusView
from daemon.policy.cooling import time_to_cool
from daemon.policy.records import Waiting
from daemon.policy.recovery import decide_recovery
from daemon.policy.states import State

Face = StatusView  # the status face, read only, not imported (daemon/core/viewsource.py)


def loading(s: Face) -> bool:
    """The job was started (state running) and this attempt has not reported yet: it is still
    importing torch and restoring, not training."""
    return (s.state == State.RUNNING and s.current.runner is not None and s.current.runner.running
            and getattr(s, "record_seen_at", 0) is None)


def starting_detail(s: Face) -> str:
    step = getattr(s, "resume_step", None)
    if step is not None:
        return f"resuming from step {step}"
    return "loading the job"


def waiting(s: Face, word: str, mono: float) -> Waiting | None:
    """{"for": phrase, "about_s": seconds or None} while the run waits, else None."""
    holds = s.holds
    if word == "PAUSED":
        if "user" in holds:
            return {"for": "you: `nightshift resume` continues it", "about_s": None}
        if "disk" in holds and "schedule" not in holds:  # diskfull.py: it goes on by itself
            return {"for": "disk space: free some on the full disk (see problems)", "about_s": None}
        why = holds.get("schedule") or ""
        opens = why.rsplit("opens at ", 1)[1] if "opens at " in why else None
        return {"for": f"the night window, until {opens}" if opens else "the schedule",
                "about_s": None}
    if word == "COOLING":
        th = s.cfg["thermal"]
        target = float(th["resume_at_c"])
        edge = getattr(s.last_reading, "edge_c", None)
        now_c = f" (now {edge:.0f}C)" if edge is not None else ""
        paused_at = getattr(getattr(s, "thermal", None), "paused_at", None)
        if edge is not None and edge < target and paused_at is not None:  # cool: the minimum left
            left = paused_at + float(th["min_cooldown_s"]) - mono
            if left >= 1:
                return {"for": f"the minimum cooldown (min_cooldown_s){now_c}", "about_s": round(left)}
            return {"for": f"the next reading{now_c}", "about_s": None}
        est = time_to_cool(list(s.edges), target, mono)
        text = f"the edge below {target:.0f}C{now_c}"
        if est is None:
            return {"for": text + ", time not known yet", "about_s": None}
        if not est.reachable:
            return {"for": text + f"; it levels off near {est.floor_c:.0f}C, so the "
                    f"{th['max_cooldown_s']:.0f} s limit decides", "about_s": None}
        return {"for": text, "about_s": round(est.seconds or 0.0)}
    if word == "RECOVERING":
        rec = s.recovering.state
        if s.recovering.probe_task is not None:
            return {"for": "the GPU probe (a small job on the GPU) to finish", "about_s": None}
        if rec is None:
            return {"for": "the GPU after a reset", "about_s": None}
        act = decide_recovery(rec, mono, s.cfg["resets"], s.recovering.probe_result)
        if act.action == "wait" and act.wait_s < 1:
            return {"for": "a GPU probe", "about_s": None}
        if act.action == "wait" and rec.probes_failed == 0:
            return {"for": "the cooldown after the reset, then a GPU probe",
                    "about_s": round(act.wait_s)}
        if act.action == "wait":
            return {"for": f"the next GPU probe ({act.reason.split(';')[0]})",
                    "about_s": round(act.wait_s)}
        return {"for": f"the GPU: {act.reason}", "about_s": None}
    if word == "STARTING":
        if loading(s):
            return {"for": f"the job to load ({starting_detail(s)})", "about_s": None}
        at = getattr(s, "next_start_at", None)  # a restart's back-off (monotonic)
        if at is not None and at > mono:
            return {"for": "the job's restart", "about_s": round(at - mono)}
        return {"for": "the job to start", "about_s": None}
    return None
