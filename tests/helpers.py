"""Shared test helpers: write a real config file, run the real daemon, read its real store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fastapi import FastAPI

ROOT = Path(__file__).resolve().parent.parent
JOBS = Path(__file__).resolve().parent / "jobs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def write_config(tmp: Path, sections: dict[str, dict[str, Any]], name: str = "config.toml") -> Path:
    """A config for tests: quiet hardware (no sensor), fast timings, api off unless asked."""
    base: dict[str, dict[str, Any]] = {
        "job": {"workdir": str(tmp), "checkpoint_dir": "ckpt", "restart_backoff_s": 0.2,
                "stop_timeout_s": 10.0},
        "daemon": {"state_dir": str(tmp / "state"), "exit_when_done": True},
        "gpu": {"sensor": "none", "poll_interval_s": 0.5},
        "resets": {"sources": [], "cooldown_s": 0.5, "probe": False},
        "api": {"enabled": False},
        "divergence": {"enabled": False},
    }
    for sec, body in sections.items():
        base.setdefault(sec, {}).update(body)
    text = []
    for sec, body in base.items():
        text.append(f"[{sec}]")
        text += [f"{k} = {toml_value(v)}" for k, v in body.items()]
        text.append("")
    path = tmp / name
    path.write_text("\n".join(text))
    return path


def nightshift(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, **kw)


class _Drained:
    """The daemon's output, read by a thread as it comes. A test that reads the pipe only at the
    end froze the daemon once its log passed the pipe's 64 KiB (the next log write blocked: a
    poll stalled, an event never stored). ``read()`` is a pipe's read: all of it, at its end."""

    def __init__(self, pipe: Any) -> None:
        self._pipe, self._chunks = pipe, list[str]()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for chunk in iter(lambda: self._pipe.read(4096), ""):
            self._chunks.append(chunk)
        self._pipe.close()

    def read(self, timeout: float = 60.0) -> str:
        self._thread.join(timeout)  # the end of the output: every holder of the pipe is gone
        return "".join(self._chunks)

    def so_far(self) -> str:
        return "".join(self._chunks)

    def close(self) -> None:
        pass  # the thread closes the pipe at its end


class Daemon(subprocess.Popen):
    """A real ``nightshift run``, its output drained as it comes (``.stdout.read()``,
    ``.communicate()`` as with a pipe)."""

    def __init__(self, config: Path, env: dict[str, str] | None) -> None:
        super().__init__([sys.executable, "-m", "daemon.cli", "run", "-c", str(config)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, **(env or {})}, start_new_session=True)
        self.stdout = _Drained(self.stdout)  # type: ignore[assignment]

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[str, None]:
        self.wait(timeout)  # TimeoutExpired as communicate raises it
        return self.stdout.read(), None  # type: ignore[union-attr]


def start_daemon(config: Path, env: dict[str, str] | None = None) -> Daemon:
    return Daemon(config, env)


def wait_for(pred, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def api_answers(port: int) -> bool:
    """The daemon's HTTP API answers /healthz: it listens, and its token file exists (the daemon
    writes the token before it serves). Offline-capable CLI commands (queue, runs, events, logs)
    succeed before that, so they cannot tell that the daemon is up."""
    import http.client  # not urllib: it would follow an http_proxy from the environment
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/healthz")
        return c.getresponse().status == 200
    except OSError:
        return False
    finally:
        c.close()


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


# Headless Chromium for the dashboard's tests: one set of flags, one way to read a page.
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                    reason="chromium not installed")  # CI installs it: never skipped there


def chromium_flags(tmp_path: Path, width: int = 390, height: int = 1400) -> list[str]:
    """Headless Chromium at a phone's width (390 px by default), its profile in ``tmp_path``,
    8 s of virtual time for the page's fetches."""
    return ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},{height}",
            "--virtual-time-budget=8000"]


def chromium_dom(url: str, tmp_path: Path, **size: int) -> str:
    """The page's DOM once its scripts have run (``--dump-dom``)."""
    return subprocess.run([CHROMIUM or "chromium", *chromium_flags(tmp_path, **size), "--dump-dom", url],
                          capture_output=True, text=True, timeout=120).stdout


def chromium_screenshot(url: str, shot: Path, tmp_path: Path, **size: int) -> None:
    subprocess.run([CHROMIUM or "chromium", *chromium_flags(tmp_path, **size), f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)


async def served_dom(app: FastAPI, tmp_path: Path) -> str:
    """``app`` (an ASGI app from daemon.web.api.create_app) served by a real uvicorn on a free
    loopback port while Chromium reads its dashboard."""
    import asyncio

    from daemon.web import api
    port = free_port()
    server, task = await api.serve(app, "127.0.0.1", port)
    try:
        return await asyncio.to_thread(chromium_dom, f"http://127.0.0.1:{port}/", tmp_path)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
