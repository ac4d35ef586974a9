"""Issue 14's Modal items that had no test: the remote body run through the Modal Function's own
``.local()`` (the real modal SDK, offline) with a cancellation, and with ``commit=True`` so the
body's ``modal.Volume.from_name(...).commit`` wiring runs -- offline the SDK's commit raises its
own AuthError, which is exactly a commit failing in the container: the wrapped commit must keep
the job going. Also: PYTHONPATH gives the container's child the shipped sources."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import modal.exception as mx
import pytest

from daemon.cloud.offload.modal_backend import build_app
from daemon.cloud.offload.remote import PROJECT, run_remote
from daemon.job.adopt import Adopter, step_of
from tests.test_offload_modal_carry import (
    CFG,
    SCRIPT,
    _container,
    _first_night,
    carry_for,
    user_workdir,
)


@pytest.fixture
def no_modal_credentials(monkeypatch, tmp_path):
    """Offline for sure: no token in the env, a config file that does not exist."""
    for k in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))


def _prepared(tmp_path):
    w = user_workdir(tmp_path)
    (w / "out/ckpt.pt").unlink()
    c = carry_for(w, tmp_path)
    _first_night(w, c.adopted_store)
    vol, job, spec = _container(tmp_path, w, c)
    _, fn, *_ = build_app(CFG, "run1", c)
    return fn, vol, job, spec


def test_local_with_commit_wired_to_the_sdks_volume_a_failing_commit_does_not_stop_the_job(
        tmp_path, caplog, no_modal_credentials):
    fn, vol, job, spec = _prepared(tmp_path)
    spec["volume_name"] = "nightshift-run1"
    caplog.set_level(logging.WARNING, logger="nightshift.remote")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fn.local(spec, str(vol), True)  # commit=True: remote_body builds vol.commit
    assert res["state"] == "succeeded" and res["returncode"] == 0
    assert res["committed"] is False  # every commit failed (offline), retried, never fatal
    assert res["adopted"]["step"] == 60 and step_of(job / "out/ckpt.pt") == 60  # the job finished
    failed = [r.getMessage() for r in caplog.records if "volume commit failed" in r.getMessage()]
    assert failed and any("Token missing" in m for m in failed)  # the SDK's own error, from vol.commit


def test_a_commit_that_fails_then_recovers_is_retried_and_the_run_is_committed(tmp_path):
    """A transient SDK error (modal.exception.ConnectionError) on the final commit: retried."""
    calls: list[str] = []

    def commit() -> None:
        calls.append("try")
        if len(calls) <= 2:
            raise mx.ConnectionError("connection reset")

    spec = {"command": [sys.executable, "-c", "print('iter 0: loss 1.0', flush=True)"],
            "workdir": str(tmp_path / "w"), "progress_pattern": "nanogpt"}
    res = run_remote(spec, str(tmp_path / "vol"), commit=commit, poll_s=0.1)
    assert res["state"] == "succeeded" and res["committed"] is True and len(calls) == 3


@pytest.mark.slow
def test_the_containers_child_imports_the_shipped_sources_through_pythonpath(tmp_path):
    """In the container daemon/ and trainer/ are shipped sources, not an installed package. The
    child runs with -S (no site-packages, so no editable install): only PYTHONPATH can find them,
    and a PYTHONPATH the job set itself is kept after them."""
    code = ("import os, trainer.protocol, daemon.job.outputprogress; "
            "print('PP=' + os.environ['PYTHONPATH']); print('FILE=' + trainer.protocol.__file__)")
    spec = {"command": ["python", "-S", "-c", code], "workdir": str(tmp_path / "elsewhere"),
            "env": {"PYTHONPATH": "/opt/user-libs"}}
    res = run_remote(spec, str(tmp_path / "vol"), poll_s=0.1)
    log = (tmp_path / "vol" / "job.log").read_text()
    assert res["state"] == "succeeded", log
    pp = log.split("PP=", 1)[1].splitlines()[0].split(os.pathsep)
    assert pp == [str(PROJECT), "/opt/user-libs"]
    assert Path(log.split("FILE=", 1)[1].splitlines()[0]).is_relative_to(PROJECT)


def test_a_cancellation_through_the_modal_functions_local_terms_the_job_and_commits(tmp_path):
    """The issue's wording: the remote body run with .local() against the script, including a
    cancellation (InputCancellation raised in the body, as Modal's SIGUSR1 handler does)."""
    fn, vol, job, spec = _prepared(tmp_path)
    spec["command"] = [*SCRIPT, "--sleep=0.05", "--save_on_term=True"]
    spec["resume_command"] = [*spec["command"], "--init_from=resume"]

    def cancel_input(signum, frame):  # modal/_container_entrypoint.py's handler
        raise mx.InputCancellation("Input was cancelled by user")

    def cancel_soon() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (vol / "job.log").exists() and "iter 31:" in (vol / "job.log").read_text():
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.05)

    old = signal.signal(signal.SIGUSR1, cancel_input)
    try:
        threading.Thread(target=cancel_soon, daemon=True).start()
        with warnings.catch_warnings(), pytest.raises(mx.InputCancellation):
            warnings.simplefilter("ignore")
            fn.local(spec, str(vol), False)
    finally:
        signal.signal(signal.SIGUSR1, old)
    log = (vol / "job.log").read_text()
    assert log.rstrip().endswith("saving checkpoint to out")  # the job was TERMed and saved
    saved = step_of(job / "out/ckpt.pt")
    assert saved is not None and saved > 31
    assert Adopter(job, "out/ckpt.pt", vol / "adopted").newest().step == saved  # adopted before re-raise
