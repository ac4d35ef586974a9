"""Probe that the GPU runs work again: a tiny kernel in a subprocess, with a timeout.

The probe runs in its own session (so its own process group): a driver call hung in the kernel
can then be killed with everything it spawned, and only that group, the one we started. It never
raises for anything the probe does (missing program, hang, crash): the result says what
happened. Cancelling run_probe kills the group too, so a probe never outlives its caller.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass

DETAIL_MAX = 300  # characters of the probe's last output line kept in the result


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    seconds: float
    detail: str


def default_probe_command(python: str = sys.executable) -> list[str]:
    return [python, "-m", "trainer.probe"]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # pgid == pid: start_new_session made it a group leader
    except (ProcessLookupError, PermissionError):
        pass  # already gone


async def run_probe(command: list[str], timeout_s: float,
                    env: dict[str, str] | None = None) -> ProbeResult:
    """Run ``command``; ok when it exits 0 within ``timeout_s`` seconds."""
    t0 = time.monotonic()
    if not command:
        return ProbeResult(False, 0.0, "empty probe command: set resets.probe_command or unset it")
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True)
    except (OSError, ValueError, TypeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return ProbeResult(False, time.monotonic() - t0,
                           f"cannot start the probe {command[0]!r}: {why}; check resets.probe_command")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), max(0.0, timeout_s))
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        return ProbeResult(False, time.monotonic() - t0,
                           f"probe hung: killed after {timeout_s:g} s (resets.probe_timeout_s)")
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        await asyncio.shield(proc.wait())
        raise
    lines = out.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1].strip()[:DETAIL_MAX] if lines else ""
    rc = proc.returncode
    if rc == 0:
        return ProbeResult(True, time.monotonic() - t0, last or "exit 0")
    how = f"killed by {_signame(-rc)}" if rc is not None and rc < 0 else f"exit {rc}"
    return ProbeResult(False, time.monotonic() - t0, f"{how}: {last}" if last else how)


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"
