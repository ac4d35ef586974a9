"""Sections of the validated config as types, for the code that reads them by key.

``daemon/config.py`` (``SCHEMA``) says every key's type, default and range and validates the
file; these TypedDicts say the same to the type checker, so a pure policy that reads
``cfg["pause_at_c"]`` is checked against the key and its type instead of ``dict[str, Any]``.
tests/test_cfgtypes.py keeps them in step with SCHEMA. At run time they are the plain dicts
config.py builds.
"""

from __future__ import annotations

from typing import TypedDict


class ThermalConfig(TypedDict):
    pause_at_c: float
    resume_at_c: float
    tctl_pause_at_c: float
    min_cooldown_s: float
    max_cooldown_s: float
    trend: bool
    clock_cap: bool
    clock_cap_mhz: int
    governor: str  # "off" | "clock"
    setpoint_margin_c: float


class ResetsConfig(TypedDict):
    sources: list[str]
    kernel_log: str | None
    window_s: float
    offload_after: int
    cooldown_s: float
    probe: bool
    probe_command: list[str] | None
    probe_timeout_s: float
    probe_retries: int
