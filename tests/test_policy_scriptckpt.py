"""daemon/policy/scriptckpt.py with plain values: the restore chain and where a restart waits."""

from __future__ import annotations

from daemon.policy.scriptckpt import Resumed, after_exit, error_line, wait_state_after_exit

R = Resumed("out/ckpt.pt", 3, 250)


def chain(**kw):
    args = {"older_left": 2, "failed_before": 0, "fresh_allowed": True, "error": "not a torch zip"}
    return after_exit(R, kw.pop("kind", "code_error"), kw.pop("step", None), **(args | kw))


def test_a_crash_before_any_progress_puts_back_the_next_older_copy():
    d = chain()
    assert d.action == "older"
    assert d.reason == ("the checkpoint put back at out/ckpt.pt (step 250) does not load: not a torch zip; "
                        "putting back the next older copy")


def test_progress_at_the_checkpoint_step_means_it_loaded():
    assert chain(step=249).action == "older"  # behind its own step: not from this copy
    assert chain(step=250).action == "none" and chain(step=900).action == "none"


def test_only_a_crash_counts_against_the_file():
    for kind in ("gpu_fault", "signal", "success", "stopped"):
        assert chain(kind=kind).action == "none"
    assert after_exit(None, "code_error", None, older_left=2, failed_before=0, fresh_allowed=True,
                      error="x").action == "none"


def test_with_no_copy_left_a_fresh_start_when_allowed_else_a_failure_saying_every_copy_failed():
    d = chain(older_left=0, failed_before=2)
    assert d.action == "fresh" and "2 older copies failed too" in d.reason and "`command`" in d.reason
    d = chain(older_left=0, failed_before=1, fresh_allowed=False)
    assert d.action == "fail"
    assert d.reason.startswith("the checkpoint put back at out/ckpt.pt (step 250) does not load: "
                               "not a torch zip; 1 older copy failed too; every copy failed to load")
    assert "older cop" not in chain(older_left=0, failed_before=0).reason


def test_a_restart_waits_in_the_hold_it_died_in():
    assert wait_state_after_exit("cooling", thermal_held=True) == "cooling"
    assert wait_state_after_exit("cooling", thermal_held=False) == "starting"
    assert wait_state_after_exit("recovering", thermal_held=False) == "recovering"
    assert wait_state_after_exit("running", thermal_held=False) == "starting"


def test_the_error_line_is_our_verdict_or_the_jobs_exception_line_cut_after_a_sentence():
    assert error_line("not a torch zip", "Traceback...\nRuntimeError: boom") == "not a torch zip"
    assert error_line(None, "Traceback (most recent call last):\n  File x\nRuntimeError: boom\n\n") == \
        "RuntimeError: boom"
    torch_says = ("Traceback (most recent call last):\n  File x\n_pickle.UnpicklingError: Weights only load "
                  "failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument in "
                  "`torch.load` from `False` to `True`. Re-running it will likely succeed.\n\nUnsupported "
                  "operand 110\n\nCheck the documentation of torch.load to learn more.")
    assert error_line(None, torch_says) == "_pickle.UnpicklingError: Weights only load failed"
    long = error_line(None, "E: " + "word " * 60)
    assert len(long) <= 160 and long.endswith("word...")
    assert error_line(None, "") == "the job exited before reporting any progress"


def test_a_save_since_the_put_back_means_it_loaded_even_without_progress_reports():
    """The draft's weak spot: a script without progress_pattern reports no step, so any crash
    after a resume counted against the copy put back (marked failed, an older one restored).
    A new checkpoint it saved says it loaded and trained."""
    assert after_exit(R, "code_error", None, older_left=1, failed_before=0, fresh_allowed=True,
                      error="x").action == "older"
    assert after_exit(R, "code_error", None, older_left=1, failed_before=0, fresh_allowed=True,
                      error="x", saved_since=True).action == "none"
