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


GOVERNED_THEN_COOLED = {
    "display_state": "DONE", "step": 250, "total_steps": 250, "resets": {"total": 1},
    # the last snapshot: the job finished, the chip cooled, the cap is the top clock again
    "governor": {"cap_mhz": 2700, "top_mhz": 2700, "learned_mhz": 2425, "speed": 0.94, "pauses": 0,
                 "line": "governed at 2700 MHz (1.00x clock), edge 61 C, 0 pauses in 1 min",
                 "held_s": 21.4, "held_mean_mhz": 2512, "held_min_mhz": 2450, "problem": None}}


def test_the_summary_says_the_caps_held_during_the_run_not_the_cap_at_its_end():
    """Issue 29: the summary said "governed at 2700 MHz (1.00x clock)" of a run held at ~2500
    MHz: the cap at the end, after the finished chip cooled."""
    text = demo.summary(GOVERNED_THEN_COOLED, 40.0, [{"kind": "state"}], [], None)
    line = next(x for x in text.splitlines() if x.startswith("governor:"))
    assert line == ("governor:        held a cap for 21 s: 2512 MHz on average (0.93x the top clock), "
                    "lowest 2450 MHz, 0.94x speed; 0 pauses since it engaged; learned 2425 MHz "
                    "(the next night of this job starts there)"), line
    assert "2700" not in line and "1.00x" not in line


def test_a_run_never_capped_is_said_to_have_run_at_full_clock_beside_its_pauses():
    """Seen at load 10: the chip paused once at 88 C and the governor never capped; "the chip
    stayed under the setpoint" would have been false. The words say what happened only."""
    st = {**GOVERNED_THEN_COOLED, "governor": {**GOVERNED_THEN_COOLED["governor"], "held_s": 0.0,
                                               "held_mean_mhz": None, "held_min_mhz": None, "pauses": 1,
                                               "learned_mhz": None}}
    line = next(x for x in demo.summary(st, 40.0, [], [], None).splitlines() if x.startswith("governor:"))
    assert line.startswith("governor:        never capped the clock: full clock all along; 1 pause "
                           "since it engaged; no clock learned: the chip never settled at the setpoint "
                           "(the next night starts at full clock)"), line


def test_a_governor_that_cannot_cap_says_so_in_the_summary():
    st = {**GOVERNED_THEN_COOLED, "governor": {**GOVERNED_THEN_COOLED["governor"], "problem": "no overdrive",
                                               "line": "governor cannot cap the clock; pausing only (see the problem)"}}
    line = next(x for x in demo.summary(st, 40.0, [], [], None).splitlines() if x.startswith("governor:"))
    assert "cannot cap the clock; pausing only" in line and "held" not in line


def test_an_eta_check_says_the_resets_that_came_after_it():
    """The demo's ETA check said "-52%" bare: a reset injected after it, which no ETA of a rate
    of one per hours foresees, cost its restart. The line says so; a check with none after it
    stays as it was."""
    etas = [(float(t), t * 5, 30.0 - t) for t in range(0, 30)]
    rows = demo.eta_check(etas, 45.0, resets_at=[20.0])
    assert [r["resets_after"] for r in rows] == [1, 0]
    lines = demo.eta_check_lines(rows)
    assert lines[0] == "at 15 s (step 75): 15 s shown, 30 s taken (-50%; 1 reset came after it, not foreseen)"
    assert lines[1] == "at 29 s (step 145): 1 s shown, 16 s taken (-94%)"
    assert "resets_after" not in demo.eta_check(etas, 45.0)[0]  # the bench's nights: not known
