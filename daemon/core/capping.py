"""The clock cap ([thermal] clock_cap_mhz) carried out: ``CapClock`` puts it on and ``UncapClock``
lifts it, through the port (daemon/gpu/clockcap.py; none when the card has no cap to set or the
governor owns the clock). A cap that cannot be put on is the ``clock_cap`` problem and a warning,
said once, not at every hot poll; both come back as decisions for the Supervisor, which owns
what status shows."""

from __future__ import annotations

from typing import Protocol, assert_never

from daemon.core.decisions import CapClock, Decision, Emit, Problem, UncapClock

CARRIES = (CapClock, UncapClock)  # what it carries out itself, handed over by Supervisor._apply


class CapPort(Protocol):
    """daemon/gpu/clockcap.py ``ClockCap``: why not, or None once done."""
    def apply(self) -> str | None: ...
    def restore(self) -> str | None: ...


def carry(d: CapClock | UncapClock, cap: CapPort | None, shown: str | None) -> list[Decision]:
    """``shown``: the ``clock_cap`` problem status shows now."""
    if cap is None:
        return []
    if isinstance(d, CapClock):
        msg = cap.apply()
        return [Problem("clock_cap", msg), Emit("clock_cap", msg, "warn")] if msg and shown != msg else []
    if isinstance(d, UncapClock):
        cap.restore()
        return []
    assert_never(d)
