"""Issue 29 (1): the faults still ahead of a run, for its ETA (daemon/policy/faults.py): a
Poisson rate with a prior (this machine's past runs, else the checkpoint interval's default),
shrunk towards the prior while little is seen, times the measured cost of one fault.

The replayed thermal night (bench/results/eta.json) had one reset at 60% of a 4-minute run;
counted at its whole-run rate on the time left, the ETA at two thirds was 20% long."""

from __future__ import annotations

import pytest

from daemon.core.pace import history_prior
from daemon.policy import eta, faults
from daemon.policy.interval import DEFAULT_MTBF_S
from daemon.state.store import Store

H = 3600.0


def _run(total, faults_at=(), restart_s=60.0, lost=20, startup_s=30.0, dt=1.0, prior=None, every=10):
    """A job at 1 step/s from its first report (after a ``startup_s`` first start); at each
    step in ``faults_at`` a fault costs ``restart_s`` restarting and throws ``lost`` steps
    away. Feeds a ProgressMeter like the Supervisor does; returns (what it shows every
    ``every`` notes, end): [(t, step, ETA shown, NetRate)]."""
    m = eta.ProgressMeter() if prior is None else eta.ProgressMeter(prior=prior)
    t, step, pending, shown = 0.0, None, sorted(faults_at), []
    while t < startup_s:  # the first start: STARTING, loading, not reported yet
        m.note(t, None, True, restarting=True)
        t += dt
    step, i = 0, 0
    while step < total:
        if pending and step >= pending[0]:
            pending.pop(0)
            end = t + restart_s
            while t < end:
                m.note(t, step, True, restarting=True)  # recovering, the new process loading
                t += dt
            step -= lost
        step = min(total, step + int(dt))
        m.note(t, step, True)
        i += 1
        r = m.rate() if i % every == 0 or step == total else None
        if r is not None and r.observed_s >= eta.MIN_NET_S:
            shown.append((t, step, (total - step) / r.rate, r))
        t += dt
    return shown, t


def _at(shown, frac, end):
    return min(shown, key=lambda x: abs(x[0] - frac * end))


# ------------------------------------------------------------------ the rate (pure)
def test_with_no_fault_seen_and_no_history_the_rate_is_the_checkpoint_intervals_prior():
    p = faults.default_prior()
    assert p.source == "default" and p.events == pytest.approx(1.0)
    assert faults.rate(p, 0, 0.0) == pytest.approx(1 / DEFAULT_MTBF_S)
    # a fault-free stretch as long as the prior's weight halves it
    assert faults.rate(p, 0, DEFAULT_MTBF_S) == pytest.approx(0.5 / DEFAULT_MTBF_S)


def test_one_fault_in_the_first_minutes_is_not_twenty_an_hour():
    p = faults.default_prior()
    per_h = faults.rate(p, 1, 180.0) * H
    assert per_h < 0.6, per_h  # the run alone would say 20/h


def test_many_faults_overrule_the_prior():
    p = faults.default_prior()
    per_h = faults.rate(p, 20, 10 * H) * H  # 2 an hour for 10 hours
    assert per_h == pytest.approx(21 / 14) and per_h > 5 * p.per_s * H, per_h


def test_a_fault_early_in_a_long_night_fades_as_the_night_stays_quiet():
    p = faults.default_prior()
    after = faults.rate(p, 1, 600.0)
    later = faults.rate(p, 1, 6 * H)
    assert later < 0.5 * after and later * H < 0.25


def test_the_cost_of_a_fault_is_the_measured_one_once_seen_else_the_first_start_up():
    p = faults.default_prior()
    none = faults.outlook(p, faults.Seen(0, 600.0, 0.0, 0, startup_s=30.0), cycle_rate=2.0)
    assert none.cost_s == 30.0 and not none.measured
    two = faults.outlook(p, faults.Seen(2, 600.0, 100.0, 40, startup_s=30.0), cycle_rate=2.0)
    assert two.cost_s == pytest.approx((100.0 + 40 / 2.0) / 2) and two.measured
    assert two.overhead == pytest.approx(two.per_s * two.cost_s)


def test_a_flaky_history_raises_the_prior_and_a_quiet_one_lowers_it_and_weighs_at_most_a_night():
    flaky = faults.prior_from_history(20, 10 * H)
    quiet = faults.prior_from_history(0, 40 * H)
    d = faults.default_prior()
    assert flaky.source == quiet.source == "history"
    assert flaky.per_s * H == pytest.approx(21 / 14, rel=0.01)  # (1 + 20) / (4 h + 10 h)
    assert quiet.per_s < 0.15 * d.per_s
    assert flaky.weight_s == quiet.weight_s == faults.HISTORY_MAX_S
    assert faults.prior_from_history(3, 0.0) == d  # no time up: no history


def test_the_history_prior_is_read_from_the_stores_past_runs(tmp_path):
    """Real SQLite: two past runs that ran (10 h, 3 restarts; 6 h with 2 h in the cloud, 1
    restart), one that never ran and the current one are not counted."""
    store = Store(tmp_path / "nightshift.db")
    t0 = 1_700_000_000.0
    for created, end, restarts, cloud, ran in ((t0, t0 + 10 * H, 3, 0.0, 1), (t0 + 11 * H, t0 + 17 * H, 1, 2 * H, 1),
                                               (t0 + 18 * H, t0 + 30 * H, 9, 0.0, 0)):
        rid = store.create_run("job", {}, 100, created=created)
        store.update_run(rid, restarts=restarts, cloud_seconds=cloud, has_run=ran, ended=end)
    current = store.create_run("job", {}, 100, created=t0 + 31 * H)
    store.update_run(current, restarts=50, has_run=1, ended=t0 + 40 * H)
    p = history_prior(store.runs(), current)
    assert p == faults.prior_from_history(4, 14 * H)
    assert history_prior([], None) == faults.default_prior()
    store.close()


# ------------------------------------------------------------------ the meter and the ETA
def test_no_fault_yet_expects_the_priors_faults_at_the_cost_of_the_first_start():
    shown, end = _run(3600)
    t, step, e, r = _at(shown, 1 / 3, end)
    assert r.faults is not None and not r.faults.measured and r.faults.cost_s == pytest.approx(30.0)
    assert 0.0 < r.faults.overhead < 0.01  # 30 s every ~4-5 h
    assert e == pytest.approx(end - t, rel=0.02)


def test_one_fault_late_in_a_short_run_is_not_counted_at_its_whole_run_rate_on_the_rest():
    """The bench's miss: one reset (60 s + 20 steps) at 60% of a 20-minute run, none after.
    At its whole-run rate the ETA at two thirds was +10% from that alone."""
    shown, end = _run(1200, faults_at=(720,))
    t, step, e, r = _at(shown, 2 / 3, end)
    assert r.faults is not None and r.faults.measured and r.faults.cost_s == pytest.approx(80.0, rel=0.05)
    assert e == pytest.approx(end - t, rel=0.03), (t, step, e, end - t)


def test_one_fault_early_fades_from_the_eta_as_the_run_stays_quiet():
    shown, end = _run(8 * 3600, faults_at=(600,), dt=10.0)
    just_after = next(x[3].faults for x in shown if x[3].faults.measured)  # once it is seen
    t, step, e, r = _at(shown, 2 / 3, end)
    assert r.faults.overhead < 0.5 * just_after.overhead
    assert e == pytest.approx(end - t, rel=0.02)


def test_many_faults_make_the_eta_expect_more_of_them():
    """A fault every 1800 steps (30 min at 1 step/s, 2 min + 20 steps each), 10 h: the ETA at a
    third and at two thirds counts the ones still ahead (within 15%; the no-fault ETA is ~7%
    short)."""
    every = 1800
    total = 36000
    shown, end = _run(total, faults_at=tuple(range(every, total, every)), restart_s=120.0, dt=10.0)
    for frac in (1 / 3, 2 / 3):
        t, step, e, r = _at(shown, frac, end)
        assert r.faults.measured and r.faults.per_s > 2 * r.faults.prior.per_s, r.faults
        assert e == pytest.approx(end - t, rel=0.15), (frac, e, end - t)
        assert e > (total - step) * 1.03  # more than the steps alone


def test_a_flaky_machines_history_lengthens_a_fresh_runs_eta():
    plain, _ = _run(3600)
    flaky, _ = _run(3600, prior=faults.prior_from_history(20, 10 * H))
    a, b = plain[100][2], flaky[100][2]
    assert b > a * 1.005, (a, b)


def test_a_reset_its_cooling_and_the_new_process_loading_are_one_fault():
    m = eta.ProgressMeter()
    for t in range(0, 100):
        m.note(float(t), t, True)
    m.note(100.0, 100, True, restarting=True)  # recovering
    m.note(110.0, 100, True, cooling=True)  # the chip still hot: cooling first
    m.note(120.0, 90, True, restarting=True)  # the new process loads (rewound to 90)
    for t in range(130, 200):
        m.note(float(t), 90 + t - 130, True)
    assert m.faults == 1
    m.note(200.0, 160, True, restarting=True)  # a second fault after progress
    assert m.faults == 2


def test_a_restart_under_way_adds_what_is_left_of_it_at_a_restarts_usual_length():
    """`demo --governor` at load 10: 10 s into a restart the ETA was 33% short: the restart under
    way was counted only at the faults' rate. What is left of it is added: the first start-up
    took 30 s, so 10 s into the first fault's restart 20 s are left; after a 60 s restart, the
    next is taken to last 60 s."""
    m = eta.ProgressMeter()
    for t in range(0, 30):
        m.note(float(t), None, True, restarting=True)  # the first start-up: 30 s
    for t in range(30, 630):
        m.note(float(t), t - 30, True)  # 1 step/s
    for t in range(630, 640):
        m.note(float(t), 600, True, restarting=True)  # a reset: 10 s into its restart
    r = m.rate()
    assert r.pending_s == pytest.approx(20.0, abs=1.0)
    e = eta.estimate(400, 1.0, None, r)
    assert e.seconds == pytest.approx(400 / r.rate + r.pending_s)
    for t in range(640, 690):
        m.note(float(t), 590, True, restarting=True)  # it took 60 s, rewound to 590
    for t in range(690, 1290):
        m.note(float(t), 590 + t - 690, True)
    assert m.rate().pending_s == 0.0  # steps gained since: no fault under way
    for t in range(1290, 1300):
        m.note(float(t), 1190, True, restarting=True)  # the second: 10 s in
    assert m.rate().pending_s == pytest.approx(50.0, abs=1.5)
