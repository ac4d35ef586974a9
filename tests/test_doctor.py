"""`nightshift doctor` on fake /sys, /proc and /dev trees (issue 26): each check finds what makes
a 780M night fail and names the fix; --json says the same; exit 1 on a problem.

The machine parts are fakes of what this box lacks (a Framework-16-like sysfs with KFD topology
and fw_version, a /proc with osrelease, a /dev with kfd and kmsg, a linger dir); the torch check
runs a real interpreter process: a tiny script standing in for a ROCm python."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from daemon.commands.doctor import PROBLEM, Machine, check_torch, diagnose_machine, report
from daemon.state.config import load as load_config
from tests.fixtures.sysfs import framework16, kfd_nodes
from tests.helpers import nightshift, write_config

UID = 4242  # the daemon's user in the fake machine (not root: modes matter)


def fake_python(tmp: Path, out: dict | None = None, *, stderr: str = "", code: int = 0) -> str:
    """An interpreter that answers the torch probe as a ROCm (or CPU) torch would."""
    p = tmp / "python-fake"
    body = f"print({json.dumps(json.dumps(out))})" if out is not None else ""
    p.write_text(f"#!{sys.executable}\nimport sys\n{body}\n"
                 f"sys.stderr.write({stderr!r})\nsys.exit({code})\n")
    p.chmod(0o755)
    return str(p)


ROCM_OK = {"version": "2.13.0+rocm6.4", "hip": "6.4.43482", "cuda": None, "available": True,
           "devices": ["AMD Radeon 780M"]}


def machine(tmp: Path, *, groups=("render", "video"), cwsr="1", mes="0x00000074",
            ppfeaturemask="0xfff7bfff", od_mode=0o644, kmsg=True, restrict="0", linger=True,
            python_out: dict | None = None, free: int = 100 << 30) -> Machine:
    sys_root, proc, dev = tmp / "sys", tmp / "proc", tmp / "dev"
    cards = framework16(sys_root)
    kfd_nodes(sys_root, [None, 128, 129])
    for node, gfx in (("1", "110200"), ("2", "110003")):  # the 7700S (gfx1102), the 780M
        props = sys_root / "class/kfd/kfd/topology/nodes" / node / "properties"
        props.write_text(props.read_text() + f"gfx_target_version {gfx}\n")
    apu = cards["apu"]
    (apu / "fw_version").mkdir()
    (apu / "fw_version" / "mes_fw_version").write_text(mes + "\n")
    (apu / "pp_od_clk_voltage").write_text("OD_SCLK:\n0: 800Mhz\n1: 2700Mhz\nOD_RANGE:\n"
                                           "SCLK: 800Mhz 2700Mhz\n")
    (apu / "pp_od_clk_voltage").chmod(od_mode)
    (apu / "power_dpm_force_performance_level").write_text("auto\n")
    (apu / "power_dpm_force_performance_level").chmod(od_mode)
    params = sys_root / "module/amdgpu/parameters"
    params.mkdir(parents=True)
    (params / "cwsr_enable").write_text(cwsr + "\n")
    (params / "ppfeaturemask").write_text(ppfeaturemask + "\n")
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/kernel/osrelease").write_text("6.14.0-29-generic\n")
    (proc / "sys/kernel/dmesg_restrict").write_text(restrict + "\n")
    dev.mkdir()
    import grp
    render_gid = os.getgid()
    (dev / "kfd").write_text("")
    os.chown(dev / "kfd", 0, render_gid)
    (dev / "kfd").chmod(0o660)
    if kmsg:
        (dev / "kmsg").write_text("")
        (dev / "kmsg").chmod(0o644)
    linger_dir = tmp / "linger"
    linger_dir.mkdir()
    if linger:
        (linger_dir / "alice").touch()
    names = {g.gr_gid: g.gr_name for g in grp.getgrall()}
    gids = frozenset(gid for gid, n in names.items() if n in groups)
    if "render" in groups:
        gids |= {render_gid}
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    m = Machine(sys_root=sys_root, proc_root=proc, dev_root=dev, linger_dir=linger_dir,
                home=home, user="alice", uid=UID, gids=gids, env={},
                python=fake_python(tmp, python_out or ROCM_OK), disk_free=lambda p: free)
    m.group_names = lambda: set(groups)  # type: ignore[method-assign] - the fake user's groups
    return m


def cfg(tmp: Path, **sections) -> dict:
    base = {"job": {"command": ["python", "train.py"], "workdir": str(tmp),
                    "checkpoint_dir": "ckpt"}, "resets": {"sources": ["auto"]}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return load_config(write_config(tmp, base))


def by_name(checks) -> dict:
    return {c.name: c for c in checks}


def test_a_ready_780m_machine_has_no_problem(tmp_path):
    m = machine(tmp_path, cwsr="0", od_mode=0o664)
    checks = by_name(diagnose_machine(cfg(tmp_path), m))
    assert [c.status for c in checks.values()].count(PROBLEM) == 0, \
        "\n".join(c.line() for c in checks.values())
    assert "gfx1103" in checks["gpu"].detail and "card2" in checks["gpu"].detail
    assert "AMD Radeon 780M" in checks["torch"].detail
    assert "6.14.0-29-generic" in checks["kernel"].detail and "0x00000074" in checks["kernel"].detail
    text, code = report(list(checks.values()))
    assert code == 0 and text.endswith("no problems found")


def test_each_problem_is_found_with_its_fix(tmp_path):
    m = machine(tmp_path, groups=("users",), kmsg=False, restrict="1", linger=False,
                od_mode=0o644, free=1 << 20)
    ck = tmp_path / "ckpt" / "run-1" / "step_000000100"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"\0" * (1 << 20))
    c = by_name(diagnose_machine(cfg(tmp_path, thermal={"governor": "clock"}), m))
    assert c["groups"].status == PROBLEM and "usermod -aG render,video alice" in c["groups"].fix
    assert c["kfd"].status == PROBLEM and "kfd" in c["kfd"].detail
    assert c["cwsr"].status == PROBLEM and "amdgpu.cwsr_enable=0" in c["cwsr"].fix
    assert c["clock"].status == PROBLEM and "70-nightshift-amdgpu.rules" in c["clock"].fix
    assert c["resets"].status == PROBLEM and "systemd-journal" in c["resets"].fix
    assert c["linger"].status == "warn" and c["linger"].fix == "loginctl enable-linger alice"
    assert c["disk"].status == PROBLEM and "3 checkpoints" in c["disk"].detail


def test_no_overdrive_names_the_ppfeaturemask_to_set(tmp_path):
    m = machine(tmp_path, ppfeaturemask="0xfff7bfff")
    (m.sys_root / "class/drm/card2/device/pp_od_clk_voltage").unlink()
    c = by_name(diagnose_machine(cfg(tmp_path), m))["clock"]
    assert c.status == "warn"  # the governor is off: only a warning
    assert "amdgpu.ppfeaturemask=0xfff7ffff" in c.detail


@pytest.mark.parametrize("out,want", [
    ({"version": "2.13.0+cpu", "hip": None, "cuda": None, "available": False, "devices": []},
     "CPU-only build"),
    ({"version": "2.13.0+cu128", "hip": None, "cuda": "12.8", "available": False, "devices": []},
     "CUDA build"),
])
def test_a_torch_that_cannot_use_an_amd_gpu_gets_the_rocm_install(tmp_path, out, want):
    m = machine(tmp_path, python_out=out)
    c = check_torch(m, cfg(tmp_path))
    assert c.status == PROBLEM and want in c.detail and "whl/rocm" in c.fix


def test_gfx1103_without_the_override_gets_hsa_override_gfx_version(tmp_path):
    blind = dict(ROCM_OK, available=False, devices=[])
    m = machine(tmp_path, python_out=blind)
    c = check_torch(m, cfg(tmp_path))
    assert c.status == PROBLEM and c.fix == '[job] env HSA_OVERRIDE_GFX_VERSION = "11.0.0"'
    # with the override set the probe runs with it: the fake sees it in its environment
    seen = tmp_path / "seen-env"
    probe = tmp_path / "python-env"
    probe.write_text(f"#!{sys.executable}\nimport json, os\nopen({str(seen)!r}, 'w').write("
                     "os.environ.get('HSA_OVERRIDE_GFX_VERSION', ''))\n"
                     f"print(json.dumps({ROCM_OK!r}))\n")
    probe.chmod(0o755)
    m.python = str(probe)
    c = check_torch(m, cfg(tmp_path, job={"env": {"HSA_OVERRIDE_GFX_VERSION": "11.0.0"}}))
    assert c.status == "ok" and seen.read_text() == "11.0.0"


def test_torch_missing_is_a_problem(tmp_path):
    m = machine(tmp_path)
    m.python = fake_python(tmp_path, stderr="ModuleNotFoundError: No module named 'torch'\n", code=1)
    c = check_torch(m, cfg(tmp_path))
    assert c.status == PROBLEM and "has no torch" in c.detail


def test_offload_credentials_are_checked_on_disk_only(tmp_path):
    m = machine(tmp_path)
    key = m.home / ".ssh" / "id_ed25519"
    key.parent.mkdir(parents=True)
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o644)
    conf = cfg(tmp_path, offload={"backends": ["ssh", "modal"], "budget_usd": 5.0,
                                  "ssh": {"host": "203.0.113.7", "port": 14022,
                                          "key_file": str(key),
                                          "known_hosts": str(key.parent / "known_hosts"),
                                          "price_usd_per_h": 0.5}})
    c = {x.name: x for x in diagnose_machine(conf, m)}
    assert c["ssh"].status == PROBLEM and c["ssh"].fix == f"chmod 600 {key}"
    assert c["modal"].status == PROBLEM and "modal token new" in c["modal"].fix
    key.chmod(0o600)
    c = {x.name: x for x in diagnose_machine(conf, m)}
    assert c["ssh"].status == PROBLEM and "ssh-keyscan -p 14022 203.0.113.7" in c["ssh"].fix
    (m.home / ".ssh" / "known_hosts").write_text(
        "[203.0.113.7]:14022 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9"
        "okWi0dh2l9GKJl\n")
    (m.home / ".modal.toml").write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n')
    c = {x.name: x for x in diagnose_machine(conf, m)}
    assert c["ssh"].status == "ok" and c["modal"].status == "ok"


@pytest.mark.slow
def test_the_cli_prints_one_line_per_check_and_json(tmp_path):
    """The real command on this machine (no 780M here): one line per check, a summary line,
    exit 1 with a problem; --json carries the same checks."""
    conf = write_config(tmp_path, {"job": {"command": ["python", "train.py"]}})
    r = nightshift("doctor", "-c", str(conf), timeout=180)
    lines = r.stdout.strip().splitlines()
    assert r.returncode in (0, 1), r.stderr
    names = [line[8:18].strip() for line in lines[:-1]]
    assert names[:4] == ["groups", "kfd", "gpu", "torch"], r.stdout
    j = nightshift("doctor", "-c", str(conf), "--json", timeout=180)
    doc = json.loads(j.stdout)
    assert [c["name"] for c in doc["checks"]] == names
    assert doc["ok"] == (j.returncode == 0)
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in doc["checks"])
    assert stat.S_ISREG(os.stat(conf).st_mode)
