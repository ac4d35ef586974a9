"""Issue 13, item 4 end to end: about 1000 half-open HTTP connections (no token needed) against
the real daemon with a real training job, started under the 1024 open-files soft limit that
killed it before. The job's steps must keep advancing while the sockets are held, and /status
must still answer during and afterwards."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, kill_group, wait_for, write_config
from tests.test_trainer_resume import SMALL


def _progress(tmp) -> list[dict]:
    p = tmp / "state" / "runs" / "1" / "progress.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _step(tmp) -> int:
    return max((r.get("step") or 0 for r in _progress(tmp) if r["kind"] == "progress"), default=0)


def _status(base: str) -> dict:
    with urllib.request.urlopen(base + "/status?format=json", timeout=10) as r:
        return json.loads(r.read())


def _soft_1024() -> None:  # in the daemon's child, before exec: systemd's default soft limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


@pytest.mark.slow
def test_a_thousand_half_open_sockets_leave_the_job_training_and_status_answering(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096:
        pytest.skip(f"hard RLIMIT_NOFILE {hard}: the daemon could not raise its soft limit past "
                    "1024, and this test needs ~1000 client sockets besides")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    job = [sys.executable, "-m", "trainer.reference", "--steps", "100000", *SMALL,
           "--max-steps-per-s", "20"]
    cfg = write_config(tmp_path, {"job": {"command": job}, "api": {"enabled": True, "port": port}})
    # the daemon starts with soft 1024, like a systemd service without LimitNOFILE
    d = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "-c", str(cfg)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, preexec_fn=_soft_1024)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # room for our own 1000 sockets
    socks: list[socket.socket] = []
    try:
        wait_for(lambda: _step(tmp_path) > 10, 120, interval=0.5, what="training")
        limits = Path(f"/proc/{d.pid}/limits").read_text().splitlines()
        nofile = [x for x in limits if x.startswith("Max open files")][0]
        assert int(nofile.split()[3]) == hard, nofile  # the daemon raised 1024 to the hard limit
        for i in range(1000):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                c.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            socks.append(c)
        s0, t0 = _step(tmp_path), time.monotonic()
        st = _status(base)  # during the attack
        assert st["state"] == "running", st
        # A stalled job does 0 steps; this one trains on (20 steps/s uncontended, 2.7 at load 7
        # with two CPU burners beside the suite): 20 more steps while the sockets stay open
        s1 = wait_for(lambda: (s := _step(tmp_path)) >= s0 + 20 and s, 60, interval=0.5,
                      what=f"20 steps past {s0} while 1000 half-open sockets are held")
        assert d.poll() is None, time.monotonic() - t0
    finally:
        for c in socks:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        # the snapshot trails the progress file by the records not yet read: it must catch up
        after = wait_for(lambda: (st := _status(base))["step"] >= s1 and st, 30,
                         what="/status after the attack at the job's step")
        assert after["state"] == "running"
        s2 = _step(tmp_path)
        wait_for(lambda: _step(tmp_path) > s2 + 10, 30, what="training after the attack")
        assert d.poll() is None
    finally:
        kill_group(d)
    out = d.stdout.read()
    assert "Traceback" not in out, out[-3000:]
