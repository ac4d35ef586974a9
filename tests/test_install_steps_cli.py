"""Issue 13: "the README's install steps work as written". The user-service steps leave you in
the checkout (`cd ~/nightshift`), next to the repo's own config.toml, which the CLI looks up
before ~/.config/nightshift/config.toml. From there `nightshift pause` read ./state/token (no
daemon, no token) and failed; it must find the running service's daemon and token instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import JOBS, ROOT, free_port, kill_group, start_daemon, wait_for, write_config


def _cli(*args: str, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.mark.slow
def test_cli_from_the_checkout_finds_the_user_services_daemon_and_token(tmp_path):
    home = tmp_path / "home"
    checkout = home / "nightshift"
    checkout.mkdir(parents=True)
    shutil.copy(ROOT / "config.toml", checkout / "config.toml")  # `git clone` + `cd ~/nightshift`
    conf = home / ".config" / "nightshift"
    conf.mkdir(parents=True)
    # the service's config: ~/.config/nightshift/config.toml, its state next to it (the default)
    cfg = write_config(conf, {"job": {"command": [sys.executable, str(JOBS / "plainjob.py"),
                                                  "100000", "sleepy"], "workdir": str(home)},
                              "daemon": {"state_dir": "state"},
                              "api": {"enabled": True, "port": free_port()}})
    env = {k: v for k, v in os.environ.items() if k not in ("NIGHTSHIFT_CONFIG", "XDG_CONFIG_HOME",
                                                             "CONFIGURATION_DIRECTORY")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    d = start_daemon(cfg, env={"HOME": str(home)})
    try:
        wait_for(lambda: (conf / "state" / "api.json").exists() and (conf / "state" / "token").exists(),
                 60, what="the service's daemon serving")
        wait_for(lambda: json.loads(_cli("status", "--json", cwd=checkout, env=env).stdout or "{}")
                 .get("state") == "running", 60, what="the job running, seen from the checkout")
        r = _cli("pause", cwd=checkout, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert str(conf / "config.toml") in r.stderr  # it says which config it used
        st = json.loads(_cli("status", "--json", cwd=checkout, env=env).stdout)
        assert st["display_state"] in ("PAUSED", "PAUSING") or st["state"] == "paused", st
        # -c still means exactly that file: the checkout's own, whose state dir has no daemon
        r = _cli("pause", "-c", str(checkout / "config.toml"), cwd=checkout, env=env)
        # no daemon there: that is said first (issue 29), not a missing token
        assert r.returncode == 1 and "not running" in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        kill_group(d)
