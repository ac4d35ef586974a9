"""Issue 29 (9): the CLI at 3 am. No daemon is said first, with the systemctl that starts the
daemon of the config in use (`--user` for one in your home); `status | head` is quiet; every
option says what it does in --help."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from daemon.cli import build_parser, main
from daemon.web import client
from tests.helpers import free_port, write_config


def _options(p: argparse.ArgumentParser, name: str = "nightshift"):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub, sp in a.choices.items():
                yield from _options(sp, f"{name} {sub}")
        elif not isinstance(a, argparse._HelpAction):
            yield name, a


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, a in _options(build_parser())
               if not a.help]
    assert not missing, f"options without help: {missing}"


def test_pause_with_no_daemon_says_no_daemon_first_not_the_token(tmp_path):
    """Was: "There is no API token at ..." -- true, but the daemon not running is the news."""
    text, code = client.control(f"http://127.0.0.1:{free_port()}", tmp_path / "token", "pause")
    assert code == 1 and text.startswith("The nightshift daemon is not running"), text
    assert "token" not in text


def test_the_start_hint_names_the_service_the_config_belongs_to(tmp_path):
    home = tmp_path / "home"
    user = client.start_hint(home / ".config" / "nightshift" / "config.toml", home=home)
    assert "`systemctl --user start nightshiftd`" in user
    assert "sudo systemctl start nightshiftd" in client.start_hint(Path("/etc/nightshift/config.toml"), home=home)
    checkout = client.start_hint(tmp_path / "ckout" / "config.toml", home=home)
    assert "systemctl" not in checkout and f"nightshift run -c {tmp_path / 'ckout' / 'config.toml'}" in checkout


def test_status_with_no_daemon_names_the_user_service_for_a_user_config(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    conf = home / ".config" / "nightshift"
    conf.mkdir(parents=True)
    cfg = write_config(conf, {"job": {"command": ["true"]}, "api": {"port": free_port()}})
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert main(["status", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("The nightshift daemon is not running") and "for " + str(cfg) in out, out
    assert "`systemctl --user start nightshiftd` (the user service)" in out, out


def test_a_reader_that_stops_early_gets_no_broken_pipe_error(tmp_path, monkeypatch, capsys):
    """Was: `nightshift status | head -3` printed a BrokenPipeError."""
    cfg = write_config(tmp_path, {"job": {"command": ["true"]}, "api": {"port": free_port()}})
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # the reader is gone before the CLI writes a byte
    out = os.fdopen(w_fd, "w")
    monkeypatch.setattr(sys, "stdout", out)
    try:
        code = main(["status", "-c", str(cfg)])
    finally:
        monkeypatch.undo()
        out.close()  # stdout now points at /dev/null: closing it is quiet
    assert code == 128 + 13
    assert capsys.readouterr().err == ""
