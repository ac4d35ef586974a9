"""daemon/policy/remote.py at its boundaries (plain values in, decisions out)."""

from __future__ import annotations

from daemon.policy import remote as r


def test_next_backend_skips_refused_and_tried_ones_in_listed_order():
    assert r.next_backend(["modal", "ssh", "local"], refused=[], tried=[]) == "modal"
    # the bug: the fallback picked from every listed backend, so it could announce ssh whose
    # credentials had been refused, while the launch then skipped it
    assert r.next_backend(["modal", "ssh", "local"], refused=["ssh"], tried=["modal"]) == "local"
    assert r.next_backend(["modal", "ssh"], refused=["ssh"], tried=["modal"]) is None
    assert r.next_backend([], refused=[], tried=[]) is None


def test_retry_delay_grows_from_the_poll_interval_and_is_capped():
    assert r.retry_delay_s(0) == r.POLL_S
    assert r.retry_delay_s(1) == r.POLL_S * 1.5
    assert r.retry_delay_s(3) > r.retry_delay_s(2) > r.retry_delay_s(1)
    assert r.retry_delay_s(100) == r.MAX_BACKOFF_S


def test_unreachable_only_after_the_whole_window_of_silence():
    assert not r.unreachable(None, 10_000.0)
    assert not r.unreachable(100.0, 100.0 + r.UNREACHABLE_S - 0.001)
    assert r.unreachable(100.0, 100.0 + r.UNREACHABLE_S)


def test_settled_never_before_the_cancel_is_confirmed_then_final_state_or_the_bound():
    assert not r.settled(None, 1e9, "cancelled").pull
    assert not r.settled(100.0, 100.0 + r.SETTLE_S - 0.001, "running").pull
    assert not r.settled(100.0, 101.0, None).pull  # unreachable: wait out the bound
    assert r.settled(100.0, 101.0, "cancelled").pull
    assert r.settled(100.0, 101.0, "failed").pull  # after a restart TERMINATED reads as failed
    assert r.settled(100.0, 100.0 + r.SETTLE_S, None).pull


def test_remote_deaths_are_counted_apart_infrastructure_vs_the_jobs_own():
    assert r.after_remote_death(True, r.MAX_PREEMPTIONS, 0).relaunch
    assert not r.after_remote_death(True, r.MAX_PREEMPTIONS + 1, 0).relaunch
    assert r.after_remote_death(False, 99, r.MAX_JOB_DEATHS).relaunch  # preemptions don't count
    v = r.after_remote_death(False, 0, r.MAX_JOB_DEATHS + 1)
    assert not v.relaunch and "on its own" in v.reason


def test_detach_plan_every_combination_of_what_the_box_says():
    """logind's KillUserProcesses=yes kills setsid'd processes too at the session's end: only a
    scope of the user's own manager, kept by linger, survives it."""
    for kup in (None, False, True):
        for linger in (None, False, True):
            for run_ok in (False, True):
                p = r.detach_plan(kup, linger, run_ok, "ann")
                if not kup:  # no logind (commands missing) or processes left alone: setsid, silent
                    assert p == r.DetachPlan(False, None), (kup, linger, run_ok)
                elif linger and run_ok:
                    assert p == r.DetachPlan(True, None), (kup, linger, run_ok)
                elif not linger:  # the user manager stops at logout too: no scope helps
                    assert not p.scope and p.warning is not None
                    assert "`sudo loginctl enable-linger ann`" in p.warning and "preempted" in p.warning
                else:  # linger, but systemd-run --user does not work
                    assert not p.scope and p.warning is not None
                    assert "systemd-run --user --scope true" in p.warning
                    assert "KillUserProcesses=no" in p.warning and "enable-linger" not in p.warning


def test_detach_probe_output_is_parsed_and_absent_logind_reads_as_none():
    from daemon.cloud.offload.ssh import parse_detach_probe
    assert parse_detach_probe("ann\n") == (None, None, False, "ann")  # no logind: nothing said
    assert parse_detach_probe("KillUserProcesses=no\nann\n") == (False, None, False, "ann")
    assert parse_detach_probe("KillUserProcesses=yes\nLinger=no\nann\n") == (True, False, False, "ann")
    assert parse_detach_probe("KillUserProcesses=yes\nLinger=yes\nSystemdRun=yes\nann\n") == (
        True, True, True, "ann")


def test_only_modal_attempts_have_a_time_limit_and_it_is_modals_range():
    assert r.attempt_timeout_s("modal", 6 * 3600.0) == 6 * 3600.0
    assert r.attempt_timeout_s("modal", 10.0) == 60.0  # Modal takes 60 s at least
    assert r.attempt_timeout_s("modal", 48 * 3600.0) == 24 * 3600.0  # and 24 h at most
    assert r.attempt_timeout_s("ssh", 600.0) is None and r.attempt_timeout_s("local", 600.0) is None


def test_an_attempt_is_cut_the_margin_before_its_limit_or_a_quarter_of_a_short_one():
    limit = 6 * 3600.0
    due = limit - r.CUT_MARGIN_S
    assert not r.attempt_cut_due(1000.0, 1000.0 + due - 0.001, limit)
    assert r.attempt_cut_due(1000.0, 1000.0 + due, limit)
    assert not r.attempt_cut_due(0.0, 449.999, 600.0) and r.attempt_cut_due(0.0, 450.0, 600.0)
    assert not r.attempt_cut_due(0.0, 0.0, 60.0)  # never a cut right at the launch
    assert not r.attempt_cut_due(None, 1e9, limit) and not r.attempt_cut_due(0.0, 1e9, None)
