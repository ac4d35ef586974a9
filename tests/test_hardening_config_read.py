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
from daemon.service.configwatch import ConfigWatcher
from daemon.state import config as config_mod
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
    from daemon.service.configwatch import load_off_loop

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


@pytest.fixture
def hung_mount(tmp_path):
    """A real FUSE mount whose server answers the kernel's INIT and then nothing: every lookup
    in it blocks, as on a network mount whose server went away. Closing /dev/fuse aborts it
    (the blocked calls get ECONNABORTED)."""
    import ctypes
    import struct
    mnt = tmp_path / "hung"
    mnt.mkdir()
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as e:
        pytest.skip(f"no /dev/fuse here: {e}")
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}".encode()
    if libc.mount(b"nightshift-hung", str(mnt).encode(), b"fuse", 6, opts) != 0:  # nosuid,nodev
        os.close(fd)
        pytest.skip(f"cannot mount FUSE here (errno {ctypes.get_errno()}): needs CAP_SYS_ADMIN")
    try:
        req = os.read(fd, 1 << 20)  # FUSE_INIT
        _, _, unique = struct.unpack_from("<IIQ", req)
        body = struct.pack("<IIIIHHI", 7, 12, 0, 0, 0, 0, 4096)  # protocol 7.12, the 24-byte reply
        os.write(fd, struct.pack("<IiQ", 16 + len(body), 0, unique) + body)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        os.close(fd)


def test_a_config_on_a_hung_mount_times_out_off_the_loop(hung_mount):
    """open() of a file on a mount whose server stopped answering blocks with or without
    O_NONBLOCK: the read runs in a thread and the loop is told after the timeout."""
    from daemon.service.configwatch import load_off_loop

    path = hung_mount / "config.toml"
    errors: list[Exception] = []

    async def go() -> tuple[float, float]:
        gaps, last = [], time.monotonic()

        async def ticker() -> None:
            nonlocal last
            while True:
                await asyncio.sleep(0.02)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        tick = asyncio.get_running_loop().create_task(ticker())
        t0 = time.monotonic()
        with pytest.raises(config_mod.ConfigError, match="took more than 1 s"):
            await load_off_loop(path, timeout_s=1.0)
        took = time.monotonic() - t0
        # the watcher's own path: a file event, the read, the error said once
        w = ConfigWatcher(path, asyncio.get_running_loop(), lambda *a: None, errors.append,
                          debounce_s=0.01, current={})
        w.read_timeout_s = 1.0
        w._read_due()
        while not errors and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.05)
        tick.cancel()
        return took, max(gaps)

    took, worst_gap = asyncio.run(go())
    assert 0.9 < took < 5, took
    assert worst_gap < 0.5, f"the loop stalled {worst_gap:.2f} s"
    assert errors and "hung network mount" in str(errors[0]) and str(hung_mount) in str(errors[0])
