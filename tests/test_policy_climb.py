"""policy/climb.py on recorded and reconstructed loss curves (plain values): the climb back is
caught from the first reports, and whole normal runs raise no alarm."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from daemon.policy.climb import ClimbState, observe_climb

CURVES = Path(__file__).parent / "fixtures" / "curves"


def alarms(series):
    st, found = ClimbState(), []
    for step, loss in series:
        st, c = observe_climb(st, step, loss)
        if c is not None:
            found.append(c)
    return found


def nanogpt_shakespeare_char(seed: int = 0):
    """Train loss as nanoGPT's shakespeare-char config logs it (every 10 iters, 5000 iters):
    4.2 at iter 0, the fast drop to ~2.5, then slowly to ~0.8 as it overfits the train set;
    batch noise of a few percent."""
    rng = random.Random(seed)
    out = []
    for it in range(0, 5001, 10):
        mean = 0.8 + 1.6 * math.exp(-it / 700) + 1.9 * math.exp(-it / 60)
        out.append((it, mean * (1 + rng.gauss(0, 0.03))))
    return out


def seeds_climb():
    """The seeds' second story: descent to 0.31 at step 1050, a plateau, then the climb back
    ("by the time we noticed, the model had unlearned everything")."""
    rng = random.Random(1)
    out = []
    for step in range(0, 3001, 10):
        if step <= 1050:
            mean = 0.31 + 2.7 * math.exp(-step / 200) - 2.7 * math.exp(-1050 / 200) * step / 1050
        elif step <= 1500:
            mean = 0.31
        else:
            mean = 0.31 * (1 + (step - 1500) / 300)  # 2x best at step 1800, 6x by 3000
        out.append((step, mean * (1 + rng.gauss(0, 0.02))))
    return out


def test_no_alarm_over_a_whole_normal_run_of_the_reference_job():
    curve = [tuple(p) for p in json.loads((CURVES / "reference_normal.json").read_text())]
    assert curve[-1][0] >= 700  # the whole run (800 steps, the recorded reports)
    assert alarms(curve) == []


def test_no_alarm_over_a_nanogpt_shakespeare_char_curve():
    for seed in range(5):
        assert alarms(nanogpt_shakespeare_char(seed)) == []


def test_the_lr_1_explosion_is_caught_from_the_first_reports():
    """Was: 3.47 -> 213 with no alert (the watchdog's 20 reports of warm-up)."""
    curve = [(0, 3.47), (10, 3.41), (20, 9.8), (30, 41.0), (40, 213.0), (50, 190.0), (60, 205.0)]
    [c] = alarms(curve)
    assert c.step <= 60 and c.best is not None and c.best < 3.5 and c.start is not None and c.start <= 20


def test_the_recorded_lr_1_run_of_the_reference_job_is_caught():
    curve = [tuple(p) for p in json.loads((CURVES / "reference_lr1.json").read_text())]
    [c] = alarms(curve)
    assert c.step <= 60, c  # its explosion is at the very start


def test_the_seeds_slow_climb_back_is_caught_once_above_twice_the_best():
    [c] = alarms(seeds_climb())
    assert abs(c.best - 0.31) < 0.03 and 950 <= c.best_step <= 1500
    assert 1800 <= c.step <= 2100  # above 0.62 for 3 reports (the smoothing lags a little)
    assert 1500 <= c.start <= 1800  # where it began, not where it became obvious


def test_the_boundaries():
    # exactly twice the best is not above it; a single noisy report is smoothed away
    st, c = ClimbState(), None
    for s, v in [(1, 1.0), (2, 2.0), (3, 2.0), (4, 1.0)]:
        st, c = observe_climb(st, s, v, span=1, patience=1)  # span 1: no smoothing
        assert c is None
    st, c = observe_climb(st, 5, 2.0001, span=1, patience=1)
    assert c is not None and c.step == 5
    st, c = observe_climb(st, 6, 5.0, span=1, patience=1)
    assert c is None  # said once per run
    st, c = observe_climb(ClimbState(), 1, math.nan)
    assert c is not None and "not finite" in c.reason
    # a loss that can be negative: by difference
    st = ClimbState()
    for s, v in [(1, -1.0), (2, -0.5), (3, 0.05)]:
        st, c = observe_climb(st, s, v, span=1, patience=1)
    assert c is not None and c.step == 3
