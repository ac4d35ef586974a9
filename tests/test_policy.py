"""The pure policies with plain values: thermal, recovery, interval, diagnosis, failover, restart,
divergence."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.gpu.diagnosis import diagnose
from daemon.job.classify import ExitInfo, classify_exit
from daemon.night.divergence import DivergenceDetector, format_skip, parse_skip, plan_rollback
from daemon.policy.failover import FailoverObs, decide_failover
from daemon.policy.interval import auto_interval_steps, young_daly_interval_s
from daemon.policy.recovery import RecoveryState, decide_recovery
from daemon.policy.restart import decide_restart
from daemon.policy.thermal import ThermalObs, ThermalState, decide_thermal
from daemon.state import config as config_mod

CFG = config_mod.defaults()
CFG["job"]["command"] = ["x"]
TH = {"pause_at_c": 90.0, "resume_at_c": 75.0, "tctl_pause_at_c": 95.0, "min_cooldown_s": 60.0,
      "max_cooldown_s": 900.0, "trend": True}
RUNNING = ThermalState(False, None)


def obs(edge, tctl=None, now=1000.0, history=()):
    return ThermalObs(now, edge, tctl, list(history), 2.0)


@pytest.mark.parametrize("edge, tctl, action", [
    (89.9, 80, "none"), (90.0, 80, "pause"), (95.5, None, "pause"), (70, 95.0, "pause"),
    (70, 94.9, "none"), (None, None, "none"), (None, 96.0, "pause"),
])
def test_thermal_pause_thresholds(edge, tctl, action):
    assert decide_thermal(obs(edge, tctl), RUNNING, TH).action == action


def test_trend_pauses_before_the_crossing_and_not_when_far():
    rising = [(990 + i, 80 + i) for i in range(9)]  # 1 C/s, now at 88 C
    d = decide_thermal(obs(88.0, history=rising), RUNNING, TH)
    assert d.action == "pause" and d.eta_cross_s == pytest.approx(2.0, abs=0.3)
    slow = [(990 + i, 80 + 0.1 * i) for i in range(9)]
    assert decide_thermal(obs(80.8, history=slow), RUNNING, TH).action == "none"
    assert decide_thermal(obs(88.0, history=rising), RUNNING, TH | {"trend": False}).action == "none"


@pytest.mark.parametrize("waited, edge, tctl, action", [
    (30, 60, None, "hold"),    # cool but min cooldown not reached
    (61, 76, None, "hold"),    # cooldown reached but not cool enough (hysteresis)
    (61, 75, None, "resume"),  # exactly resume_at_c
    (61, 70, 85, "hold"),      # Tctl above its limit minus the hysteresis gap
    (61, None, None, "hold"),  # unknown: keep waiting
    (900, None, None, "resume"),  # max cooldown bounds one wait
    (900, 95, None, "resume"),
])
def test_thermal_resume_rules(waited, edge, tctl, action):
    paused = ThermalState(True, 1000.0 - waited)
    assert decide_thermal(obs(edge, tctl), paused, TH).action == action


@given(st.floats(75.01, 89.99), st.floats(0, 899))
def test_no_flapping_inside_the_hysteresis_band(edge, waited):
    assert decide_thermal(obs(edge), RUNNING, TH | {"trend": False}).action == "none"
    assert decide_thermal(obs(edge), ThermalState(True, 1000 - waited), TH).action == "hold"


@given(st.floats(0, 59.99), st.one_of(st.none(), st.floats(0, 120)))
def test_never_resumes_before_min_cooldown(waited, edge):
    assert decide_thermal(obs(edge), ThermalState(True, 1000 - waited), TH).action != "resume"


RS = {"cooldown_s": 60.0, "probe": True, "probe_retries": 3, "probe_timeout_s": 10.0}


def test_recovery_waits_probes_retries_and_gives_up():
    s = RecoveryState(reset_at=0.0)
    assert decide_recovery(s, 30, RS, None).action == "wait"
    assert decide_recovery(s, 60, RS, None).action == "probe"
    assert decide_recovery(s, 61, RS, True).action == "restart"
    s.probes_failed, s.last_probe_at = 1, 61
    assert decide_recovery(s, 62, RS, False).action == "wait"
    assert decide_recovery(s, 200, RS, False).action == "probe"
    s.probes_failed = 3
    assert decide_recovery(s, 1000, RS, False).action == "give_up"
    assert decide_recovery(RecoveryState(0.0), 60, RS | {"probe": False}, None).action == "restart"


def test_young_daly_example_and_bounds():
    assert young_daly_interval_s(10, 7200) / 60 == pytest.approx(6.0, abs=0.3)
    assert young_daly_interval_s(100, 40) == 40  # delta >= 2M: checkpoint every M
    steps, why = auto_interval_steps(10, [], 0, 2.0, prior_mtbf_s=7200)
    assert 600 <= steps <= 800 and "Young/Daly" in why
    frequent, _ = auto_interval_steps(10, [100, 400, 700, 1000], 1000, 2.0, since=0)
    assert frequent < steps  # more resets: checkpoint more often


def test_diagnosis_hot_normal_mixed_and_none():
    hot = [{"temps": {"edge_c": 91}}, {"temps": {"edge_c": 88}}]
    cool = [{"temps": {"edge_c": 55}}, {"temps": {"edge_c": 60, "tctl_c": 70}}, {"temps": {"edge_c": 91}}]
    assert diagnose(hot, TH).heat_correlated is True
    d = diagnose(cool, TH)
    assert d.heat_correlated is False and any("cwsr_enable=0" in m for m in d.mitigations)
    assert "won't help" in d.summary
    assert diagnose([], TH).heat_correlated is None
    assert diagnose([{"temps": {}}], TH).heat_correlated is None


def fobs(**kw):
    base = dict(now=0.0, resets_in_window=0, gpu_unusable=False, local_eta_s=None, deadline=None,
                forced=False, backend="local", budget_usd=5.0, auth_ok=None, state="running")
    return FailoverObs(**(base | kw))


def test_failover_reasons_and_guards():
    assert decide_failover(fobs(resets_in_window=3), CFG).offload
    assert not decide_failover(fobs(resets_in_window=2), CFG).offload
    assert decide_failover(fobs(gpu_unusable=True), CFG).offload
    assert decide_failover(fobs(local_eta_s=3600, deadline=1800), CFG).offload
    assert not decide_failover(fobs(local_eta_s=3600, deadline=7200), CFG).offload
    d = decide_failover(fobs(forced=True, backend="none"), CFG)
    assert not d.offload and "backend is none" in d.reason
    assert "budget" in decide_failover(fobs(forced=True, budget_usd=0), CFG).reason
    assert not decide_failover(fobs(forced=True, auth_ok=False), CFG).offload


def test_restart_policy():
    gpu = ExitInfo("gpu_fault", "x")
    assert decide_restart(gpu, code_errors=9, last_error_sig=None, cfg=CFG).action == "recover"
    err = ExitInfo("code_error", "e", signature="ValueError@step=7")
    assert decide_restart(err, code_errors=0, last_error_sig=None, cfg=CFG).action == "restart"
    assert decide_restart(err, code_errors=1, last_error_sig="ValueError@step=7", cfg=CFG).action == "fail"
    assert decide_restart(err, code_errors=3, last_error_sig="other", cfg=CFG).action == "fail"
    d = decide_restart(err, code_errors=2, last_error_sig="other", cfg=CFG)
    assert d.delay_s == CFG["job"]["restart_backoff_s"] * 4


def test_classify_exits():
    hip = "HW Exception by GPU node-1 (Agent handle: 0x1) reason :GPU Hang"
    assert classify_exit(-6, hip, gpu_signature="hw", reset_near_exit=False, step=5).kind == "gpu_fault"
    assert classify_exit(-9, "", gpu_signature=None, reset_near_exit=False, step=5).kind == "signal"
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1\nKeyError: \'a\'\n'
    e = classify_exit(1, tb, gpu_signature=None, reset_near_exit=False, step=5)
    assert e.kind == "code_error" and e.signature == "KeyError: 'a'@step=5"
    assert classify_exit(0, "", gpu_signature=None, reset_near_exit=False, step=5).kind == "success"
    assert classify_exit(-10, "", gpu_signature=None, reset_near_exit=False, step=5, done=True).kind == "success"


def test_divergence_catches_spike_and_nan_not_noise():
    d = DivergenceDetector(window=10, rtol=2.0)
    healthy = [3.0 - 0.01 * i + 0.2 * math.sin(i) for i in range(60)]
    assert all(d.observe(i, v) is None for i, v in enumerate(healthy))
    spike = d.observe(60, 40.0)
    assert spike is not None and spike.step == 60
    assert d.observe(61, float("nan")).reason == "non-finite loss"
    p = DivergenceDetector(window=10, rtol=2.0, patience=3)
    for i in range(20):
        p.observe(i, 2.0)
    assert p.observe(20, 50) is None and p.observe(21, 50) is None and p.observe(22, 50) is not None


def test_rollback_plan_and_skip_format():
    plan = plan_rollback(500, [100, 200, 300, 400, 450], rollback_steps=100, skip_batches=50)
    assert plan.checkpoint_step == 400 and plan.skip == ((490, 550),)
    assert plan_rollback(50, [], 100, 10).checkpoint_step is None
    assert parse_skip(format_skip([(1, 2), (5, 9)])) == [(1, 2), (5, 9)]


def test_a_rollback_never_targets_a_checkpoint_written_after_the_last_normal_loss():
    """Issue 25: records are rate-limited; the loss was normal at step 110, the spike reported at
    130; the checkpoint at step 120 was written in between and may hold the diverged weights.
    With rollback_steps 5 the plan chose step 120 (the newest <= 125)."""
    plan = plan_rollback(130, [100, 120], rollback_steps=5, skip_batches=10, last_ok_step=110)
    assert plan.checkpoint_step == 100
    assert plan_rollback(130, [110, 120], 5, 10, last_ok_step=110).checkpoint_step == 110
    assert plan_rollback(130, [120], 5, 10, last_ok_step=110).checkpoint_step is None


def test_a_rollback_skips_from_the_last_normal_report_when_the_worst_loss_came_later():
    """Records are rate-limited and carry the worst loss since the previous one: poisoned batches
    99-103 reported as a spike at step 103 (the worst) after a normal report at step 96. The
    skip started at 100 (103 - rollback_steps // 10) and batch 99 spiked again after the rollback."""
    d = DivergenceDetector(window=4, rtol=2.0)
    for step in (84, 88, 92, 96):
        assert d.observe(step, 2.0) is None
    spike = d.observe(103, 40.0)
    assert spike is not None and spike.last_ok_step == 96
    plan = plan_rollback(spike.step, [20, 40, 60, 80, 100], rollback_steps=30, skip_batches=20,
                         last_ok_step=spike.last_ok_step)
    assert plan.checkpoint_step == 60
    [(lo, hi)] = plan.skip
    assert lo <= 97 and all(lo <= s <= hi for s in range(99, 104))
