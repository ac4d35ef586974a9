"""The thermal policy with plain values: thresholds, hysteresis, cooldown bounds, unknown
readings, Tctl, and the trend prediction (true and false positives)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.policy.thermal import (
    ThermalDecision,
    ThermalObs,
    ThermalState,
    decide_thermal,
    slope_c_per_s,
)

TH = {"pause_at_c": 90.0, "resume_at_c": 75.0, "tctl_pause_at_c": 95.0, "min_cooldown_s": 60.0,
      "max_cooldown_s": 900.0, "trend": True}
NO_TREND = TH | {"trend": False}
NOW = 10_000.0
RUNNING = ThermalState(paused=False, paused_at=None)
POLL = 2.0


def obs(edge, tctl=None, history=(), now=NOW, poll=POLL) -> ThermalObs:
    return ThermalObs(now=now, edge_c=edge, tctl_c=tctl, history=list(history), poll_interval_s=poll)


def paused(waited: float) -> ThermalState:
    return ThermalState(paused=True, paused_at=NOW - waited, reason="edge hot")


def ramp(start_c: float, c_per_s: float, n: int = 10, end_t: float = NOW - POLL, dt: float = POLL):
    """n readings every dt seconds ending at end_t, rising at c_per_s."""
    return [(end_t - (n - 1 - i) * dt, start_c + c_per_s * i * dt) for i in range(n)]


# -- pausing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("edge, tctl, action", [
    (89.99, None, "none"),  # just under
    (90.0, None, "pause"),  # exactly at pause_at_c pauses
    (104.0, None, "pause"),
    (60.0, 94.99, "none"),
    (60.0, 95.0, "pause"),  # exactly at tctl_pause_at_c pauses
    (None, 95.0, "pause"),  # a known Tctl alone is enough
    (90.0, 95.0, "pause"),
])
def test_pause_exactly_at_and_around_the_thresholds(edge, tctl, action):
    assert decide_thermal(obs(edge, tctl), RUNNING, NO_TREND).action == action


def test_pause_reasons_name_the_sensor_and_the_threshold():
    edge = decide_thermal(obs(91.0), RUNNING, TH)
    assert "edge 91.0" in edge.reason and "pause_at_c 90" in edge.reason
    tctl = decide_thermal(obs(70.0, 96.0), RUNNING, TH)
    assert "Tctl 96.0" in tctl.reason and "tctl_pause_at_c 95" in tctl.reason


def test_never_pauses_on_unknown_readings_alone():
    """A dead sensor (None, None) must not stall the night, even with a hot history."""
    d = decide_thermal(obs(None, None, history=ramp(80, 1.0)), RUNNING, TH)
    assert d.action == "none" and "unknown" in d.reason


def test_running_within_limits_reports_both_temperatures():
    d = decide_thermal(obs(70.0, 80.0), RUNNING, TH)
    assert d == ThermalDecision("none", d.reason) and "70.0" in d.reason and "80.0" in d.reason


# -- trend -----------------------------------------------------------------------------------

def test_trend_pauses_when_the_next_poll_would_be_past_the_threshold():
    """1 C/s with 2 s polls: at 88.5 C the crossing is 1.5 s away, before the next poll."""
    hist = ramp(68.5, 1.0, n=10)  # 68.5 .. 86.5 C at NOW-2
    d = decide_thermal(obs(88.5, history=hist), RUNNING, TH)
    assert d.action == "pause" and "rising" in d.reason
    assert d.eta_cross_s == pytest.approx(1.5, abs=0.05)


def test_trend_does_not_pause_when_the_crossing_is_after_the_next_poll():
    hist = ramp(68.0, 1.0, n=10)  # 68 .. 86 C at NOW-2; now 87: 3 C to go at ~1 C/s = 3 s
    d = decide_thermal(obs(87.0, history=hist), RUNNING, TH)
    assert d.action == "none" and d.eta_cross_s is None


def test_trend_off_ignores_a_steep_rise():
    hist = ramp(70.5, 1.0, n=10)
    assert decide_thermal(obs(88.5, history=hist), RUNNING, NO_TREND).action == "none"


def test_trend_ignores_a_single_noisy_spike():
    """A flat 80 C with one 87 C glitch: least squares would see a trend, the median does not."""
    flat = [(NOW - 20 + 2 * i, 80.0) for i in range(9)] + [(NOW - 2, 87.0)]
    d = decide_thermal(obs(88.0, history=flat), RUNNING, TH)
    assert d.action == "none"


def test_trend_ignores_a_falling_or_flat_temperature():
    falling = ramp(89.5, -0.5, n=10)
    assert decide_thermal(obs(89.9, history=falling), RUNNING, TH).action == "none"
    flat = ramp(89.9, 0.0, n=10)
    assert decide_thermal(obs(89.9, history=flat), RUNNING, TH).action == "none"


def test_trend_needs_enough_recent_points():
    two = [(NOW - 2, 86.0)]  # with the current reading: only two points
    assert decide_thermal(obs(89.0, history=two), RUNNING, TH).action == "none"
    stale = ramp(70.0, 1.0, n=10, end_t=NOW - 600)  # a steep rise, but 10 min ago
    assert decide_thermal(obs(89.5, history=stale), RUNNING, TH).action == "none"


def test_trend_scales_with_a_slow_poll_interval():
    """0.2 C/s, 10 s polls: 1.5 C short of the threshold crosses before the next poll."""
    hist = [(NOW - 10 * (9 - i) - 10, 70.5 + 0.2 * 10 * i) for i in range(9)]
    d = decide_thermal(obs(88.5, history=hist, poll=10.0), RUNNING, TH)
    assert d.action == "pause" and d.eta_cross_s == pytest.approx(7.5, abs=0.1)
    assert decide_thermal(obs(88.5, history=hist, poll=2.0), RUNNING, TH).action == "none"


def test_trend_history_that_already_holds_the_current_reading_is_not_doubled():
    hist = ramp(70.5, 1.0, n=10, end_t=NOW)  # ends with (NOW, 88.5): the current reading
    d = decide_thermal(obs(hist[-1][1], history=hist), RUNNING, TH)
    assert d.action == "pause" and d.eta_cross_s == pytest.approx(90 - hist[-1][1], abs=0.05)


def test_slope_is_the_median_of_pairwise_slopes():
    assert slope_c_per_s([(0, 50.0), (1, 51.0), (2, 52.0)]) == pytest.approx(1.0)
    assert slope_c_per_s([(0, 50.0), (1, 51.0)]) is None
    assert slope_c_per_s([(0, 50.0), (0, 51.0), (0, 52.0)]) is None  # no time spread
    assert slope_c_per_s([(0, 50.0), (1, 50.0), (2, 50.0), (3, 50.0), (4, 70.0)]) == 0.0


# -- resuming --------------------------------------------------------------------------------

@pytest.mark.parametrize("waited, edge, tctl, action", [
    (0.0, 40.0, None, "hold"),        # cold at once, but min cooldown not reached
    (59.99, 40.0, None, "hold"),
    (60.0, 75.0, None, "resume"),     # exactly min cooldown and exactly resume_at_c
    (60.0, 75.01, None, "hold"),      # a hair above resume_at_c: hysteresis holds
    (300.0, 89.0, None, "hold"),      # inside the band: still cooling
    (300.0, 70.0, 80.0, "resume"),    # Tctl exactly at its limit minus the 15 C gap
    (300.0, 70.0, 80.01, "hold"),     # Tctl above it holds
    (300.0, 70.0, None, "resume"),    # unknown Tctl does not block a known cool edge
    (899.99, 89.0, None, "hold"),
    (900.0, 89.0, None, "resume"),    # max cooldown bounds one wait
    (900.0, 99.0, 99.0, "resume"),    # ... whatever the temperature
])
def test_resume_rules(waited, edge, tctl, action):
    assert decide_thermal(obs(edge, tctl), paused(waited), TH).action == action


def test_max_cooldown_resume_is_marked_forced_and_says_so():
    d = decide_thermal(obs(88.0, 90.0), paused(900.0), TH)
    assert d.action == "resume" and d.forced
    assert d.reason.startswith("max cooldown reached") and "88.0" in d.reason
    normal = decide_thermal(obs(70.0), paused(100.0), TH)
    assert normal.action == "resume" and not normal.forced


def test_unknown_edge_holds_until_max_cooldown():
    """Reads fail during a reset: we can't see the heat has gone, so wait (bounded)."""
    hot_history = [(NOW - 100, 91.0)]
    for waited in (60.0, 300.0, 899.0):
        d = decide_thermal(obs(None, None, history=hot_history), paused(waited), TH)
        assert d.action == "hold" and "unknown" in d.reason
    # a cool Tctl does not override an edge sensor that exists but can't be read now
    assert decide_thermal(obs(None, 50.0, history=hot_history), paused(300.0), TH).action == "hold"
    assert decide_thermal(obs(None, None, history=hot_history), paused(900.0), TH).action == "resume"


def test_machine_without_an_edge_sensor_resumes_on_tctl():
    """No edge reading ever (empty history): Tctl, which paused the job, also resumes it."""
    assert decide_thermal(obs(None, 80.0), paused(300.0), TH).action == "resume"
    assert decide_thermal(obs(None, 81.0), paused(300.0), TH).action == "hold"


def test_paused_state_without_a_start_time_is_rejected():
    with pytest.raises(ValueError, match="paused_at"):
        ThermalState(paused=True, paused_at=None)


def test_a_full_episode_heats_pauses_holds_and_resumes_once():
    """Replay: rising, paused at 90, cooling through the band, resumed at 75 after >= 60 s."""
    state, actions = RUNNING, []
    temps = [80, 84, 88, 90, 89, 85, 80, 76, 75, 74, 78, 82]
    for i, c in enumerate(temps):
        now = 1000.0 + 20 * i
        d = decide_thermal(ThermalObs(now, float(c), None, [], 20.0), state, TH)
        actions.append(d.action)
        if d.action == "pause":
            state = ThermalState(True, now, d.reason)
        elif d.action == "resume":
            state = RUNNING
    assert actions == ["none", "none", "none", "pause", "hold", "hold", "hold", "hold", "resume",
                       "none", "none", "none"]


# -- properties ------------------------------------------------------------------------------

temps = st.floats(-20, 130, allow_nan=False)
maybe = st.one_of(st.none(), temps)


@given(st.floats(0, 59.999), maybe, maybe)
def test_property_never_resumes_before_min_cooldown(waited, edge, tctl):
    assert decide_thermal(obs(edge, tctl), paused(waited), TH).action == "hold"


@given(st.floats(75.0001, 89.999), st.floats(0, 899.99), st.one_of(st.none(), st.floats(0, 79.9)))
def test_property_no_flapping_inside_the_hysteresis_band(edge, waited, tctl):
    """Between resume_at_c and pause_at_c the current state is kept, running or paused."""
    assert decide_thermal(obs(edge, tctl), RUNNING, NO_TREND).action == "none"
    assert decide_thermal(obs(edge, tctl), paused(waited), TH).action == "hold"


@given(st.floats(900, 1e6), maybe, maybe)
def test_property_max_cooldown_always_ends_the_wait(waited, edge, tctl):
    d = decide_thermal(obs(edge, tctl), paused(waited), TH)
    assert d.action == "resume" and d.forced


@given(maybe, maybe, st.lists(st.tuples(st.floats(NOW - 60, NOW), temps), max_size=15))
def test_property_running_decisions_are_pause_or_none_and_hot_always_pauses(edge, tctl, hist):
    d = decide_thermal(obs(edge, tctl, history=sorted(hist)), RUNNING, TH)
    assert d.action in ("pause", "none")
    if (edge is not None and edge >= 90) or (tctl is not None and tctl >= 95):
        assert d.action == "pause"
    if edge is None and (tctl is None or tctl < 95):
        assert d.action == "none"  # nothing known is hot: never pause on unknowns
