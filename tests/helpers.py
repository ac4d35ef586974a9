"""Shared test helpers: write a real config file, run the real daemon, read its real store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def start_daemon(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "-c", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


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
