"""Issue 15's measurement: the ssh backend against a real OpenSSH server on loopback
(tests/fixtures/sshd.py): manifest sync (first, unchanged, touched), a checkpoint upload, poll
latency, the first poll after the connection was killed, a re-attach by a new backend object.

    .venv/bin/python bench/ssh_bench.py          # needs openssh-server (/usr/sbin/sshd)

Loopback takes the network out: what is left is the protocol, the box's per-request work and
our own. Results go to bench/results/ssh.json with the load average they were taken at.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from daemon.cloud.offload.base import JobSpec  # noqa: E402
from daemon.cloud.offload.carry import Carry, job_excludes  # noqa: E402
from daemon.cloud.offload.ssh import SshBackend  # noqa: E402
from tests.fixtures.sshd import start_sshd, stop_sshd  # noqa: E402


def timed(fn) -> float:
    t = time.monotonic()
    fn()
    return round(time.monotonic() - t, 3)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ssh-bench-"))
    server = start_sshd(tmp / "sshd")
    work = tmp / "work"
    (work / "data").mkdir(parents=True)
    for i in range(1000):
        (work / "data" / f"f{i:04d}.bin").write_bytes(os.urandom(4096))
    (work / "data" / "big.bin").write_bytes(os.urandom(256 << 20))
    ck = tmp / "ckpt" / "step_000000100"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(os.urandom(128 << 20))
    carry = Carry(work, job_excludes(work, None, ["data"]), ("data",))
    b = SshBackend(server.cfg(), carry=carry)
    out: dict = {"load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    try:
        out["sync_first_s"] = timed(lambda: b.upload("m", None, []))
        out["sync_first"] = b.last_sync["data/data"]
        out["sync_unchanged_s"] = timed(lambda: b.upload("m", None, []))
        out["sync_unchanged"] = b.last_sync["data/data"]
        os.utime(work / "data" / "big.bin")
        out["sync_touched_256MB_s"] = timed(lambda: b.upload("m", None, []))
        out["sync_touched"] = b.last_sync["data/data"]
        out["checkpoint_128MB_s"] = timed(lambda: b.upload("m", ck, []))
        call = b.launch("m", JobSpec(["sh", "-c", "sleep 60"]))
        lat = []
        for _ in range(30):
            t = time.monotonic()
            b.poll(call)
            lat.append(time.monotonic() - t)
        out["poll_ms_median"] = round(statistics.median(lat) * 1000, 1)
        out["poll_ms_max"] = round(max(lat) * 1000, 1)
        server.drop_connections()
        time.sleep(0.2)
        out["poll_after_drop_ms"] = round(timed(lambda: b.poll(call)) * 1000, 1)
        b2 = SshBackend(server.cfg(), carry=carry)
        out["reattach_first_poll_ms"] = round(timed(lambda: b2.poll(call)) * 1000, 1)
        b2.close()
        out["cancel_s"] = timed(lambda: b.cancel(call))
    finally:
        b.close()
        stop_sshd(server)
        shutil.rmtree(tmp, ignore_errors=True)
    res = ROOT / "bench" / "results" / "ssh.json"
    res.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
