"""`nightshift demo --governor`'s summary against pausing alone (issue 29, item 8): the same chip
and steps under the real pause policy, computed from the simulator's own heat equation."""

from __future__ import annotations

from daemon.commands import demo
from daemon.commands.demo_baseline import pause_only


def test_the_governor_chip_pauses_when_only_pausing_protects_it_and_a_cool_chip_never_does():
    base = demo.governor_baseline(demo.SHORT)  # 250 steps at 10/s: 25 s at full clock
    assert base.train_s >= 25.0 and base.pauses >= 1 and base.held_s >= 3.0  # min_cooldown_s 3
    cfg = demo.demo_config(demo.Path("/tmp"), 250, 1, governor=True)
    cool = {**cfg["gpu"]["simulated"], "load_c": 30.0}  # settles at 75 C: under pause_at_c 88
    assert pause_only(cool, cfg["thermal"], 25.0, 0.2).pauses == 0


def test_the_summary_says_the_governed_pauses_beside_pausing_alone():
    st = {"display_state": "DONE", "step": 250, "total_steps": 250, "resets": {"total": 1},
          "governor": {"line": "governed at 2450 MHz (0.94x speed), edge 85 C, 0 pauses in 1 min",
                       "learned_mhz": 2425, "speed": 0.94}}
    base = demo.governor_baseline(demo.SHORT)
    text = demo.summary(st, 40.0, [{"kind": "state"}], [], base)
    line = next(x for x in text.splitlines() if x.startswith("vs pausing:"))
    assert line.startswith(f"vs pausing:      0 pauses with the governor; the plain demo's pausing "
                           f"alone on this chip: {base.pauses} pause")
    assert "for the same 250 steps" in line and "the cap cost ~2 s of training (0.94x speed)" in line
    plain = demo.summary({**st, "governor": None}, 40.0, [], [], None)
    assert "vs pausing" not in plain  # the plain demo has nothing to compare
