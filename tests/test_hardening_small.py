"""Issue 31, item 10: the small ways a night went wrong, each reproduced."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from daemon import cli
from daemon.job.jobproc import JobProcess
from daemon.policy.states import State
from daemon.state import config as config_mod
from daemon.state.store import Store
from tests.harness import Behaviour, Harness, config
from tests.helpers import ROOT, write_config


def test_an_unknown_simulated_gpu_key_fails_check_config_not_run(tmp_path, capsys):
    """Old: check-config said valid, `run` then died with a ValueError traceback."""
    cfg = write_config(tmp_path, {"job": {"command": ["true"]},
                                  "gpu": {"sensor": "simulated", "simulated": {"laod_c": 10.0}}})
    assert cli.main(["check-config", "-c", str(cfg)]) == config_mod.EX_CONFIG
    err = capsys.readouterr().err
    assert "gpu.simulated.laod_c" in err and "load_c" in err and str(cfg) in err
    assert cli.main(["run", "-c", str(cfg)]) == config_mod.EX_CONFIG  # before anything starts
    assert "Traceback" not in capsys.readouterr().err


def test_a_missing_workdir_is_named_not_reported_as_the_program_missing(tmp_path):
    """Old: "cannot start the job: 'sleep' not found" when the workdir was what was missing."""
    async def go() -> str:
        p = JobProcess(["sleep", "1"], cwd=tmp_path / "gone", env=dict(os.environ),
                       log_path=tmp_path / "job.log", scope=False)
        with pytest.raises(OSError) as e:
            await p.start()
        return str(e.value)

    msg = asyncio.run(go())
    assert "workdir" in msg and str(tmp_path / "gone") in msg and "'sleep' not found" not in msg

    async def missing_program() -> str:
        p = JobProcess(["no-such-program-xyz"], cwd=tmp_path, env=dict(os.environ),
                       log_path=tmp_path / "job.log", scope=False)
        with pytest.raises(OSError) as e:
            await p.start()
        return str(e.value)

    assert "'no-such-program-xyz' not found" in asyncio.run(missing_program())


def test_a_job_that_reports_no_step_does_not_finish_at_step_none(tmp_path):
    async def go():
        cfg = config(tmp_path, job={"command": ["quiet"]})
        h = Harness(tmp_path, cfg, {"quiet": Behaviour(script=[(1.0, "exit", 0)])})
        sup = await h.open()
        await h.run(10, until=lambda s: s.state == State.SUCCEEDED)
        assert sup.state == State.SUCCEEDED
        said = h.events("finished") + h.events("state")
        assert said and not any("None" in m for m in said), said
        assert any("no step reported" in m for m in h.events("finished"))
    asyncio.run(go())


WRITER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from daemon.state.store import Store
s = Store({db!r})
run = s.create_run("r", {{}}, None)
s.queue_add("before", ["python", "a.py"], {{}}, "cli")
os.unlink({db!r} + "-wal")  # a cleaner, or a user tidying the state dir
s.queue_add("after", ["python", "b.py"], {{}}, "cli")
s.update_run(run, user_hold=1)  # the user's pause
s.add_event(run, "x", "an event")
s.retry_pending()  # the daemon's next poll notices the WAL is gone
s.add_event(run, "y", "after the poll")
s.retry_pending()
os.kill(os.getpid(), signal.SIGKILL)  # then a crash
"""


def test_a_deleted_wal_loses_neither_the_queue_edit_nor_the_pause(tmp_path):
    """Old: the WAL deleted, then a crash: the queue edit and the user's pause were gone (and
    everything else written since the last automatic checkpoint)."""
    db = str(tmp_path / "nightshift.db")
    r = subprocess.run([sys.executable, "-c", WRITER.format(root=str(ROOT), db=db)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    s = Store(db)
    try:
        assert [q["name"] for q in s.queue()] == ["before", "after"]
        assert [run["user_hold"] for run in s.runs()] == [1]
        assert {e["kind"] for e in s.events(None)} >= {"x", "y"}
    finally:
        s.close()
