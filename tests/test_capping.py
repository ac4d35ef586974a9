"""daemon/core/capping.py: the clock cap carried out through the real ClockCap on a fake amdgpu
device directory (tests/test_clockcap.py's tree); a cap that cannot be put on is said once."""

from __future__ import annotations

from pathlib import Path

from daemon.core import capping
from daemon.core.decisions import CapClock, Emit, Problem, UncapClock
from daemon.gpu.clockcap import LEVEL, ClockCap
from tests.test_clockcap import dev  # noqa: F401 (the fake device tree, a fixture)


def test_the_cap_goes_on_and_comes_off_and_says_nothing(dev: Path):  # noqa: F811
    d = dev
    cap = ClockCap(d, 1800)
    assert capping.carry(CapClock(), cap, None) == [] and cap.applied
    assert (d / LEVEL).read_text().strip() == "manual"
    assert capping.carry(UncapClock(), cap, None) == [] and not cap.applied
    assert (d / LEVEL).read_text().strip() == "auto"


def test_a_cap_that_cannot_go_on_is_a_problem_and_a_warning_said_once(dev: Path):  # noqa: F811
    cap = ClockCap(dev, 3000)  # above the card's OD_RANGE (800-2700): refused, nothing written
    said = capping.carry(CapClock(), cap, None)
    assert [type(d) for d in said] == [Problem, Emit] and said[0] == Problem("clock_cap", said[1].message)  # type: ignore[union-attr]
    assert said[1] == Emit("clock_cap", said[0].text or "", "warn")  # type: ignore[union-attr]
    assert "outside this GPU's range 800-2700 MHz" in said[1].message  # type: ignore[union-attr]
    assert capping.carry(CapClock(), cap, said[0].text) == []  # type: ignore[union-attr]  # shown already: not again
    assert (dev / LEVEL).read_text() == "auto\n"


def test_no_cap_port_no_decision():
    assert capping.carry(CapClock(), None, None) == [] and capping.carry(UncapClock(), None, None) == []
