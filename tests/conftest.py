"""Markers and the fast subset's promise.

Every torture test is also slow. `-m "not slow"` is the fast subset for development: it must
start no real daemon, sshd, browser or torch job (each costs seconds of start-up on 2 cores).
A test outside `slow` that tries is failed at once with the fix, so the promise keeps holding as
tests are added (small helper processes -- a shell, a fake job without torch -- are fine).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

# The suite's torch jobs (the reference job, its 2 threads fixed for bit-exact resumes) are paced
# (--max-steps-per-s) and wait between steps; libgomp's worker threads spin through each wait by
# default. On 2 cores shared by three workers' jobs and daemons that spinning was most of the
# suite's CPU: the 240-step job of the thermal tests took 9.8 s of CPU spinning, 4.5 s passive, in
# the same wall time. Passive waiting changes no result (same threads, same kernels). Set here, so
# every process a test starts inherits it (the daemon hands its environment to the job).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HEAVY_EXES = {"sshd": "a real sshd", "chromium": "a browser", "chromium-browser": "a browser",
              "chrome": "a browser", "nightshift": "the real daemon/CLI"}
HEAVY_MODULES = {"daemon.cli": "the real daemon/CLI", "daemon": "the real daemon/CLI",
                 "trainer.reference": "a torch training job"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("torture") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
    # Longest first: xdist hands tests out in this order as workers free up (loadgroup), so the
    # minute-long torture tests start at once on their own workers and the many short tests fill
    # the gaps after; in file order they started late and the run waited on them at its end.
    # The sort is stable: a file's tests keep their order (xdist_group files rely on it).
    items.sort(key=_weight)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Each test is its own unit of work, given to the next free worker in the order above,
    except a file with a module-scoped fixture (test_phone_daemon.py's one daemon, test_api.py's
    server): its tests read what earlier ones did to it, so the whole file is one unit, in order.
    Our own scheduler, not `--dist loadgroup`: xdist 3.8 marks a group by rewriting
    ``item._nodeid``, which pytest 9.2 no longer reads (every test ran alone, a shared daemon
    once per worker, its later tests failing)."""
    from xdist.scheduler import LoadScopeScheduling

    shared = _files_with_module_fixtures(Path(__file__).parent)

    class OneFilePerSharedFixture(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if Path(path).name in shared else nodeid

    return OneFilePerSharedFixture(config, log)


def _files_with_module_fixtures(tests: Path) -> set[str]:
    return {f.name for f in tests.glob("test_*.py")
            if re.search(r"@pytest\.fixture\(scope=[\"'](module|package|session)[\"']", f.read_text())}


def _weight(item: pytest.Item) -> int:
    if item.get_closest_marker("torture") is not None:
        return 0
    return 1 if item.get_closest_marker("slow") is not None else 2


def heavy_process(args: object) -> str | None:
    """What expensive thing `args` (a Popen argv) starts, or None."""
    argv = [str(a) for a in args] if isinstance(args, list | tuple) else str(args).split()
    for i, a in enumerate(argv):
        if os.path.basename(a) in HEAVY_EXES:
            return HEAVY_EXES[os.path.basename(a)]
        if a == "-m" and i + 1 < len(argv) and argv[i + 1] in HEAVY_MODULES:
            return HEAVY_MODULES[argv[i + 1]]
        if a.endswith(".py") and os.path.isfile(a):
            try:
                if "import torch" in Path(a).read_text(errors="replace"):
                    return f"a torch job ({os.path.basename(a)})"
            except OSError:
                pass
    return None


def _guard(nodeid: str):  # type: ignore[no-untyped-def]
    real_init = subprocess.Popen.__init__

    def guarded(self, args, *a, **kw):  # type: ignore[no-untyped-def]
        what = heavy_process(args)
        if what:
            pytest.fail(f"{nodeid} starts {what} but is not marked slow: add @pytest.mark.slow "
                        "(the fast subset, -m 'not slow', must start none)", pytrace=False)
        real_init(self, args, *a, **kw)

    return real_init, guarded


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):  # type: ignore[no-untyped-def]
    # Setup, not a fixture: a module- or session-scoped fixture that starts a daemon is set up
    # inside the first test's setup phase, and must be caught too.
    yield from _guarded_phase(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):  # type: ignore[no-untyped-def]
    yield from _guarded_phase(item)


def _guarded_phase(item: pytest.Item):  # type: ignore[no-untyped-def]
    if item.get_closest_marker("slow") is not None:
        yield
        return
    real_init, guarded = _guard(item.nodeid)
    subprocess.Popen.__init__ = guarded  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = real_init  # type: ignore[method-assign]
