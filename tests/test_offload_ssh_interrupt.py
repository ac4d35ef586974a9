"""The ssh offload backend when things break mid-run, against a real sshd on loopback: the SSH
connection dropped (the session's sshd killed), a new backend object re-attaching by call id,
the remote job killed (preempted, relaunched from the box's checkpoint), cancel.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from daemon.cloud.offload.base import OffloadError
from tests.fixtures.sshd import sshd  # noqa: F401 - the fixture
from tests.fixtures.sshjob import backend, job, make_workdir, poll_until, remote_records
from tests.helpers import wait_for


@pytest.mark.slow
def test_ssh_connection_dropped_mid_run_job_keeps_running_and_a_new_backend_reattaches(sshd, tmp_path):  # noqa: F811
    work = make_workdir(tmp_path)
    b = backend(sshd, work)
    try:
        b.upload("drop", None, [])
        call = b.launch("drop", job(100, rate=15))
        pid = int(call.split(":")[-2])
        poll_until(b, call, lambda s: (s.step or 0) >= 5, 60, "remote progress")
        assert sshd.drop_connections() >= 1  # the box's sshd session dies under us
        assert psutil.pid_exists(pid)
        st = b.poll(call)  # one reconnect, no error
        assert st.state == "running" and b.link.connects == 2
        sshd.go_down()  # the box unreachable for a while: retryable, the job untouched
        with pytest.raises(OffloadError) as e:
            b.poll(call)
        assert e.value.retryable and "connection refused" in str(e.value)
        assert psutil.pid_exists(pid)
        sshd.come_back()
        assert b.poll(call).state == "running"
    finally:
        b.close()
    # a restarted daemon: a new backend object knows only the call id
    b2 = backend(sshd, work)
    try:
        st = b2.poll(call)
        assert st.state == "running" and st.step >= 5
        st = poll_until(b2, call, lambda s: s.state != "running", 90, "the remote run to end")
        assert st.state == "succeeded" and st.step == 100
        assert [r["kind"] for r in remote_records(sshd, "drop")].count("start") == 1  # never restarted
        assert b2.pull("drop", call, work / "ckpt").name == "step_000000100"
    finally:
        b2.close()


@pytest.mark.slow
def test_ssh_remote_job_killed_is_preempted_relaunch_resumes_then_cancel_checkpoints(sshd, tmp_path):  # noqa: F811
    work = make_workdir(tmp_path)
    b = backend(sshd, work)
    try:
        b.upload("kill", None, [])
        call = b.launch("kill", job(400, rate=20, interval=10))
        poll_until(b, call, lambda s: (s.step or 0) >= 25, 60, "remote step 25")
        runner = psutil.Process(int(call.split(":")[-2]))
        [trainer] = runner.children()
        os.killpg(trainer.pid, signal.SIGKILL)  # the box's OOM killer takes the job
        st = poll_until(b, call, lambda s: s.state != "running", 30, "the kill to show")
        assert st.state == "preempted" and "signal 9" in st.error

        call2 = b.launch("kill", job(400, rate=20, interval=10))
        assert call2 != call
        starts = lambda: [r for r in remote_records(sshd, "kill") if r["kind"] == "start"]  # noqa: E731
        wait_for(lambda: len(starts()) == 2, 60, what="the relaunched job's start")
        resumed = starts()[1]["resumed_from"]
        assert resumed and int(resumed.rsplit("_", 1)[1]) >= 20  # from the box's checkpoint
        poll_until(b, call2, lambda s: (s.step or 0) >= 45, 60, "progress after the relaunch")

        t0 = time.monotonic()
        b.cancel(call2)  # exit command: a final checkpoint, then the runner ends
        assert time.monotonic() - t0 < 20
        st = b.poll(call2)
        assert st.state == "cancelled", st
        home = b.pull("kill", call2, work / "ckpt")
        assert int(home.name.rsplit("_", 1)[1]) >= 45  # the final checkpoint, not an older one
        assert not psutil.pid_exists(int(call2.split(":")[-2])) or \
            psutil.Process(int(call2.split(":")[-2])).status() == psutil.STATUS_ZOMBIE
    finally:
        b.close()


