"""Issue 31, item 7: reading the config never blocks the daemon's loop.

A config that is a FIFO blocked open() until someone wrote to it: the live reload did that on
the event loop, so /status timed out and SIGTERM was ignored. Now a non-regular file is refused
with a message (at start and on reload), and the reload reads in a thread with a timeout."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest

from daemon import cli
from daemon import config as config_mod
from daemon.configwatch import ConfigWatcher
from tests.helpers import write_config


def _unblock(fifo) -> None:
    """Open the FIFO for writing once, so a reader stuck in open() (the old code) gets EOF."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def test_a_fifo_config_is_refused_at_once_by_check_config_and_run(tmp_path, capsys):
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    try:
        for cmd in ("check-config", "run"):
            result: list[int] = []
            t = threading.Thread(target=lambda r=result, c=cmd: r.append(cli.main([c, "-c", str(fifo)])),
                                 daemon=True)
            t.start()
            t.join(30)
            assert result == [78], (cmd, result, "blocked" if t.is_alive() else "")
            err = capsys.readouterr().err
            assert "FIFO" in err and "regular file" in err and str(fifo) in err
        (tmp_path / "dir.toml").mkdir()
        with pytest.raises(config_mod.ConfigError, match="directory"):
            config_mod.load(tmp_path / "dir.toml")
    finally:
        _unblock(fifo)


def test_a_config_replaced_by_a_fifo_is_a_rejected_edit_and_the_loop_keeps_running(tmp_path):
    path = write_config(tmp_path, {"job": {"command": ["true"]}})
    errors: list[Exception] = []
    gaps: list[float] = []
    done = threading.Event()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        w = ConfigWatcher(path, loop, lambda *a: None, errors.append, debounce_s=0.05,
                          current=config_mod.load(path))
        w.start()
        try:
            path.unlink()
            os.mkfifo(path)  # the watcher sees the new file and reads it
            last = time.monotonic()
            deadline = last + 20
            while time.monotonic() < deadline and not errors:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
        finally:
            w.stop()
            done.set()

    t = threading.Thread(target=lambda: asyncio.run(go()), daemon=True)
    t.start()
    try:
        t.join(30)
        assert not t.is_alive(), "the event loop is stuck (opening the FIFO blocked it)"
        assert errors and "FIFO" in str(errors[0]), errors
        assert max(gaps) < 2.0, f"the loop stalled for {max(gaps):.1f} s"
    finally:
        _unblock(path)


def test_a_read_that_cannot_complete_at_once_does_not_wait(tmp_path):
    """A file another process holds a write lease on: open() would wait up to
    /proc/sys/fs/lease-break-time (45 s) for the holder. The config is opened without waiting:
    an error at once, the previous config stays in force."""
    from daemon.configwatch import load_off_loop

    path = write_config(tmp_path, {"job": {"command": ["true"]}})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, signal, sys\n"
        "signal.signal(signal.SIGIO, signal.SIG_IGN)\n"  # ignore the lease-break request
        f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
        "fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if holder.stdout.readline().strip() != "held":
            pytest.skip("cannot take a file lease here")

        async def go() -> float:
            t0 = time.monotonic()
            with pytest.raises(config_mod.ConfigError, match="cannot read the file"):
                await load_off_loop(path, timeout_s=5)
            return time.monotonic() - t0

        assert asyncio.run(go()) < 3
    finally:
        holder.stdin.close()
        holder.wait(10)
