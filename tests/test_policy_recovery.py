"""Recovery after a reset with plain values: cooldown, probe, retries with backoff, give up."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.policy.recovery import (
    MAX_BACKOFF_S,
    RecoveryState,
    backoff_s,
    decide_recovery,
)

RS = {"cooldown_s": 60.0, "probe": True, "probe_retries": 3, "probe_timeout_s": 10.0}


def test_waits_the_cooldown_and_says_how_long_is_left():
    a = decide_recovery(RecoveryState(reset_at=100.0), 130.0, RS, None)
    assert a.action == "wait" and a.wait_s == pytest.approx(30.0) and "30 s left" in a.reason


def test_probes_exactly_when_the_cooldown_ends():
    assert decide_recovery(RecoveryState(100.0), 159.99, RS, None).action == "wait"
    a = decide_recovery(RecoveryState(100.0), 160.0, RS, None)
    assert a.action == "probe" and "attempt 1/3" in a.reason


def test_restarts_when_the_probe_passes():
    s = RecoveryState(100.0, probes_failed=0, last_probe_at=160.0)
    a = decide_recovery(s, 165.0, RS, True)
    assert a.action == "restart" and "probe passed" in a.reason


def test_restarts_after_the_cooldown_when_probing_is_disabled():
    cfg = RS | {"probe": False}
    assert decide_recovery(RecoveryState(0.0), 59.0, cfg, None).action == "wait"
    a = decide_recovery(RecoveryState(0.0), 60.0, cfg, None)
    assert a.action == "restart" and "probing disabled" in a.reason


def test_a_passing_probe_late_in_the_retries_still_restarts():
    s = RecoveryState(0.0, probes_failed=2, last_probe_at=500.0)
    assert decide_recovery(s, 505.0, RS, True).action == "restart"


def test_failed_probes_back_off_doubling_from_the_cooldown():
    s = RecoveryState(0.0, probes_failed=1, last_probe_at=60.0)
    a = decide_recovery(s, 61.0, RS, False)
    assert a.action == "wait" and a.wait_s == pytest.approx(59.0) and "probe 1/3 failed" in a.reason
    assert decide_recovery(s, 120.0, RS, False).action == "probe"
    s2 = RecoveryState(0.0, probes_failed=2, last_probe_at=120.0)
    assert decide_recovery(s2, 239.0, RS, False).action == "wait"  # 2nd backoff: 120 s
    a = decide_recovery(s2, 240.0, RS, False)
    assert a.action == "probe" and "attempt 3/3" in a.reason


def test_gives_up_after_probe_retries_failures_as_gpu_unusable():
    s = RecoveryState(0.0, probes_failed=3, last_probe_at=240.0)
    a = decide_recovery(s, 241.0, RS, False)
    assert a.action == "give_up" and "GPU unusable after reset" in a.reason and "3 probes" in a.reason


def test_full_sequence_with_a_gpu_that_never_comes_back():
    """Replay the caller's loop: every probe fails; exactly probe_retries probes, then give up."""
    s, now, probes, result = RecoveryState(reset_at=0.0), 0.0, [], None
    for _ in range(200):
        a = decide_recovery(s, now, RS, result)
        if a.action == "give_up":
            break
        if a.action == "probe":
            probes.append(now)
            s.last_probe_at = now
            s.probes_failed += 1  # the probe ran and failed
            result = False
        now += 5.0
    assert a.action == "give_up"
    assert probes == [60.0, 120.0, 240.0]  # cooldown, then backoff 60 s, then 120 s


def test_zero_retries_still_probes_once():
    cfg = RS | {"probe_retries": 0}
    assert decide_recovery(RecoveryState(0.0), 60.0, cfg, None).action == "probe"
    assert decide_recovery(RecoveryState(0.0, 1, 60.0), 61.0, cfg, False).action == "give_up"


def test_zero_cooldown_probes_at_once_but_never_busy_loops():
    cfg = RS | {"cooldown_s": 0.0}
    assert decide_recovery(RecoveryState(50.0), 50.0, cfg, None).action == "probe"
    a = decide_recovery(RecoveryState(50.0, 1, 50.0), 50.0, cfg, False)
    assert a.action == "wait" and a.wait_s == pytest.approx(1.0)


def test_backoff_is_capped():
    assert backoff_s(60.0, 1) == 60.0 and backoff_s(60.0, 3) == 240.0
    assert backoff_s(60.0, 30) == MAX_BACKOFF_S
    assert backoff_s(0.0, 1) == 1.0


@given(st.floats(0, 3600), st.floats(0, 1e5), st.integers(0, 10), st.one_of(st.none(), st.booleans()))
def test_property_nothing_happens_before_the_cooldown_ends(cooldown, reset_at, failed, result):
    cfg = RS | {"cooldown_s": cooldown}
    now = reset_at + cooldown * 0.999
    if now < reset_at + cooldown:
        assert decide_recovery(RecoveryState(reset_at, failed, None), now, cfg, result).action == "wait"


@given(st.integers(0, 8), st.integers(0, 20), st.floats(0, 1e4))
def test_property_never_more_probes_than_allowed(retries, failed, later):
    cfg = RS | {"probe_retries": retries}
    a = decide_recovery(RecoveryState(0.0, failed, 60.0 if failed else None), 60.0 + later, cfg,
                        False if failed else None)
    if failed >= max(1, retries):
        assert a.action == "give_up"
    else:
        assert a.action in ("wait", "probe")
