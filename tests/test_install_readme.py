"""Issue 29 (10): the README's install steps, run as far as this machine allows. The user
service keeps its state, token and checkpoints under $XDG_STATE_HOME (was ~/.config); the udev
rule that lets the governor write the clock files ships and names the files it writes."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from daemon.gpu.clockcap import LEVEL, OD
from daemon.state import config as config_mod
from tests.helpers import ROOT

RULE = ROOT / "udev" / "70-nightshift-gpu.rules"


def _user_block() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("User service (")
    block = text[text.index("```\n", start) + 4:]
    return block[:block.index("```")]


def _config_steps(block: str) -> str:
    """The lines that write the service's config (mkdir, S=, the sed and its continuation)."""
    lines, out, cont = block.splitlines(), [], False
    for line in lines:
        if cont or line.startswith(("mkdir -p ~/.config", "S=", "sed ")):
            out.append(line)
            cont = line.rstrip().endswith("\\")
    return "\n".join(out)


@pytest.mark.parametrize("xdg", [None, "xdg-state"])
def test_the_readme_user_steps_put_state_and_checkpoints_under_xdg_state_home(tmp_path, xdg):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    if xdg:
        env["XDG_STATE_HOME"] = str(tmp_path / xdg)
    script = _config_steps(_user_block())
    assert "sed " in script and "S=" in script, script
    r = subprocess.run(["bash", "-euc", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg = config_mod.load(home / ".config" / "nightshift" / "config.toml")
    want = (tmp_path / xdg if xdg else home / ".local" / "state") / "nightshift"
    assert cfg["daemon"]["state_dir"] == str(want)
    assert cfg["api"]["token_file"].startswith(str(want))
    assert cfg["job"]["checkpoint_dir"].startswith(str(want)), cfg["job"]["checkpoint_dir"]
    assert ".config" not in cfg["job"]["checkpoint_dir"]


def test_the_readme_user_steps_have_groups_journal_linger_and_venv():
    block = _user_block()
    for needed in ("apt-get install python3-venv", "usermod -aG render,video $USER",
                   "usermod -aG systemd-journal $USER", "loginctl enable-linger $USER",
                   "journalctl --user -u nightshiftd"):
        assert needed in block, needed


def test_the_user_unit_lets_systemd_create_the_xdg_state_dir():
    unit = (ROOT / "systemd" / "user" / "nightshiftd.service").read_text()
    assert "\nStateDirectory=nightshift\n" in unit and "\nStateDirectoryMode=0700\n" in unit


def test_the_udev_rule_ships_and_gives_group_write_to_the_files_the_governor_writes():
    rule = [line for line in RULE.read_text().splitlines() if line and not line.startswith("#")]
    assert len(rule) == 1
    keys = re.findall(r'([A-Z]+(?:\{[A-Z_]+\})?)(==|\+=|=)"', rule[0])
    assert {k for k, _ in keys} <= {"ACTION", "SUBSYSTEM", "KERNEL", "ENV{DEVTYPE}", "DRIVERS", "RUN"}
    assert 'DRIVERS=="amdgpu"' in rule[0] and 'ENV{DEVTYPE}=="drm_minor"' in rule[0]
    run = rule[0].split('RUN+="', 1)[1]
    for f in (OD, LEVEL):
        assert f"chgrp render {OD} {LEVEL}" in run and f in run
    assert "chmod g+w" in run and "0666" not in run
    readme = (ROOT / "README.md").read_text()
    assert "sudo cp udev/70-nightshift-gpu.rules /etc/udev/rules.d/" in readme


def _udevadm_verify_exists() -> bool:
    exe = shutil.which("udevadm")
    if exe is None:
        return False
    r = subprocess.run([exe, "verify", "--help"], capture_output=True, text=True)
    return r.returncode == 0


@pytest.mark.skipif(not _udevadm_verify_exists(), reason="udevadm verify needs systemd 253+")
def test_the_udev_rule_passes_udevadm_verify():
    r = subprocess.run(["udevadm", "verify", str(RULE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
