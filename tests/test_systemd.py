"""The unit files pass `systemd-analyze verify`, and sd_notify reaches a socket we create."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import JOBS, ROOT, kill_group, nightshift, start_daemon, wait_for, write_config

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None and not os.environ.get("CI"),
                                   reason="systemd-analyze not installed (apt-get install systemd)")
NIGHTSHIFT_BIN = str(Path(sys.executable).with_name("nightshift"))


def _verify(unit: Path, tmp_path: Path, user: bool) -> subprocess.CompletedProcess:
    text = unit.read_text().replace("/opt/nightshift/.venv/bin/nightshift", NIGHTSHIFT_BIN)
    text = text.replace("%h/nightshift/.venv/bin/nightshift", NIGHTSHIFT_BIN)
    dst = tmp_path / unit.name
    dst.write_text(text)
    env = dict(os.environ)
    args = [ANALYZE or "systemd-analyze"]
    if user:
        runtime = tmp_path / "xdg"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args.append("--user")
    return subprocess.run([*args, "verify", str(dst)], capture_output=True, text=True, env=env)


@needs_analyze
def test_system_unit_passes_systemd_analyze_verify(tmp_path):
    r = _verify(ROOT / "systemd" / "nightshiftd.service", tmp_path, user=False)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


@needs_analyze
def test_user_unit_passes_systemd_analyze_verify(tmp_path):
    r = _verify(ROOT / "systemd" / "user" / "nightshiftd.service", tmp_path, user=True)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


@pytest.mark.parametrize("unit", ["nightshiftd.service", "user/nightshiftd.service"])
def test_both_units_raise_limit_nofile_exactly_once(unit):
    """Issue 13: 1000 half-open sockets exhaust 1024 fds; the user unit had no limit, the system
    unit set it twice."""
    lines = (ROOT / "systemd" / unit).read_text().splitlines()
    assert [x for x in lines if x.startswith("LimitNOFILE=")] == ["LimitNOFILE=65536"]


def test_unit_declares_notify_watchdog_killmode_and_gpu_access():
    text = (ROOT / "systemd" / "nightshiftd.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "KillMode=mixed",
                 "DeviceAllow=char-drm rw", "DeviceAllow=/dev/kfd rw",
                 "SupplementaryGroups=render video", "NoNewPrivileges=yes"):
        assert line in text, line


@needs_analyze
def test_system_unit_exposure_is_below_the_old_3_9_and_keeps_the_gpu(tmp_path):
    """Issue 13: `systemd-analyze security` said 3.9; the hardening must not cost /dev/dri, /dev/kfd."""
    text = (ROOT / "systemd" / "nightshiftd.service").read_text()
    dst = tmp_path / "nightshiftd.service"
    dst.write_text(text.replace("/opt/nightshift/.venv/bin/nightshift", NIGHTSHIFT_BIN))
    r = subprocess.run([ANALYZE or "systemd-analyze", "security", "--offline=yes", str(dst)],
                       capture_output=True, text=True)
    line = [x for x in r.stdout.splitlines() if "Overall exposure level" in x]
    assert line, r.stdout + r.stderr
    exposure = float(line[0].split(":")[1].split()[0])
    assert exposure < 3.9, line[0]
    for needed in ("DeviceAllow=char-drm rw", "DeviceAllow=/dev/kfd rw", "StateDirectory=nightshift",
                   "ConfigurationDirectory=nightshift", "UMask=0077", "LimitNOFILE=",
                   "SystemCallFilter=@system-service", "ProtectKernelTunables=yes"):
        assert needed in text, needed


@pytest.mark.slow
def test_system_unit_finds_its_config_and_state_through_systemd_directories(tmp_path):
    """The unit passes no -c: the daemon reads $CONFIGURATION_DIRECTORY/config.toml, and the
    default relative state_dir yields to $STATE_DIRECTORY (not /etc/nightshift/state)."""
    text = (ROOT / "systemd" / "nightshiftd.service").read_text()
    assert "ExecStart=/opt/nightshift/.venv/bin/nightshift run\n" in text
    etc, var = tmp_path / "etc", tmp_path / "var"
    etc.mkdir()
    (etc / "config.toml").write_text((ROOT / "config.toml").read_text())
    r = nightshift("check-config", env={"CONFIGURATION_DIRECTORY": str(etc),
                                        "STATE_DIRECTORY": str(var), "NIGHTSHIFT_CONFIG": ""})
    assert r.returncode == 0, r.stderr
    assert f"# {etc / 'config.toml'}: valid" in r.stdout
    assert f'state_dir = "{var}"' in r.stdout


@pytest.mark.slow
def test_sd_notify_ready_status_watchdog_arrive_on_our_socket(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(0.5)
    cfg = write_config(tmp_path, {"job": {"command": [sys.executable, str(JOBS / "plainjob.py"),
                                                      "40", "sleepy"]}})
    d = start_daemon(cfg, env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000",
                               "WATCHDOG_PID": ""})
    got: list[str] = []
    try:
        def have_all():
            try:
                got.append(srv.recv(4096).decode())
            except TimeoutError:
                pass
            text = "\n".join(got)
            return "READY=1" in text and "WATCHDOG=1" in text and "STATUS=running" in text
        wait_for(have_all, 30, interval=0, what="READY, STATUS and WATCHDOG")
    finally:
        kill_group(d)
        srv.close()
    text = "\n".join(got)
    assert f"MAINPID={d.pid}" in text
