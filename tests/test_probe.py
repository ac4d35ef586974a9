"""The GPU probe: real child processes (ok, failing, hung with a grandchild, missing, crashing,
cancelled) and trainer.probe itself, on the simulated GPU's marker and on the real CPU device."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from daemon.gpu.probe import ProbeResult, default_probe_command, run_probe

REPO = Path(__file__).resolve().parents[1]


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def probe(command: list[str], timeout_s: float = 20.0, env: dict | None = None) -> ProbeResult:
    return asyncio.run(run_probe(command, timeout_s, env))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_probe_that_exits_zero_is_ok_with_its_last_line():
    r = probe(py("print('warming up'); print('kernel ran')"))
    assert r.ok and r.detail == "kernel ran" and 0 < r.seconds < 20


def test_a_failing_probe_reports_exit_code_and_message():
    r = probe(py("import sys; print('HIP error: invalid device'); sys.exit(3)"))
    assert not r.ok and r.detail == "exit 3: HIP error: invalid device"


def test_a_probe_killed_by_a_signal_names_it():
    r = probe(py("import os, signal; os.kill(os.getpid(), signal.SIGABRT)"))
    assert not r.ok and r.detail.startswith("killed by SIGABRT")


def test_a_hung_probe_is_killed_with_its_whole_group_at_the_timeout(tmp_path):
    """The probe and a grandchild it spawned both hang; both die, and we return promptly."""
    pidfile = tmp_path / "pids"
    code = f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        print("calling into the driver...", flush=True)
        time.sleep(60)
    """
    t0 = time.monotonic()
    r = probe(py(code), timeout_s=1.5)
    elapsed = time.monotonic() - t0
    assert not r.ok and "hung" in r.detail and "1.5 s" in r.detail
    assert elapsed < 10
    me, grandchild = map(int, pidfile.read_text().split())
    assert wait_gone(me) and wait_gone(grandchild)


def test_the_probe_runs_in_its_own_process_group(tmp_path):
    out = tmp_path / "pg"
    r = probe(py(f"import os; open({str(out)!r}, 'w').write(f'{{os.getpid()}} {{os.getpgrp()}}')"))
    assert r.ok
    pid, pgid = map(int, out.read_text().split())
    assert pid == pgid and pgid != os.getpgrp()


def test_a_missing_program_is_a_failed_probe_not_an_exception(tmp_path):
    r = probe([str(tmp_path / "no-such-probe")])
    assert not r.ok and "cannot start the probe" in r.detail and "resets.probe_command" in r.detail


def test_an_empty_command_is_a_failed_probe():
    r = probe([])
    assert not r.ok and "empty probe command" in r.detail


def test_cancelling_the_probe_kills_its_group(tmp_path):
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"

    async def scenario() -> None:
        task = asyncio.create_task(run_probe(py(code), 60.0))
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text():
                break
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 10  # killed, not waited out (it sleeps 60 s)

    asyncio.run(scenario())
    assert wait_gone(int(pidfile.read_text()))


def test_default_probe_command_is_trainer_probe():
    assert default_probe_command("/usr/bin/python3") == ["/usr/bin/python3", "-m", "trainer.probe"]
    assert default_probe_command()[0] == sys.executable


def sim_env(root: Path) -> dict[str, str]:
    return {**os.environ, "NIGHTSHIFT_SIM_GPU": str(root), "PYTHONPATH": str(REPO)}


def test_trainer_probe_on_the_simulated_gpu_fails_while_resetting_then_passes(tmp_path):
    (tmp_path / ".resetting").touch()
    r = probe(default_probe_command(), env=sim_env(tmp_path))
    assert not r.ok and "still resetting" in r.detail
    (tmp_path / ".resetting").unlink()
    t0 = time.monotonic()
    r = probe(default_probe_command(), env=sim_env(tmp_path))
    assert r.ok and r.detail == "simulated GPU: ok"
    assert time.monotonic() - t0 < 5  # no torch import under the simulation


def test_trainer_probe_runs_a_real_kernel_on_cpu_and_refuses_a_missing_gpu():
    env = {k: v for k, v in os.environ.items() if k != "NIGHTSHIFT_SIM_GPU"} | {"PYTHONPATH": str(REPO)}
    cpu = probe(default_probe_command() + ["--device", "cpu"], timeout_s=120, env=env)
    assert cpu.ok and cpu.detail == "probe on cpu: ok"
    cuda = probe(default_probe_command() + ["--device", "cuda"], timeout_s=120,
                 env=env | {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""})
    assert not cuda.ok and "no GPU visible" in cuda.detail


def test_probe_timeout_measures_wall_time_of_the_child():
    r = probe(py("import time; time.sleep(0.3)"), timeout_s=10)
    assert r.ok and r.seconds >= 0.3


def test_sigterm_ignoring_probe_still_dies_at_the_timeout(tmp_path):
    pidfile = tmp_path / "pid"
    code = f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """
    r = probe(py(code), timeout_s=1.0)
    assert not r.ok and wait_gone(int(pidfile.read_text()))


def test_recovery_against_the_simulated_gpu_probes_until_it_comes_back(tmp_path):
    """The pure recovery policy driving real probes of the simulated GPU (stepped by hand, one
    simulated second per policy second): the reset lasts 60 s, the cooldown is 20 s, so the
    first probe fails, the second (after a 20 s backoff) fails, the third passes: restart."""
    from daemon.gpu.simgpu import SimulatedGPU
    from daemon.policy.recovery import RecoveryState, decide_recovery

    sim = SimulatedGPU(tmp_path, {"reset_duration_s": 60.0}, load_fn=lambda: 0.0)
    sim.inject_reset()
    cfg = {"cooldown_s": 20.0, "probe": True, "probe_retries": 3, "probe_timeout_s": 20.0}
    state, result, now, log = RecoveryState(reset_at=0.0), None, 0.0, []
    while now <= 300:
        act = decide_recovery(state, now, cfg, result)
        if act.action in ("restart", "give_up"):
            break
        if act.action == "probe":
            state.last_probe_at = now
            r = probe(default_probe_command(), env=sim_env(tmp_path))
            log.append((now, r.ok))
            result = r.ok
            if not r.ok:
                state.probes_failed += 1
        sim.step(5.0)
        now += 5.0
    assert act.action == "restart"
    assert log == [(20.0, False), (40.0, False), (80.0, True)]
