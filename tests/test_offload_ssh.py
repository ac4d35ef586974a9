"""The ssh offload backend against a real OpenSSH server on loopback (tests/fixtures/sshd.py):
real SSH and SFTP, a real detached runner and reference job on the "box", real files. Faked only
at the boundary: the box is this machine, so its python is this venv's python.
Interruptions (dropped connection, killed job) are in test_offload_ssh_interrupt.py.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from daemon.cloud.offload.base import OffloadAuthError, OffloadError
from daemon.cloud.offload.ssh import SshBackend
from daemon.cloud.offload.sshlink import SshAuthError, SshHostKeyError
from tests.fixtures.sshd import _free_port, _keypair, sshd  # noqa: F401 - the fixture
from tests.fixtures.sshjob import MODEL, backend, job, make_workdir, poll_until, remote_records
from tests.helpers import wait_for


@pytest.mark.slow
def test_ssh_failover_and_return_carries_the_job_and_brings_the_checkpoint_home(sshd, tmp_path):  # noqa: F811
    """Local run killed after its step-20 checkpoint -> upload (workdir minus excludes, data by
    manifest, the checkpoint) -> launch -> poll to succeeded -> pull: step 60, loadable."""
    from trainer.checkpoint import load_checkpoint
    from trainer.format import find_latest_valid

    work = make_workdir(tmp_path)
    ckpt, run = work / "ckpt", tmp_path / "localrun"
    local = subprocess.Popen(job(60, rate=25).command, cwd=work, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, "NIGHTSHIFT_RUN_DIR": str(run),
                                  "NIGHTSHIFT_CHECKPOINT_DIR": str(ckpt), "NIGHTSHIFT_RESUME": ""})
    try:
        wait_for(lambda: find_latest_valid(ckpt), 60, what="the local step-20 checkpoint")
    finally:
        os.killpg(local.pid, signal.SIGKILL)  # the flaky GPU resets
        local.wait()
    here = find_latest_valid(ckpt)

    b = backend(sshd, work, price_usd_per_h=0.69)
    try:
        up = b.upload("night1", here.path, [])
        assert up.bytes > 200_000
        rwork = sshd.remote_dir / "runs" / "night1" / "work"
        assert (rwork / "job.toml").read_text() == MODEL
        assert not (rwork / "secret.txt").exists() and not (rwork / "train.log").exists()  # .gitignore
        assert not (rwork / "ckpt").exists()  # checkpoints travel as checkpoints, not as workdir files
        shard = (work / "data" / "shard0.bin").read_bytes()
        assert (sshd.remote_dir / "data" / "data" / "shard0.bin").read_bytes() == shard  # shared by runs
        assert (sshd.remote_dir / "runs" / "night1" / "ckpt" / here.path.name / "meta.json").exists()

        call = b.launch("night1", job(60))
        assert call.startswith(f"ssh:127.0.0.1:{sshd.port}:night1:")
        assert b.launch("night1", job(60)) == call  # never two runners for one run
        st = poll_until(b, call, lambda s: s.state != "running", 90, "the remote run to end")
        assert st.state == "succeeded", st
        assert st.step == 60 and st.total_steps == 60 and st.started_at
        assert (rwork / "data" / "shard0.bin").read_bytes() == shard  # linked at its relative path
        start = [r for r in remote_records(sshd, "night1") if r["kind"] == "start"]
        assert start[0]["resumed_from"].endswith(here.path.name)  # NIGHTSHIFT_RESUME on the box

        home = b.pull("night1", call, ckpt)
        assert home == ckpt / "step_000000060"
        _, meta = load_checkpoint(home)
        assert meta["step"] == 60
        d = b.describe()
        assert d["host"] == f"{sshd.user}@127.0.0.1:{sshd.port}" and d["remote_state"] == "succeeded"
        assert b.cost_usd(3600) == pytest.approx(0.69)
    finally:
        b.close()


@pytest.mark.slow
def test_ssh_unknown_or_changed_host_key_is_refused_with_the_fix(sshd, tmp_path):  # noqa: F811
    other = _keypair(tmp_path / "other_host_key")
    changed = tmp_path / "known_changed"
    changed.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
    b = SshBackend(sshd.cfg(known_hosts=str(changed)))
    with pytest.raises(SshHostKeyError) as e:
        b.upload("x", None, [])
    b.close()
    msg = str(e.value)
    assert "CHANGED" in msg and "ssh-keygen -R" in msg and str(changed) in msg
    assert isinstance(e.value, OffloadAuthError) and not e.value.retryable
    assert not (sshd.remote_dir / "runs").exists()  # nothing was done on an untrusted box

    empty = tmp_path / "known_empty"
    b = SshBackend(sshd.cfg(known_hosts=str(empty)))
    with pytest.raises(SshHostKeyError, match="not in .*ssh-keyscan -p") as e:
        b.upload("x", None, [])
    b.close()
    assert not empty.exists()  # no silent trust on first use

    b = SshBackend(sshd.cfg(known_hosts=str(empty), accept_new_host_key=True))
    try:
        b.upload("x", None, [])  # accept-new: an unknown host is recorded once
    finally:
        b.close()
    assert sshd.host_key_line.split()[1] in empty.read_text()
    b = SshBackend(sshd.cfg(known_hosts=str(changed), accept_new_host_key=True))
    with pytest.raises(SshHostKeyError, match="CHANGED"):  # ...but a changed key never is
        b.upload("x", None, [])
    b.close()


@pytest.mark.slow
def test_ssh_bad_credentials_and_a_dead_host_say_what_is_wrong(sshd, tmp_path):  # noqa: F811
    _keypair(tmp_path / "stranger")
    b = SshBackend(sshd.cfg(key_file=str(tmp_path / "stranger")))
    with pytest.raises(SshAuthError) as e:
        b.upload("x", None, [])
    b.close()
    assert "authentication failed" in str(e.value) and "stranger" in str(e.value)
    assert "authorized_keys" in str(e.value) and not e.value.retryable

    b = SshBackend(sshd.cfg(key_file=str(tmp_path / "missing")))
    with pytest.raises(SshAuthError, match="cannot read key_file"):
        b.upload("x", None, [])
    b.close()

    b = SshBackend(sshd.cfg(port=_free_port()))  # nothing listens: the box is down
    with pytest.raises(OffloadError) as e:
        b.poll(f"ssh:127.0.0.1:{b.link.port}:x:1:1")
    b.close()
    assert e.value.retryable and "connection refused" in str(e.value)
    assert not isinstance(e.value, OffloadAuthError)


@pytest.mark.slow
def test_ssh_sync_sends_only_what_changed_and_setup_runs_once_per_environment(sshd, tmp_path):  # noqa: F811
    work = make_workdir(tmp_path)
    for i in range(3):
        (work / "data" / f"more{i}.bin").write_bytes(os.urandom(50_000))
    (work / "requirements.txt").write_text("numpy\n")
    count = sshd.remote_dir / "setup-count"
    b = backend(sshd, work, setup_command=f"echo ran >> {count}")
    try:
        b.upload("s1", None, [])
        assert b.last_sync["data/data"]["sent"] == 4 and b.last_sync["setup"]["ran"]
        b.upload("s2", None, [])  # the next night: data already there, environment unchanged
        assert b.last_sync["data/data"] == {"files": 4, "sent": 0, "bytes": 0, "deleted": 0, "hashed": 0}
        assert b.last_sync["src/daemon"]["sent"] == 0 and not b.last_sync["setup"]["ran"]
        os.utime(work / "data" / "more0.bin")  # touched, same content: hashed, not sent
        (work / "data" / "more1.bin").write_bytes(os.urandom(50_000))
        (work / "data" / "more2.bin").unlink()
        (sshd.remote_dir / "data" / "data" / "from_the_job.txt").write_text("keep me")
        (work / "requirements.txt").write_text("numpy\nscipy\n")
        b.upload("s2", None, [])
        assert b.last_sync["data/data"] == {"files": 3, "sent": 1, "bytes": 50_000, "deleted": 1, "hashed": 2}
        assert (sshd.remote_dir / "data" / "data" / "from_the_job.txt").exists()  # not ours to delete
        assert not (sshd.remote_dir / "data" / "data" / "more2.bin").exists()
        assert b.last_sync["setup"]["ran"]  # requirements changed: a new environment
        assert count.read_text() == "ran\nran\n"
    finally:
        b.close()


@pytest.mark.slow
def test_ssh_from_config_and_a_missing_remote_python_says_what_to_set(sshd, tmp_path):  # noqa: F811
    from daemon.state.config import validate
    work = make_workdir(tmp_path)
    (work / "state").mkdir()
    cfg = validate({"job": {"command": ["python", "x.py"]},
                    "offload": {"backend": "ssh", "ssh": {k: v for k, v in sshd.cfg(python="/nonexistent/python3").items() if v is not None}}})
    cfg["job"].update(workdir=str(work), checkpoint_dir=str(work / "ckpt"))
    cfg["daemon"]["state_dir"] = str(work / "state")
    b = SshBackend.from_config(cfg)
    try:
        assert "/state" in b.carry.exclude and "/ckpt" in b.carry.exclude  # never uploaded
        b.upload("py", None, [])
        with pytest.raises(OffloadError, match=r"exit 127.*set \[offload.ssh\] python") as e:
            b.launch("py", job(10))
        assert not e.value.retryable
    finally:
        b.close()


def test_ssh_config_table_is_validated_naming_the_key_and_the_file(tmp_path):
    from daemon.state.config import ConfigError, load
    base = '[job]\ncommand = ["python", "train.py"]\n'
    good = tmp_path / "good.toml"
    good.write_text(base + '[offload]\nbackends = ["ssh", "modal"]\nbudget_usd = 5.0\n'
                    '[offload.ssh]\nhost = "box"\nport = 2222\nkey_file = "keys/id"\nenv = { HF_HOME = "/w" }\n')
    cfg = load(good)
    ssh = cfg["offload"]["ssh"]
    assert ssh["port"] == 2222 and ssh["key_file"] == str(tmp_path / "keys/id")  # relative to the file
    assert ssh["remote_dir"] == "nightshift" and ssh["accept_new_host_key"] is False
    for body, key in [('[offload.ssh]\nhots = "box"\n', "offload.ssh.hots"),
                      ('[offload.ssh]\nhost = "box"\nport = "22"\n', "offload.ssh.port"),
                      ('[offload]\nbackends = ["sssh"]\n', "offload.backends"),
                      ('[offload]\nbackend = "ssh"\n', "offload.ssh.host")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(base + body)
        with pytest.raises(ConfigError) as e:
            load(bad)
        assert e.value.key == key and str(bad) in str(e.value)


@pytest.mark.slow
def test_cloud_fault_ssh_a_hung_setup_command_fails_with_its_output_and_is_not_run_again(sshd, tmp_path):  # noqa: F811
    """Old: asyncssh.TimeoutError (an asyncio.TimeoutError) was taken for a lost connection: the
    link reconnected and ran the hung setup_command again, 3 h more."""
    import time

    work = make_workdir(tmp_path)
    count = sshd.remote_dir / "setup-count"
    b = backend(sshd, work, setup_command=f"echo started >> {count}; echo installing torch; sleep 600",
                setup_timeout_s=3.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(OffloadError) as e:
            b.upload("hang", None, [])
    finally:
        b.close()
    msg = str(e.value)
    assert not e.value.retryable and "setup_command did not finish within 3 s" in msg
    assert "installing torch" in msg and "connection lost" not in msg
    assert count.read_text() == "started\n"  # run once, not again after a "reconnect"
    assert time.monotonic() - t0 < 60
    pid = int(next((sshd.remote_dir / "setup").glob("*.log.pid")).read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, what="the hung setup stopped on the box")


@pytest.mark.slow
def test_cloud_fault_ssh_a_host_alias_with_proxyjump_in_ssh_config_is_reached(sshd, tmp_path, monkeypatch):  # noqa: F811
    """Old: config=None: ~/.ssh/config was ignored, so `host = "gpubox"` failed as "cannot
    resolve the host" and a ProxyJump was never taken."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/config").write_text(
        "Host gpubox\n"
        "  HostName 127.0.0.1\n"
        f"  Port {sshd.port}\n"
        f"  User {sshd.user}\n"
        f"  IdentityFile {sshd.key_file}\n"
        f"  ProxyJump {sshd.user}@127.0.0.1:{sshd.port}\n"  # the bastion: here, the same sshd
        "Host 127.0.0.1\n"
        f"  IdentityFile {sshd.key_file}\n"
        f"  UserKnownHostsFile {sshd.known_hosts}\n")
    monkeypatch.setenv("HOME", str(home))
    work = make_workdir(tmp_path)
    cfg = sshd.cfg(host="gpubox", port=22, user=None, key_file=None)
    b = SshBackend(cfg, carry=None)
    before = sshd.log.read_text().count("Accepted publickey")
    try:
        b.upload("alias", None, [])
        assert (sshd.remote_dir / "runs" / "alias").is_dir()
        hops = sshd.log.read_text().count("Accepted publickey") - before
        assert hops == 2, f"the ProxyJump hop and the box each authenticate once ({hops})"
    finally:
        b.close()
    off = SshBackend(sshd.cfg(host="gpubox", port=22, user=None, key_file=None, ssh_config=False))
    try:
        with pytest.raises(OffloadError, match="cannot resolve the host|cannot connect"):
            off.upload("alias", None, [])
    finally:
        off.close()
    assert work.exists()


OOM_JOB = """
import os, re, signal, sys
p = os.environ["NIGHTSHIFT_VMSTAT"]
n = int(re.search(r"oom_kill (\\d+)", open(p).read()).group(1))
open(p, "w").write(f"pgfault 1\\noom_kill {n + 1}\\n")  # what the kernel counts as it kills
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_cloud_fault_ssh_an_oom_killed_job_is_the_jobs_own_death_not_a_preemption(sshd, tmp_path):  # noqa: F811
    """The box is asked (its kernel's oom_kill count, /proc/vmstat) whether the SIGKILL was an
    OOM kill: then the death is the job's own (cause "job"), counted against its own limit.
    The counter file stands in for /proc/vmstat: the machine cannot OOM on demand."""
    import sys

    from daemon.cloud.offload.base import JobSpec
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("pgfault 1\noom_kill 7\n")
    work = make_workdir(tmp_path)
    b = backend(sshd, work, env={"NIGHTSHIFT_VMSTAT": str(vmstat)})
    try:
        b.upload("oom", None, [])
        call = b.launch("oom", JobSpec([sys.executable, "-c", OOM_JOB]))
        st = poll_until(b, call, lambda s: s.state != "running", 60, "the job's death")
        assert st.state == "preempted" and st.cause == "job" and "OOM-killed" in st.error, st
        vmstat.write_text("pgfault 1\noom_kill 8\n")  # no OOM this time: a plain SIGKILL
        b.upload("oom2", None, [])
        call = b.launch("oom2", JobSpec([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)"]))
        st = poll_until(b, call, lambda s: s.state != "running", 60, "the job's death")
        assert st.state == "preempted" and st.cause is None and "signal 9" in st.error, st
    finally:
        b.close()
