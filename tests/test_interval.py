"""Checkpoint interval "auto": Young/Daly numbers, the MTBF estimate, the steps clamp."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.policy.interval import (
    auto_interval_steps,
    estimate_mtbf_s,
    young_daly_interval_s,
    young_interval_s,
)


def test_example_ten_second_checkpoint_two_hour_mtbf_is_about_six_minutes():
    young = young_interval_s(10, 7200)
    daly = young_daly_interval_s(10, 7200)
    assert young == pytest.approx(379.47, abs=0.01)  # sqrt(2 * 10 * 7200)
    assert daly == pytest.approx(372.9, abs=0.1)  # Daly: Young's + higher-order terms - C
    assert 5.5 <= daly / 60 <= 6.5


def test_daly_matches_the_formula_by_hand():
    c, m = 30.0, 3600.0
    r = c / (2 * m)
    assert young_daly_interval_s(c, m) == pytest.approx(
        math.sqrt(2 * c * m) * (1 + math.sqrt(r) / 3 + r / 9) - c)


def test_checkpoint_costlier_than_twice_the_mtbf_checkpoints_once_per_mtbf():
    assert young_daly_interval_s(100, 50) == 50  # exactly C = 2M
    assert young_daly_interval_s(500, 40) == 40


def test_daly_is_close_to_young_when_checkpoints_are_cheap():
    assert young_daly_interval_s(1, 86400) == pytest.approx(young_interval_s(1, 86400), rel=0.01)


def test_mtbf_is_the_prior_without_resets_and_learns_from_resets():
    assert estimate_mtbf_s([], 1e6, 7200) == 7200
    # one reset after 10 h of running: (36000 + 7200) / 2
    assert estimate_mtbf_s([36000.0], 36000.0, 7200, since=0.0) == pytest.approx(21600)
    # six resets in 3 h: close to the observed 30 min, the prior weighs one interval
    six = [1800.0 * i for i in range(1, 7)]
    assert estimate_mtbf_s(six, 10800, 7200, since=0.0) == pytest.approx((10800 + 7200) / 7)


def test_auto_steps_from_rate_and_the_explanation_fits_status():
    steps, why = auto_interval_steps(10, [], 0.0, 2.0, prior_mtbf_s=7200)
    assert steps == round(young_daly_interval_s(10, 7200) * 2.0)  # ~746 steps
    assert "Young/Daly" in why and "2.0 h" in why and f"{steps} steps" in why and "0 resets" in why


def test_more_resets_mean_more_frequent_checkpoints():
    calm, _ = auto_interval_steps(10, [], 3600, 2.0, prior_mtbf_s=7200, since=0)
    stormy, why = auto_interval_steps(10, [600, 1200, 1800, 2400, 3000], 3600, 2.0,
                                      prior_mtbf_s=7200, since=0)
    assert stormy < calm and "5 resets" in why


def test_steps_are_clamped_to_the_bounds():
    assert auto_interval_steps(0.001, [1, 2, 3, 4], 5, 0.1, since=0, min_steps=25)[0] == 25
    assert auto_interval_steps(600, [], 0, 1000.0, max_steps=5000)[0] == 5000
    assert auto_interval_steps(10, [], 0, 0.0, min_steps=7)[0] == 7  # no rate yet
    assert auto_interval_steps(10, [], 0, 2.0, prior_mtbf_s=math.inf, max_steps=9)[0] == 9


@given(st.floats(0.01, 1e4), st.floats(1, 1e7))
def test_property_interval_is_positive_and_at_most_the_mtbf_scale(c, m):
    iv = young_daly_interval_s(c, m)
    assert 0 < iv
    assert iv <= max(m, young_interval_s(c, m) * 1.5)


@given(st.floats(0.01, 1e3), st.floats(60, 1e6), st.floats(60, 1e6))
def test_property_a_longer_mtbf_never_shortens_the_interval(c, m1, m2):
    lo, hi = sorted((m1, m2))
    assert young_daly_interval_s(c, lo) <= young_daly_interval_s(c, hi) + 1e-6


def test_checkpoint_interval_fixed_at_once_auto_only_with_a_measured_cost_and_rate():
    from daemon.policy.interval import auto_interval_steps, checkpoint_interval
    assert checkpoint_interval(250, None, None, [], 0.0) == (250, "fixed (checkpoint.interval)")
    waiting = (None, "auto: waiting for a measured checkpoint cost and step rate")
    assert checkpoint_interval("auto", None, 2.0, [], 0.0) == waiting
    assert checkpoint_interval("auto", 10.0, None, [], 0.0) == waiting
    assert checkpoint_interval("auto", 10.0, 0.0, [], 0.0) == waiting  # no rate measured yet
    assert checkpoint_interval("auto", 10.0, 2.0, [50.0], 100.0, since=0.0) == \
        auto_interval_steps(10.0, [50.0], 100.0, 2.0, since=0.0)
