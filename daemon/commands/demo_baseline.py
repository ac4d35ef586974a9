"""What `nightshift demo --governor`'s summary compares with: the same simulated chip training
the same steps at full clock under the pause policy alone (the plain demo's way), computed.

Running the plain story as well would double the demo's minute; the chip is a model anyway, so
the comparison steps that model (simgpu.heat, the simulator's own equation) under the real pause
policy (policy/thermal.decide_thermal, trend included) on a clock of its own: the same numbers
on an idle or a busy machine. A reset injected in the story is left out of both sides: a
governor cannot prevent it, and it cools the chip the same way with or without one.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.gpu.simgpu import DEFAULTS, heat
from daemon.policy.cfgtypes import ThermalConfig
from daemon.policy.thermal import ThermalObs, ThermalState, decide_thermal

DT_S = 0.05  # real seconds per model step (the demo polls every 0.2 s)


@dataclass(frozen=True)
class Baseline:
    pauses: int  # thermal pauses the pause policy alone takes
    held_s: float  # seconds held cooling (the steps wait)
    train_s: float  # seconds of training at full clock


def pause_only(chip: dict[str, float], thermal: ThermalConfig, train_s: float,
               poll_s: float) -> Baseline:
    """``chip``: [gpu.simulated] (simulated seconds, ``time_scale`` per real second); the
    policy's times (cooldowns, polls) are real seconds, like the daemon's."""
    p = {**DEFAULTS, **chip}
    scale = p["time_scale"]
    temp, now, trained, held = p["ambient_c"], 0.0, 0.0, 0.0
    state, pauses = ThermalState(False, None), 0
    history: list[tuple[float, float]] = []
    next_poll = 0.0
    while trained < train_s:
        if now >= next_poll:
            next_poll += poll_s
            load = 0.0 if state.paused else 1.0
            tctl = temp + p["tctl_offset_c"] * load
            history = [*history, (now, temp)][-200:]
            dec = decide_thermal(ThermalObs(now, temp, tctl, history, poll_s), state, thermal)
            if dec.action == "pause":
                state, pauses = ThermalState(True, now, dec.reason), pauses + 1
            elif dec.action == "resume":
                state = ThermalState(False, None)
        if state.paused:
            held += DT_S
        else:
            trained += DT_S
        temp = heat(p, temp, 0.0 if state.paused else 1.0, 1.0, DT_S * scale)
        now += DT_S
    return Baseline(pauses, round(held, 1), round(trained, 1))
