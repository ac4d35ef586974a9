"""Recovery (daemon/core/recovering.py): a reset's cooldown, the real probe (a child process, run as a
task the tick does not wait for), then a Restart decision or giving up -- as decisions, nothing
written."""

from __future__ import annotations

import asyncio
import sys

from daemon.core.decisions import Emit, Restart
from daemon.core.recovering import Recovery
from daemon.gpu.probe import run_probe
from daemon.policy.cfgtypes import ResetsConfig

OK = [sys.executable, "-c", "print('kernel ran')"]
BAD = [sys.executable, "-c", "import sys; print('HIP error'); sys.exit(3)"]


def cfg(command: list[str], retries: int = 2, probe: bool = True) -> ResetsConfig:
    return ResetsConfig(sources=[], kernel_log=None, window_s=3600.0, offload_after=3, cooldown_s=10.0,
                        probe=probe, probe_command=command, probe_timeout_s=30.0, probe_retries=retries)


async def until_probed(r: Recovery) -> None:
    assert r.probe_task is not None
    await asyncio.wait_for(asyncio.shield(r.probe_task), 30)


def test_waits_the_cooldown_then_probes_and_restarts_once_the_probe_passes() -> None:
    async def main() -> None:
        r = Recovery()
        r.begin(100.0)
        assert r.step(109.9, cfg(OK), run_probe, {}, False) == []  # cooling down: nothing yet
        assert r.probe_task is None
        assert r.step(110.0, cfg(OK), run_probe, {"X": "1"}, False) == []  # the probe starts
        await until_probed(r)
        out = r.step(111.0, cfg(OK), run_probe, {}, False)
        assert isinstance(out[0], Emit) and out[0].kind == "probe" and "passed" in out[0].message
        assert out[1] == Restart("GPU usable again: the GPU runs work again (probe passed)")
        assert r.state is None and r.probe_task is None
    asyncio.run(main())


def test_a_probe_still_running_is_not_waited_for() -> None:
    async def main() -> None:
        r = Recovery()
        r.begin(0.0)
        slow = [sys.executable, "-c", "import time; time.sleep(0.5)"]
        r.step(10.0, cfg(slow), run_probe, {}, False)
        task = r.probe_task
        assert r.step(11.0, cfg(slow), run_probe, {}, False) == [] and r.probe_task is task
        await until_probed(r)
    asyncio.run(main())


def test_failed_probes_give_up_once_and_wait_again_without_a_cloud() -> None:
    async def main() -> None:
        r = Recovery()
        r.begin(0.0)
        r.step(10.0, cfg(BAD, retries=1), run_probe, {}, False)
        await until_probed(r)
        out = r.step(11.0, cfg(BAD, retries=1), run_probe, {}, False)
        assert [d.kind for d in out if isinstance(d, Emit)] == ["probe", "gpu_unusable"]
        assert "exit 3: HIP error" in out[0].message  # type: ignore[union-attr]
        assert r.gpu_unusable
        # no cloud to take over: the recovery starts again from now (its cooldown first)
        assert r.state is not None and r.state.reset_at == 11.0 and r.state.probes_failed == 0
        assert r.step(12.0, cfg(BAD, retries=1), run_probe, {}, False) == []  # said only once
    asyncio.run(main())


def test_given_up_with_a_cloud_stays_given_up_for_the_failover() -> None:
    async def main() -> None:
        r = Recovery()
        r.begin(0.0)
        r.step(10.0, cfg(BAD, retries=1), run_probe, {}, True)
        await until_probed(r)
        r.step(11.0, cfg(BAD, retries=1), run_probe, {}, True)
        assert r.gpu_unusable and r.state is not None and r.state.probes_failed == 1
        r.begin(20.0)  # the next reset starts a fresh recovery
        assert not r.gpu_unusable and r.state.probes_failed == 0
    asyncio.run(main())


def test_without_a_probe_port_or_with_probing_off_the_cooldown_is_enough() -> None:
    r = Recovery()
    r.begin(0.0)
    assert r.step(10.0, cfg(OK), None, {}, False) == [
        Restart("GPU usable again: probing the GPU (attempt 1/2)")]
    r.begin(0.0)
    assert r.step(10.0, cfg(OK, probe=False), run_probe, {}, False) == [
        Restart("GPU usable again: cooldown over (probing disabled)")]


def test_a_recovery_resumed_after_a_daemon_restart_waits_its_cooldown_again() -> None:
    r = Recovery()
    r.resume(50.0)
    assert r.step(59.0, cfg(OK), None, {}, False) == []
    assert r.step(60.0, cfg(OK), None, {}, False) != []
