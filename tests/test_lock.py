"""The locks (requirements/*.txt) and pyproject.toml say the same thing, and this venv is the lock.

A fresh machine installs the locked versions (README's commands, `.ci/run`); pyproject.toml keeps
the ranges for `pip install nightshiftd`. A dependency added to or narrowed in pyproject.toml
without `tools/relock`, or a lock edited by hand outside the ranges, fails here.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Which pyproject lists each lock covers (tools/relock's `compile` lines).
LOCKS = {"run.txt": ("amd", "cloud"), "test.txt": ("test",)}


def read_lock(name: str) -> dict[str, tuple[Version, list[str]]]:
    """{canonical name: (version, hashes)} of one lock file."""
    text = (ROOT / "requirements" / name).read_text()
    pins: dict[str, tuple[Version, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s\\;]+)", block)
        if m:
            pins[canonicalize_name(m[1])] = (Version(m[2]), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def wanted(extras: tuple[str, ...]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for e in extras:
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][e]]
    return reqs


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pyproject_dependency_is_locked_inside_its_range(lock):
    pins = read_lock(lock)
    bad = []
    for req in wanted(LOCKS[lock]):
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            bad.append(f"{req.name}: in pyproject.toml, missing from requirements/{lock}")
        elif not req.specifier.contains(pin[0], prereleases=True):
            bad.append(f"{req.name}: locked {pin[0]}, outside pyproject.toml's {req.specifier}")
    assert not bad, "pyproject.toml and the lock disagree (run tools/relock):\n" + "\n".join(bad)


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_locked_file_carries_its_hashes_and_torch_is_left_out(lock):
    pins = read_lock(lock)
    assert len(pins) > 20, f"requirements/{lock} looks empty: {sorted(pins)}"
    assert all(h for _, h in pins.values()), [n for n, (_, h) in pins.items() if not h]
    # torch is installed on its own (its build differs per machine) but its dependencies are locked.
    assert "torch" not in pins and {"sympy", "networkx", "filelock"} <= set(pins)


def test_this_venv_holds_exactly_the_locked_test_versions():
    """What `pip freeze` shows equals the lock (torch and this package aside): the README's
    test command installed from the lock, not from the ranges."""
    differ = []
    for name, (version, _) in read_lock("test.txt").items():
        try:
            have = Version(md.version(name))
        except md.PackageNotFoundError:
            differ.append(f"{name}: locked {version}, not installed")
            continue
        if have != version:
            differ.append(f"{name}: locked {version}, installed {have}")
    assert not differ, ("this venv was not installed from requirements/test.txt (use the README's "
                        "test command):\n" + "\n".join(differ))
