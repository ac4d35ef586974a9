"""Issue 25, finding 6: a failed run's phone text (daemon/web/statusfmt.py), from plain status values.
It was 33 lines, the same PyTorch paragraph twice, cut mid-sentence, and after a NaN loss it
showed the loss before it (2152) and offered the NaN-weights checkpoint with no warning."""

from __future__ import annotations

import re

from daemon.web import statusfmt

TORCH = ("_pickle.UnpicklingError: Weights only load failed. This file can still be loaded, to do so you "
         "have two options, do those steps only if you trust the source of the checkpoint. (1) In PyTorch "
         "2.6 we changed the default value of the `weights_only` argument in `torch.load` from `False` to "
         "`True`. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but it "
         "can result in arbitrary code execution. (2) Alternatively, to load with `weights_only=True` "
         "please check the recommended steps in the following error message.")
TRACEBACK = "\n".join(["Traceback (most recent call last):", '  File "train.py", line 80, in <module>',
                       "    checkpoint = torch.load(ckpt_path, map_location=device)", TORCH])


def failed(failure: str, **over) -> dict:
    st = {"state": "failed", "display_state": "FAILED", "run_id": 1, "job": "nanogpt", "step": 250,
          "total_steps": 5000, "progress_pct": 5.0, "loss": 2.31, "loss_trend": [3.0, 2.5, 2.31],
          "temps": {"edge_c": 70.0, "tctl_c": 75.0},
          "resets": {"in_window": 0, "total": 2, "window_s": 3600, "heat_correlated": False},
          "backend": "local", "cloud": {}, "checkpoint": {"step": 250, "age_s": 40},
          "last_event": {"t": 990.0, "kind": "failed", "message": "run 1 (nanogpt): " + failure.split("\n")[0]},
          "failure": failure, "problems": []}
    return st | over


def check(text: str) -> list[str]:
    lines = text.splitlines()
    assert len(lines) <= statusfmt.FAILED_LINES, text
    assert all(len(line) <= statusfmt.WIDTH for line in lines), text
    body = [line[statusfmt.LABEL:].strip() for line in lines if line.strip()]
    assert len(body) == len(set(body)), text  # nothing said twice
    flat = re.sub(r"\s+", " ", text)
    assert flat.count("Weights only load failed") <= 1, text
    return lines


def test_a_deterministic_failure_with_torchs_long_paragraph_fits_the_screen_cause_first():
    reason = ("deterministic failure: the same error at the same step twice in a row (code error: "
              + TORCH + ")")
    lines = check(statusfmt.render(failed(reason + "\n" + TRACEBACK), now=1000.0))
    assert lines[0] == "nightshift  FAILED"
    assert lines[3].startswith("loss") and lines[4].startswith("FAIL  Deterministic failure: the same")
    assert not any(line.startswith("last") for line in lines)  # the failed event is the cause: not again
    assert not any(line.rstrip().endswith(("the", "to", "of")) for line in lines)  # never cut mid-sentence


def test_the_restore_chains_failure_says_the_checkpoint_does_not_load_first():
    cause = ("the checkpoint put back at out/ckpt.pt (step 250) does not load: not a torch zip; 2 older "
             "copies failed too; every copy failed to load, and this run was started from a checkpoint on "
             "purpose (--resume-from), so it does not start from scratch")
    lines = check(statusfmt.render(failed(cause + "\n" + TRACEBACK), now=1000.0))
    flat = re.sub(r"\s+", " ", " ".join(line[statusfmt.LABEL:] for line in lines))
    assert "FAIL  The checkpoint put back at" in "\n".join(lines)
    assert "out/ckpt.pt (step 250) does not load: not a torch zip; 2 older copies failed too" in flat
    assert "Weights only load failed." in flat  # the job's own error, once, at a sentence boundary


def test_the_loss_that_stopped_the_run_is_the_one_shown_and_the_suspect_checkpoints_are_named():
    st = failed("stopped: the loss diverged at step 412 (non-finite loss)", loss=2152.0,
                loss_stopped={"step": 412, "loss": "nan"}, checkpoint={"step": 400, "age_s": 30},
                problems=["the last good checkpoint is step 400: those past step 399 are suspect (the loss "
                          "diverged at step 412)"])
    lines = check(statusfmt.render(st, now=1000.0))
    text = "\n".join(lines)
    assert "loss  nan at step 412 stopped the run" in text and "2152" not in text
    assert "ckpt  step 400, saved 30s ago" in text and "The last good checkpoint is step 400: those past step 399 are suspect" in re.sub(r"\s+", " ", text)
