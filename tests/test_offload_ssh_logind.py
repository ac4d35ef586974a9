"""The ssh backend on a box whose logind kills a user's processes at the session's end
(KillUserProcesses=yes), against the real sshd fixture. This machine has no logind, so the box's
``loginctl`` and ``systemd-run`` are small scripts first on the remote PATH, through
``[offload.ssh] env`` (the environment every command of the backend runs with on the box):
they say what a systemd box would say. Everything else is real: SSH, the probe, the launch.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from tests.fixtures.sshd import sshd  # noqa: F401 - the fixture
from tests.fixtures.sshjob import backend, job, make_workdir, poll_until

LOGINCTL = """#!/bin/sh
case "$1" in
  show) echo KillUserProcesses=yes;;
  show-user) echo "Linger=$(cat "$(dirname "$0")/linger")";;
  *) exit 1;;
esac
"""
# a user manager that works: records how it was asked, then runs the command in the "scope"
SYSTEMD_RUN = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/systemd-run.log"
while [ "${1#--}" != "$1" ]; do shift; done
exec "$@"
"""


def _fake_bin(d: Path) -> Path:
    d.mkdir()
    for name, body in (("loginctl", LOGINCTL), ("systemd-run", SYSTEMD_RUN)):
        (d / name).write_text(body)
        (d / name).chmod(stat.S_IRWXU)
    (d / "linger").write_text("no\n")
    return d


@pytest.mark.slow
def test_ssh_runner_that_would_die_at_logout_is_said_once_with_the_fix_then_scoped_under_linger(sshd, tmp_path):  # noqa: F811
    fake = _fake_bin(tmp_path / "fakebin")
    work = make_workdir(tmp_path)
    b = backend(sshd, work, env={"PATH": f"{fake}:{os.environ['PATH']}"})
    calls = []
    try:
        b.upload("n1", None, [])
        calls.append(b.launch("n1", job(400, rate=5)))
        # the bug: launched as if setsid were enough; the runner then died with each session
        assert len(b.warnings) == 1, b.warnings
        w = b.warnings[0]
        assert "KillUserProcesses=yes" in w and f"`sudo loginctl enable-linger {sshd.user}`" in w, w
        ran = (fake / "systemd-run.log").read_text().splitlines()
        assert ran == ["--user --scope --quiet true"], ran  # only the probe: no linger, no scope; setsid
        assert poll_until(b, calls[0], lambda s: s.state == "running", 60, "the runner up").state == "running"

        b.upload("n2", None, [])
        calls.append(b.launch("n2", job(400, rate=5)))
        assert b.warnings == []  # said once, not at every launch

        (fake / "linger").write_text("yes\n")  # the user ran the fix: the next runner is scoped
        b.upload("n3", None, [])
        calls.append(b.launch("n3", job(400, rate=5)))
        assert b.warnings == [] and b.detach is not None and b.detach.scope
        log = (fake / "systemd-run.log").read_text()
        assert log.count("--user --scope --quiet true\n") == 3, log  # the probe, at each new runner
        assert f"--user --scope --quiet {sys.executable} -c import json" in log, log  # the runner's launch
        assert poll_until(b, calls[2], lambda s: s.state == "running", 60, "the scoped runner up").state == "running"
    finally:
        for c in calls:
            b.cancel(c)
        b.close()
