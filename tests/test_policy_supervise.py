"""The supervisor's rules with plain values (daemon/policy/supervise.py), boundaries included."""

from __future__ import annotations

import signal

import pytest

from daemon.job.classify import ExitInfo
from daemon.policy import supervise as rules
from daemon.state import config as config_mod

JOB = {"heartbeat_timeout_s": 60.0, "command": ["train"], "resume_command": ["train", "--resume"]}


def live(**kw) -> rules.Liveness:
    base = dict(started_at=0.0, last_record_t=None, last_output_t=None, last_cpu_growth_t=None,
                held=False, suspect_since=None)
    return rules.Liveness(**(base | kw))


@pytest.mark.parametrize("sign", ["last_record_t", "last_output_t", "last_cpu_growth_t"])
def test_any_sign_of_life_resets_the_hang_clock(sign):
    assert rules.judge_liveness(live(**{sign: 100.0}), 160.0, JOB).action == "alive"  # exactly at the timeout
    assert rules.judge_liveness(live(**{sign: 100.0}), 160.1, JOB).action == "suspect"


def test_a_held_job_is_never_hung_however_long():
    assert rules.judge_liveness(live(held=True), 1e6, JOB).action == "ok"


def test_suspect_then_terminate_after_the_grace():
    assert rules.judge_liveness(live(suspect_since=100.0), 129.9, JOB).action == "ok"  # grace = min(30, 60/2)
    assert rules.judge_liveness(live(suspect_since=100.0), 130.0, JOB).action == "terminate"


def test_resume_command_only_with_a_checkpoint():
    assert rules.plan_start(JOB, trainer_checkpoint=None, script_checkpoint=None, forced_resume=None).command == ["train"]
    assert rules.plan_start(JOB, trainer_checkpoint=None, script_checkpoint="out/ckpt.pt",
                            forced_resume=None).command == ["train", "--resume"]
    p = rules.plan_start({**JOB, "resume_command": None}, trainer_checkpoint="/c/step_1",
                         script_checkpoint=None, forced_resume=None)
    assert p.command == ["train"] and p.resume == "/c/step_1"
    assert rules.plan_start(JOB, trainer_checkpoint="/c/step_1", script_checkpoint=None,
                            forced_resume="/c/step_0").resume == "/c/step_0"


def cfg(**job) -> dict:
    c = config_mod.defaults()
    c["job"].update(job)
    return c


def test_restarts_are_bounded_in_the_window_for_every_cause():
    sig = ExitInfo("signal", "killed by SIGKILL", signal_name="SIGKILL")
    c = cfg(restart_limit=3, restart_window_s=100.0, restart_backoff_s=0.0)
    assert rules.decide_exit(sig, code_errors=0, last_error_sig=None, recent_restarts=[10, 20],
                             now=50, cfg=c).action == "restart"
    d = rules.decide_exit(sig, code_errors=0, last_error_sig=None, recent_restarts=[10, 20, 30],
                          now=50, cfg=c)
    assert d.action == "fail" and "job.restart_limit = 3" in d.reason
    # old restarts fall out of the window
    assert rules.decide_exit(sig, code_errors=0, last_error_sig=None, recent_restarts=[10, 20, 30],
                             now=130.1, cfg=c).action == "restart"


def test_a_zero_backoff_still_waits_the_minimum():
    sig = ExitInfo("signal", "killed", signal_name="SIGKILL")
    d = rules.decide_exit(sig, code_errors=0, last_error_sig=None, recent_restarts=[], now=0,
                          cfg=cfg(restart_backoff_s=0.0))
    assert d.delay_s == rules.MIN_BACKOFF_S


def test_checkpoint_age_warns_past_half_an_hour_or_three_intervals_and_at_most_hourly():
    assert rules.checkpoint_age_warning(1800.0, 0.0, None, None, None) is None
    assert rules.checkpoint_age_warning(1800.1, 0.0, None, None, None) is not None
    # 1 step/s, 1000-step interval: three intervals (3000 s) is the limit
    assert rules.checkpoint_age_warning(2999.0, 0.0, 1.0, 1000, None) is None
    assert rules.checkpoint_age_warning(3001.0, 0.0, 1.0, 1000, None) is not None
    assert rules.checkpoint_age_warning(5000.0, 0.0, None, None, 2000.0) is None  # warned < 1 h ago


def test_offload_backoff_doubles_to_half_an_hour_and_never_retries_the_hopeless():
    assert [rules.offload_retry_s(n, True) for n in (1, 2, 3)] == [30.0, 60.0, 120.0]
    assert rules.offload_retry_s(20, True) == 1800.0
    assert rules.offload_retry_s(1, False) is None


def test_exit_status_tells_the_truth():
    assert rules.exit_code(signal.SIGTERM, "running") == 143
    assert rules.exit_code(None, "failed") == 1 and rules.exit_code(None, "succeeded") == 0


def test_holds_show_thermal_first():
    assert rules.shown_hold(frozenset({"user", "thermal"})) == "thermal"
    assert rules.shown_hold(frozenset({"schedule", "user"})) == "user"
    assert rules.shown_hold(frozenset()) is None


# --------------------------------------------------------------------------- issue 30: rules out of the Supervisor
def test_a_reset_explains_a_death_within_ten_seconds_either_side():
    from daemon.policy.supervise import RESET_NEAR_S, reset_explains_death
    assert RESET_NEAR_S == 10.0
    assert reset_explains_death(1000.0, [990.0])  # exactly at the bound, before
    assert reset_explains_death(1000.0, [1010.0])  # and after (the kernel log lags)
    assert not reset_explains_death(1000.0, [989.9])
    assert not reset_explains_death(1000.0, [1010.1])
    assert not reset_explains_death(1000.0, [])


def test_a_reset_before_the_attempt_started_explains_nothing_but_a_pending_one_does():
    from daemon.policy.supervise import reset_explains_death
    assert not reset_explains_death(1000.0, [995.0], started_at=996.0)  # killed the previous attempt
    assert reset_explains_death(1000.0, [996.0], started_at=996.0)
    assert reset_explains_death(1000.0, [], started_at=990.0, pending_t=1004.0)
    assert not reset_explains_death(1000.0, [], started_at=990.0, pending_t=985.0)


def test_only_a_checkpoint_read_after_the_stop_was_asked_is_the_stops_own():
    from daemon.policy.supervise import stop_outcome
    fresh = stop_outcome(True, 120, checkpoint_seen_at=500.1, stop_asked_at=500.0)
    assert fresh.fresh and fresh.message == "stopped after a checkpoint at step 120"
    same = stop_outcome(True, 100, checkpoint_seen_at=500.0, stop_asked_at=500.0)  # read before, same tick
    assert not same.fresh and "no new checkpoint was taken (the newest is at step 100" in same.message
    replayed = stop_outcome(True, 100, checkpoint_seen_at=None, stop_asked_at=500.0)  # from before a restart
    assert not replayed.fresh
    none = stop_outcome(False, None, None, 500.0)
    assert not none.fresh and "no checkpoint exists yet" in none.message


def test_the_clock_cap_goes_on_halfway_between_resume_and_pause():
    from daemon.policy.thermal import clock_cap_due
    th = {"pause_at_c": 90.0, "resume_at_c": 70.0}
    assert clock_cap_due(80.0, th) and clock_cap_due(95.0, th)
    assert not clock_cap_due(79.9, th)
    assert not clock_cap_due(None, th)  # an unknown edge never caps


def test_a_record_ends_a_hang_suspicion_but_a_running_jobs_heartbeat_does_not():
    assert rules.spoke("progress", held=False) and rules.spoke("checkpoint", held=False)
    assert rules.spoke(None, held=False)  # a record of no known kind is still the job speaking
    assert not rules.spoke("heartbeat", held=False)  # its heartbeat thread beats on while the GPU hangs
    assert rules.spoke("heartbeat", held=True)  # held on purpose: its heartbeat is all it says


def test_a_checkpoint_read_before_a_restart_is_dated_by_its_record_once():
    assert rules.checkpoint_read_at(50.0, 1_000.0, 2_000.0, 300.0) == 50.0  # read by this daemon
    assert rules.checkpoint_read_at(None, 1_900.0, 2_000.0, 300.0) == 200.0  # 100 s ago, monotonic
    assert rules.checkpoint_read_at(None, None, 2_000.0, 300.0) is None
    assert rules.checkpoint_read_at(None, 0.0, 2_000.0, 300.0) is None  # no time recorded: unknown


def test_sigterm_stops_gracefully_a_second_sigint_forces_a_second_sigterm_changes_nothing():
    first = rules.on_signal("SIGTERM", False, stopping=False, job_running=True)
    assert first.action == "stop" and first.message == "received SIGTERM: checkpointing and stopping the job"
    idle = rules.on_signal("SIGINT", True, stopping=False, job_running=False)
    assert idle.action == "stop" and idle.message.endswith("no job is running here; stopping the daemon")
    assert rules.on_signal("SIGINT", True, stopping=True, job_running=True).action == "force"
    again = rules.on_signal("SIGTERM", False, stopping=True, job_running=True)
    assert again.action == "again" and again.message == "SIGTERM again: already stopping gracefully"
