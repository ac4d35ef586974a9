"""Probe that the GPU runs work again: a tiny kernel in a subprocess, with a timeout.

The probe runs in its own process group so a hung driver call can be killed (only that group,
the one we started). It never raises: the result says what happened.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    seconds: float
    detail: str


def default_probe_command(python: str = sys.executable) -> list[str]:
    return [python, "-m", "trainer.probe"]


async def run_probe(command: list[str], timeout_s: float, env: dict[str, str] | None = None) -> ProbeResult:
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True)
    except OSError as e:
        return ProbeResult(False, 0.0, f"cannot start the probe {command[0]!r}: {e.strerror}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        await proc.wait()
        return ProbeResult(False, time.monotonic() - t0, f"probe timed out after {timeout_s:g} s")
    text = out.decode("utf-8", "replace").strip().splitlines()
    last = text[-1] if text else ""
    ok = proc.returncode == 0
    return ProbeResult(ok, time.monotonic() - t0, last[:300] or f"exit {proc.returncode}")
