"""A sensor reading. A value that could not be read is None ("unknown"), never 0."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Reading:
    t: float
    edge_c: float | None = None
    tctl_c: float | None = None
    power_w: float | None = None
    busy_pct: float | None = None
    sclk_mhz: float | None = None
    resetting: bool = False  # reads failed with EPERM: a GPU reset is in progress
    suspended: bool = False  # the device is runtime-suspended (idle): unknown values, no reset
    source: str = ""
    errors: dict[str, str] = field(default_factory=dict)


def read_text(path: Path) -> str:
    with open(path) as f:
        return f.read()


def read_number(read, path: Path, scale: float, errors: dict[str, str], name: str) -> tuple[float | None, bool]:
    """(value, eperm): value None on any failure, with the reason in ``errors``."""
    try:
        raw = read(path).strip()
    except PermissionError as e:
        errors[name] = f"{path}: permission denied"
        return None, e.errno == errno.EPERM
    except OSError as e:
        errors[name] = f"{path}: {e.strerror or e}"
        return None, False
    try:
        return float(raw) / scale, False
    except ValueError:
        errors[name] = f"{path}: not a number ({raw[:20]!r})"
        return None, False
