"""Classify how the job ended (pure): success, GPU fault, killed by a signal, code error.

The classification decides what happens next (see policy/restart.py): GPU faults and signals
are the machine's fault and are retried after a cooldown; code errors are the user's and are
retried only a few times, and never when the same error strikes at the same step twice.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

_TRACEBACK = "Traceback (most recent call last):"
# The exception line closing a Python traceback: "ValueError: bad thing" (module paths allowed).
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)|[A-Za-z_][\w.]*Error\b)[^\n]*$")


@dataclass(frozen=True)
class ExitInfo:
    kind: str  # success | gpu_fault | signal | code_error | stopped
    detail: str
    signature: str | None = None  # for code errors: identifies "the same error" across attempts
    signal_name: str | None = None


def signal_name(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def traceback_tail(output: str, lines: int = 15) -> str | None:
    """The last Python traceback in the output, at most ``lines`` lines, or None."""
    i = output.rfind(_TRACEBACK)
    if i < 0:
        return None
    tb = output[i:].strip().splitlines()
    return "\n".join(tb[:1] + tb[1:][-(lines - 1):])


def classify_exit(returncode: int, output_tail: str, *, gpu_signature: str | None,
                  reset_near_exit: bool, step: int | None, asked_to_exit: bool = False,
                  done: bool = False) -> ExitInfo:
    """Decide what kind of ending this was.

    ``gpu_signature``: a ROCm/HIP dying message found in the output (resets.signatures).
    ``reset_near_exit``: the reset detector saw a reset around the time the job died.
    ``asked_to_exit``: the daemon itself asked the job to stop (graceful stop or hang).
    ``done``: the job reported it finished (a "done" record after its final checkpoint); a plain
    script that exits 0 without one counts as finished too.
    """
    sig = signal_name(returncode)
    if done:  # it wrote "done" after its final checkpoint: whatever happened after is harmless
        return ExitInfo("success", "finished" + ("" if returncode == 0 else
                                                  f" (then exited with {sig or returncode})"))
    if returncode == 0:
        if done or not asked_to_exit:
            return ExitInfo("success", "exited 0")
        return ExitInfo("stopped", "exited 0 after being asked to stop")
    if gpu_signature or reset_near_exit:
        why = gpu_signature or "a GPU reset was detected as it died"
        return ExitInfo("gpu_fault", f"GPU fault: {why} ({sig or f'exit {returncode}'})",
                        signal_name=sig)
    if sig and not (sig == "SIGABRT" and traceback_tail(output_tail)):
        if asked_to_exit:
            return ExitInfo("stopped", f"stopped by {sig} after being asked to stop", signal_name=sig)
        return ExitInfo("signal", f"killed by {sig}", signal_name=sig)
    tb = traceback_tail(output_tail)
    last = _last_error_line(tb or output_tail)
    signature = f"{last}@step={step}" if last else f"exit {returncode}@step={step}"
    detail = f"code error: {last}" if last else f"code error: exited with status {returncode}"
    return ExitInfo("code_error", detail, signature=signature, signal_name=sig)


def last_error_line(text: str) -> str | None:
    """The last exception line ("ValueError: ...") of a traceback or output, or None."""
    return _last_error_line(text)


def _last_error_line(text: str) -> str | None:
    for line in reversed(text.strip().splitlines()):
        s = line.strip()
        if s and _EXC_LINE.match(s):
            return s[:300]
    return None
