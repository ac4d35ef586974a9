"""Scripted histories driving the real Supervisor tick by tick (tests/harness.py).

Each numbered failure of issue 12 is a history here; the comment says what the old core did.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from daemon.cloud.offload.base import OffloadError, RemoteStatus, UploadResult
from daemon.gpu.resets import ResetEvent
from daemon.policy.states import State
from tests.harness import Behaviour, FakeClock, FakeDetector, FakeSensor, Harness, config


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------- 1: SIGTERM is graceful
def test_sigterm_checkpoints_at_the_last_step_then_exits_143(tmp_path):
    """Old: one SIGTERM with the API on SIGKILLed the job within 0.2 s, no final checkpoint."""
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=1000, interval=50)})
        sup = await h.open()
        await h.run(30)
        step_before = sup.current.facts.step
        sup.request_stop(signal.SIGTERM)
        sup.request_stop(signal.SIGTERM)  # systemd may repeat it: still graceful
        await h.run(10, until=lambda s: s.done.is_set())
        assert sup.done.is_set() and sup.exit_code() == 143
        proc = h.factory.procs[-1]
        assert proc.returncode == 0, "the job exited by itself after its checkpoint, not killed"
        assert sup.current.facts.checkpoint["step"] == proc.step >= step_before
        assert sup.run["state"] != "stopped"  # continued by the next start, not ended
    run(go())


def test_a_second_sigint_forces(tmp_path):
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=1000)})
        sup = await h.open()
        await h.run(5)
        sup.request_stop(signal.SIGINT)
        sup.request_stop(signal.SIGINT)
        await h.run(0.4)
        assert sup.done.is_set() and sup.exit_code() == 130
        assert h.factory.procs[-1].returncode == -signal.SIGKILL
    run(go())


# ---------------------------------------------------------------- 2: liveness
def test_a_script_that_only_prints_is_never_hung(tmp_path):
    """Old: no progress records = hung, killed every heartbeat_timeout_s + stop_timeout_s."""
    lines = [(float(t), "line", f"iter {t}: loss 1.0") for t in range(0, 120, 4)] + [(121.0, "exit", 0)]
    async def go():
        cfg = config(tmp_path, job={"command": ["script"], "heartbeat_timeout_s": 10.0})
        h = Harness(tmp_path, cfg, {"script": Behaviour(script=lines, cpu_per_s=0.0)})
        sup = await h.open()
        await h.run(130, until=lambda s: s.state == State.SUCCEEDED)
        assert sup.state == State.SUCCEEDED
        assert len(h.spawned) == 1 and not h.events("hang")
    run(go())


def test_a_quiet_script_using_cpu_is_alive_and_a_silent_idle_one_is_hung(tmp_path):
    async def go():
        cfg = config(tmp_path, job={"command": ["busy"], "heartbeat_timeout_s": 10.0})
        h = Harness(tmp_path, cfg, {"busy": Behaviour(script=[(60.0, "exit", 0)], cpu_per_s=1.0),
                                    "stuck": Behaviour(script=[(600.0, "exit", 0)], cpu_per_s=0.0)})
        sup = await h.open()
        await h.run(65, until=lambda s: s.state == State.SUCCEEDED)
        assert sup.state == State.SUCCEEDED and not h.events("hang")
    run(go())

    async def go2(tmp):
        cfg = config(tmp, job={"command": ["stuck"], "heartbeat_timeout_s": 10.0})
        h = Harness(tmp, cfg, {"stuck": Behaviour(script=[(600.0, "exit", 0)], cpu_per_s=0.0)})
        await h.open()
        await h.run(40)
        assert h.events("hang"), "a silent, idle job is hung"
        assert len(h.spawned) >= 2 and h.factory.procs[0].returncode is not None
    (tmp_path / "b").mkdir()
    run(go2(tmp_path / "b"))


def test_a_held_job_is_never_hung(tmp_path):
    """Old: a job SIGSTOP-held by the user or the schedule was on the same hang timer."""
    async def go():
        cfg = config(tmp_path, job={"command": ["script"], "heartbeat_timeout_s": 5.0})
        h = Harness(tmp_path, cfg, {"script": Behaviour(script=[(1.0, "line", "hi"), (500.0, "exit", 0)])})
        sup = await h.open()
        await h.run(2)
        res = await h.command("pause")
        assert res["ok"] and h.factory.procs[0].stopped_by_signal  # a script: SIGSTOP
        await h.run(120)
        assert not h.events("hang") and len(h.spawned) == 1
        assert sup.face.snapshot["held_by"] == "user"
        assert (await h.command("resume"))["ok"] and not h.factory.procs[0].stopped_by_signal
    run(go())


# ---------------------------------------------------------------- 3, 4: runs and resume_command
def nanogpt_like(touch_at: float | None, exit_at: float, rc: int = 0) -> Behaviour:
    script = [(1.0, "line", "iter 1: loss 3.0")]
    if touch_at is not None:
        script.append((touch_at, "touch", "out/ckpt.pt"))
    script.append((exit_at, "exit", rc))
    return Behaviour(script=script)


def test_stop_then_a_new_daemon_continues_the_run_with_resume_command(tmp_path):
    """Old: stop, then a new daemon began a new run with the plain command (ckpt 250 -> 100);
    stop said "stopped after a checkpoint" when none was taken; resume said "not paused"."""
    async def go():
        cfg = config(tmp_path, job={"command": ["train"], "resume_command": ["train-resume"],
                                    "checkpoint_glob": "out/ckpt.pt"})
        beh = {"train": nanogpt_like(3.0, 1000.0), "train-resume": nanogpt_like(None, 1000.0)}
        h = Harness(tmp_path, cfg, beh)
        sup = await h.open()
        await h.run(5)
        res = await h.command("stop")
        assert res["ok"] and sup.state == State.STOPPED
        assert "no checkpoint" in res["message"] or "no new checkpoint" in res["message"], res
        assert (await h.command("pause"))["ok"] is False
        run_id = sup.run_id
        # the daemon restarts (systemctl restart): the same run continues, with resume_command
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store)
        sup2 = await h2.open()
        await h2.run(2)
        assert sup2.run_id == run_id and sup2.state == State.RUNNING
        assert h2.spawned == [["train-resume"]]
        # stop, then `nightshift resume` in the same daemon
        await h2.command("stop")
        res = await h2.command("resume")
        assert res["ok"] and "resum" in res["message"]
        await h2.run(2)
        assert sup2.state == State.RUNNING and h2.spawned[-1] == ["train-resume"]
    run(go())


def test_new_run_flag_starts_fresh_and_ignores_the_older_runs_checkpoints(tmp_path):
    async def go():
        cfg = config(tmp_path, job={"command": ["trainer"]})
        beh = {"trainer": Behaviour(trainer=True, steps=1000, interval=5)}
        h = Harness(tmp_path, cfg, beh)
        sup = await h.open()
        await h.run(12)
        await h.command("stop")
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store)
        sup2 = await h2.open(new_run=True)
        await h2.run(1)
        assert sup2.run_id == sup.run_id + 1
        assert h2.factory.procs[0].env["NIGHTSHIFT_RESUME"] == ""
        assert h2.factory.procs[0].env["NIGHTSHIFT_CHECKPOINT_DIR"].endswith(f"run-{sup2.run_id}")
    run(go())


def test_killed_before_its_first_checkpoint_restarts_with_the_plain_command(tmp_path):
    """Old: "has run before" -> resume_command -> FileNotFoundError twice -> failed for good."""
    async def go():
        cfg = config(tmp_path, job={"command": ["train"], "resume_command": ["train-resume"],
                                    "checkpoint_glob": "out/ckpt.pt", "restart_backoff_s": 1.0})
        beh = {"train": nanogpt_like(None, 3.0, rc=-9), "train-resume": nanogpt_like(None, 1000.0)}
        h = Harness(tmp_path, cfg, beh)
        await h.open()
        await h.run(8)
        assert h.spawned[:2] == [["train"], ["train"]]
    run(go())


# ---------------------------------------------------------------- 5: controls are a sequence
def test_pause_and_checkpoint_together_leave_the_job_held_with_a_fresh_checkpoint(tmp_path):
    """Old: control.json kept only the last command: the job trained on while status said paused."""
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=1000, interval=1000)})
        sup = await h.open()
        await h.run(5)
        f1, f2 = sup.submit("pause"), sup.submit("checkpoint")
        await h.run(3)
        assert f1.result()["ok"] and f2.result()["ok"]
        proc = h.factory.procs[0]
        step = proc.step
        await h.run(10)
        assert proc.held and proc.step == step, "held, not training"
        assert sup.current.facts.checkpoint["step"] == step
        assert sup.face.snapshot["held_by"] == "user"
    run(go())


def test_a_users_resume_does_not_release_a_thermal_hold(tmp_path):
    async def go():
        clock = FakeClock()
        sensor = FakeSensor(clock)
        cfg = config(tmp_path, thermal={"trend": False, "min_cooldown_s": 5.0})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=10000)}, clock=clock, sensor=sensor)
        sup = await h.open()
        await h.run(5)
        await h.command("pause")
        sensor.edge_c = 95.0
        await h.run(5)
        assert sup.state == State.COOLING
        res = await h.command("resume")
        assert res["ok"] and "stays held" in res["message"]
        proc = h.factory.procs[0]
        step = proc.step
        await h.run(4)
        assert proc.held and proc.step == step, "a hot GPU stays paused"
        sensor.edge_c = 60.0
        await h.run(15)
        assert sup.state == State.RUNNING and not proc.held and proc.step > step
    run(go())


# ---------------------------------------------------------------- 6: history survives restarts
def test_resets_and_diagnosis_survive_a_daemon_restart(tmp_path):
    """Old: after any daemon restart "resets in the window" was 0: the offload rule started over."""
    async def go():
        clock = FakeClock()
        det = FakeDetector()
        cfg = config(tmp_path)
        beh = {"trainer": Behaviour(trainer=True, steps=10000)}
        h = Harness(tmp_path, cfg, beh, clock=clock, detector=det, sensor=FakeSensor(clock))
        sup = await h.open()
        await h.run(3)
        for i in range(2):
            det.events.append(ResetEvent(t=clock.t, sources=["kmsg"], lines=[f"reset {i}"]))
            await h.run(3)
        assert sup.reset_log.in_window(clock.t) == 2
        h2 = Harness(tmp_path, cfg, beh, clock=clock, store=h.store, detector=FakeDetector())
        sup2 = await h2.open()
        await h2.run(1)
        assert sup2.reset_log.in_window(clock.t) == 2
        assert sup2.face.snapshot["resets"]["in_window"] == 2 and sup2.face.diagnosis is not None
    run(go())


# ---------------------------------------------------------------- 7: live reload in place
class FakeCap:
    def __init__(self, log: list[str], mhz: int):
        self.log, self.mhz = log, mhz

    def apply(self):
        self.log.append(f"apply {self.mhz}")

    def restore(self):
        self.log.append(f"restore {self.mhz}")


def test_live_reload_restores_the_cap_disables_divergence_and_reschedules_polling(tmp_path, monkeypatch):
    """Old: an applied cap was orphaned, disabling divergence was ignored, a new ntfy_url was
    ignored, poll_interval_s was announced as applied and was not."""
    async def go():
        caps: list[str] = []
        resched: list[float] = []
        cfg = config(tmp_path, thermal={"clock_cap": False})
        from daemon.core import parts as build
        monkeypatch.setattr(build, "clockcap", lambda c, s: FakeCap(caps, c["thermal"]["clock_cap_mhz"])
                            if c["thermal"]["clock_cap"] else None)
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=10000)},
                    divergence=build.divergence(cfg), clockcap=FakeCap(caps, 1800),
                    reschedule_poll=resched.append)
        sup = await h.open()
        await h.run(1)
        assert sup.p.divergence is not None
        new = config(tmp_path, thermal={"clock_cap": True, "clock_cap_mhz": 1500},
                     divergence={"enabled": False}, gpu={"poll_interval_s": 5.0},
                     notify={"ntfy_url": "http://127.0.0.1:9/topic"}, api={"port": 9999})
        keys = ["thermal.clock_cap", "thermal.clock_cap_mhz", "divergence.enabled",
                "gpu.poll_interval_s", "notify.ntfy_url", "api.port"]
        sup.commands.append(("reconfigure", (new, keys, ["api.port"]), None))
        await h.run(0.4)
        assert caps == ["restore 1800"], "the old cap is lifted before the new one"
        assert sup.p.clockcap.mhz == 1500 and sup.p.divergence is None
        assert resched == [5.0] and sup.p.notifier is not None
        [applied, waits] = h.events("config")[-2:]
        assert "api.port" not in applied and "gpu.poll_interval_s" in applied
        assert "api.port" in waits
        await sup.p.notifier.stop()
    run(go())


# ---------------------------------------------------------------- 8: a failing handler
class BrokenBackend:
    def upload(self, key, ckpt, files):
        return UploadResult(1, 0.1)

    def launch(self, key, spec):
        return "call-1"

    def poll(self, call_id):
        return RemoteStatus(state="running", step=5, total_steps=100)

    def cancel(self, call_id):
        raise OffloadError("cloud said no")

    def pull(self, key, call_id, dest):
        raise OffloadError("gone", retryable=True)


def test_a_failing_port_becomes_an_event_and_the_daemon_lives_on(tmp_path):
    """Old: an OffloadError from cancel ended the daemon."""
    async def go():
        clock = FakeClock()
        sensor = FakeSensor(clock)
        cfg = config(tmp_path, offload={"backend": "local", "budget_usd": 5.0})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=10000)}, clock=clock,
                    sensor=sensor, backends={"local": BrokenBackend()})
        sup = await h.open()
        await h.run(3)
        assert (await h.command("offload"))["ok"]
        await h.run(5, until=lambda s: s.state == State.REMOTE)
        assert sup.state == State.REMOTE
        sensor.fail = True  # and a sensor that raises, too
        res = await asyncio.wait_for(_stop_soon(h), 30)
        # the cancel keeps failing: retried, never taken as done (the call may still be billing)
        assert sup.state == State.CANCELLING
        assert "may still be running and billing" in sup.face.snapshot["cloud"]["problem"]
        assert any("cloud said no" in m for m in h.events("offload")), h.events()
        assert h.events("error") and not sup.done.is_set()
        assert res is None or isinstance(res, dict)
    run(go())


async def _stop_soon(h: Harness):
    fut = h.sup.submit("stop")
    await h.run(3)
    return fut.result() if fut.done() else None


# ---------------------------------------------------------------- bounded restarts
def test_restarts_are_bounded_for_every_cause_with_a_minimum_backoff(tmp_path):
    """Issue 13, item 6: 62 restarts in 25 s after signal deaths with backoff 0."""
    async def go():
        cfg = config(tmp_path, job={"command": ["dies"], "restart_backoff_s": 0.0, "restart_limit": 5})
        h = Harness(tmp_path, cfg, {"dies": Behaviour(script=[(0.1, "exit", -9)])})
        sup = await h.open()
        await h.run(25)
        assert len(h.spawned) == 6 and sup.state == State.FAILED
        assert "job.restart_limit" in sup.current.failure
    run(go())


@pytest.mark.parametrize("state", ["stopped", "failed"])
def test_controls_say_why_they_cannot_act(tmp_path, state):
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=1000)})
        sup = await h.open()
        await h.run(2)
        if state == "stopped":
            await h.command("stop")
        else:
            sup._fail("test")
        res = await h.command("pause")
        assert not res["ok"] and "nothing to pause" in res["message"] and res["message"].count(state) == 1
    run(go())


def test_status_snapshot_is_valid_json_with_a_nan_loss(tmp_path):
    async def go():
        h = Harness(tmp_path, config(tmp_path, job={"command": ["s"]}),
                    {"s": Behaviour(script=[(0.5, "record", {"kind": "progress", "step": 3, "loss": float("nan")}),
                                            (100.0, "exit", 0)])})
        sup = await h.open()
        await h.run(2)
        json.dumps(sup.face.snapshot, allow_nan=False)
    run(go())


def test_a_user_pause_survives_a_daemon_restart_and_the_job_starts_held(tmp_path):
    async def go():
        cfg = config(tmp_path)
        beh = {"trainer": Behaviour(trainer=True, steps=1000)}
        h = Harness(tmp_path, cfg, beh)
        await h.open()
        await h.run(3)
        await h.command("pause")
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store)
        sup2 = await h2.open()
        await h2.run(3)
        assert sup2.face.snapshot["held_by"] == "user" and h2.factory.procs[0].held
    run(go())


def test_checkpoint_dir_is_per_run(tmp_path):
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=1000)})
        sup = await h.open()
        await h.run(1)
        assert Path(h.factory.procs[0].env["NIGHTSHIFT_CHECKPOINT_DIR"]) == \
            Path(sup.cfg["job"]["checkpoint_dir"]) / "run-1"
    run(go())


def test_steps_lost_are_counted_for_a_script_that_resumes_behind(tmp_path):
    """Issue 14: an unmodified script's kills lost 20-50 iterations and steps_lost stayed 0."""
    lines = [(1.0 + i * 0.5, "line", f"iter {i * 10}: loss 2.0, time 5.00ms, mfu 1.00%") for i in range(6)]
    async def go():
        cfg = config(tmp_path, job={"command": ["s"], "progress_pattern": "nanogpt", "restart_backoff_s": 1.0})
        from daemon.core import parts as build
        first = Behaviour(script=lines + [(4.2, "exit", -9)])
        h = Harness(tmp_path, cfg, {"s": first}, output_progress=build.output_progress(cfg))
        sup = await h.open()
        await h.run(4.5)
        assert sup.current.facts.step == 50
        h.factory.behaviours["s"] = Behaviour(script=[(0.5, "line", "iter 20: loss 2.0, time 5.00ms, mfu 1.00%"),
                                                      (100.0, "exit", 0)])
        await h.run(3)
        assert len(h.spawned) == 2 and sup.face.snapshot["steps_lost"] == 30
    run(go())


def test_counters_survive_a_daemon_kill9_and_a_finished_run_keeps_its_step_and_total(tmp_path):
    """Issue 25, finding 5: steps_lost was per daemon process (the job redid 70 steps, status
    said 30), the restart caused by a daemon crash was not counted, and after a daemon restart a
    finished run showed `step ? of ?`."""
    def it(n):
        return f"iter {n}: loss 2.0, time 5.00ms, mfu 1.00%"
    async def go():
        from daemon.core import parts as build
        cfg = config(tmp_path, job={"command": ["s"], "progress_pattern": "nanogpt", "restart_backoff_s": 1.0,
                                    "total_steps": 100})
        first = Behaviour(script=[(1.0 + i * 0.5, "line", it(i * 10)) for i in range(6)] + [(4.2, "exit", -9)])
        h = Harness(tmp_path, cfg, {"s": first}, output_progress=build.output_progress(cfg))
        sup = await h.open()
        await h.run(4.5)
        h.factory.behaviours["s"] = Behaviour(script=[(0.5, "line", it(20)), (1.0, "line", it(30)),
                                                      (100.0, "exit", 0)])
        await h.run(6)  # a few polls: the counters are saved once per poll
        assert sup.face.snapshot["steps_lost"] == 30 and sup.run["restarts"] == 1
        assert (sup.run["steps_lost"], sup.run["max_step"]) == (30, 30)
        # the daemon is killed -9 (no close) under its running job; a new one on the same store
        again = Behaviour(script=[(0.5, "line", it(20)), (1.0, "exit", 0)])
        h2 = Harness(tmp_path, cfg, {"s": again}, clock=h.clock, store=h.store,
                     output_progress=build.output_progress(cfg))
        sup2 = await h2.open()
        assert sup2.run["restarts"] == 2  # the daemon's death cost a restart too
        await h2.run(3)
        assert sup2.state == State.SUCCEEDED
        assert sup2.face.snapshot["steps_lost"] == 40  # 30 before the crash + 10 redone after it
        sup2.close()
        h3 = Harness(tmp_path, cfg, {"s": again}, clock=h.clock, store=h.store,
                     output_progress=build.output_progress(cfg))
        sup3 = await h3.open()
        await h3.run(0.5)
        snap = sup3.face.snapshot
        assert (snap["step"], snap["total_steps"], snap["steps_lost"], snap["restarts"]) == (20, 100, 40, 2)
    run(go())


def test_a_recovery_in_progress_survives_a_daemon_kill9_the_job_waits_for_it(tmp_path):
    """Issue 25 / 31 item 8: holds are restored at start like the user's pause. A daemon killed
    while the GPU recovered from a reset started the job at once on the next start."""
    hw = "HW Exception by GPU node-1 (Agent handle: 0x5581e2c4a0f0) reason :GPU Hang"
    async def go():
        clock = FakeClock()
        det = FakeDetector()
        cfg = config(tmp_path, job={"command": ["dies"]}, resets={"cooldown_s": 600.0})
        beh = {"dies": Behaviour(script=[(2.0, "line", hw), (2.0, "line", "Aborted"), (2.2, "exit", -6)])}
        h = Harness(tmp_path, cfg, beh, clock=clock, sensor=FakeSensor(clock), detector=det)
        sup = await h.open()
        await h.run(1.5)
        det.events.append(ResetEvent(t=clock.t, sources=["kmsg"], lines=["amdgpu: GPU reset begin!"]))
        await h.run(3, until=lambda s: s.state == State.RECOVERING)
        assert sup.state == State.RECOVERING and len(h.spawned) == 1
        # kill -9 of the daemon: no close(); the next one on the same store
        h2 = Harness(tmp_path, cfg, beh, clock=clock, store=h.store, sensor=FakeSensor(clock), detector=FakeDetector())
        sup2 = await h2.open()
        assert sup2.state == State.RECOVERING
        await h2.run(5)
        assert sup2.state == State.RECOVERING and not h2.spawned  # the cooldown (600 s) is not over
        assert any("recovering from a reset when the daemon stopped" in e["message"]
                   for e in h.store.events(None, kind="holds"))
    run(go())


class FlakyBox:
    """A rented box at its boundary: unreachable, or its job dies every time."""

    def __init__(self, mode: str):
        self.mode, self.launched, self.cancelled = mode, 0, 0

    def upload(self, key, ckpt, files):
        return UploadResult(1, 0.1)

    def launch(self, key, spec):
        self.launched += 1
        return f"{self.mode}-{self.launched}"

    def poll(self, call_id):
        if self.mode == "gone":
            raise OffloadError("connection refused", retryable=True)
        return RemoteStatus(state="preempted", step=3, error="Killed (out of memory)")

    def cancel(self, call_id):
        self.cancelled += 1

    def pull(self, key, call_id, dest):
        raise OffloadError("gone", retryable=True)


def test_an_unreachable_ssh_box_falls_back_to_the_next_backend_then_a_dying_job_to_the_local_gpu(tmp_path):
    """Issue 15: an interrupted box -> the next backend in [offload] backends, saying which and
    why; a job that dies every time is not relaunched forever; the local GPU is the last resort."""
    async def go():
        cfg = config(tmp_path, offload={"backends": ["ssh", "local"], "budget_usd": 50.0,
                                        "ssh": {"host": "gpu-box.example", "user": "me"}})
        gone, dying = FlakyBox("gone"), FlakyBox("dying")
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100000)},
                    backends={"ssh": gone, "local": dying})
        sup = await h.open()
        await h.run(3)
        assert (await h.command("offload"))["ok"]
        # 10 min of silence, the cancel confirmed, up to SETTLE_S for the call to settle, the pull tried
        await h.run(1000, dt=1.0, until=lambda s: s.run.get("remote_backend") == "local")
        assert any("ssh unreachable for 10 min (connection refused); falling back to local" in m
                   for m in h.events("offload_failed"))
        await h.run(300, dt=1.0, until=lambda s: s.state == State.RUNNING)
        assert sup.state == State.RUNNING and dying.launched == 1 + 5  # the first and 5 relaunches
        assert any("back to the local GPU" in m for m in h.events("offload_failed"))
    run(go())


def test_a_pause_while_the_trainer_is_still_starting_never_signals_it_to_death(tmp_path):
    """A hot GPU at start-up: the hold was sent with SIGUSR1 before trainer/ had installed its
    handler (torch still importing), and SIGUSR1's default action killed the job, every time."""
    async def go():
        clock = FakeClock()
        sensor = FakeSensor(clock)
        sensor.edge_c = 95.0  # hot from the start
        cfg = config(tmp_path, thermal={"trend": False, "min_cooldown_s": 5.0})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=30, slow_start=4.0)},
                    clock=clock, sensor=sensor)
        sup = await h.open()
        await h.run(2.6)  # the second poll sees it hot while it is still importing
        assert sup.state == State.COOLING
        proc = h.factory.procs[0]
        assert proc.returncode is None, "woken to death before its handler existed"
        # not announced yet = not known to speak the protocol: held like a script (SIGSTOP)
        assert proc.stopped_by_signal and getattr(proc, "wakes", 0) == 0
        await h.run(4)
        assert proc.returncode is None and proc.step == 0
        sensor.edge_c = 60.0
        await h.run(60, until=lambda s: s.state == State.SUCCEEDED)
        assert sup.state == State.SUCCEEDED and len(h.spawned) == 1
    run(go())


def test_a_corrupt_database_is_moved_aside_and_the_run_continues_from_its_checkpoints(tmp_path):
    """Issue 13, item 5: with a corrupt nightshift.db on every start no job ever ran again; a
    fresh store must not start the run over either (the run keeps its number and namespace)."""
    async def go():
        cfg = config(tmp_path)
        beh = {"trainer": Behaviour(trainer=True, steps=1000, interval=5)}
        h = Harness(tmp_path, cfg, beh)
        sup = await h.open()
        await h.run(12)
        reached = h.factory.procs[0].step
        h.store.close()
        db = Path(cfg["daemon"]["state_dir"]) / "nightshift.db"
        for p in db.parent.glob("nightshift.db*"):
            p.unlink()
        db.write_bytes(b"this is not a database" * 100)
        from daemon.state.store import Store
        store = Store(db, clock=h.clock)
        assert store.moved_aside is not None
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=store)
        sup2 = await h2.open()
        await h2.run(2)
        assert sup2.run_id == sup.run_id == 1
        resume = h2.factory.procs[0].env["NIGHTSHIFT_RESUME"]
        assert resume.endswith(f"step_{reached - reached % 5:09d}"), resume
        assert any("continuing run 1 from its files" in m for m in h2.events("run"))
    run(go())


def test_no_temperature_is_a_problem_said_once_until_one_appears(tmp_path):
    """Issue 17, item 5: a missing temperature sensor was reported nowhere (problems: [])."""
    async def go():
        clock = FakeClock()
        sensor = FakeSensor(clock)
        sensor.edge_c = None  # and so no Tctl either
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=1000)},
                    clock=clock, sensor=sensor)
        sup = await h.open()
        await h.run(10)
        assert any("thermal protection off" in p for p in sup.face.snapshot["problems"])
        assert len([m for m in h.events("sensor") if "thermal protection off" in m]) == 1
        sensor.edge_c = 60.0
        await h.run(3)
        assert not any("thermal protection off" in p for p in sup.face.snapshot["problems"])
    run(go())


# ---------------------------------------------------------------- --resume-from holds
def test_resume_from_holds_until_the_run_has_a_checkpoint_of_its_own(tmp_path):
    """`run --resume-from PATH` once applied only to the first attempt: a job killed before its
    first checkpoint, or a daemon restarted then, started the run from scratch."""
    async def go():
        cfg = config(tmp_path, job={"command": ["train"], "restart_backoff_s": 1.0})
        dies = Behaviour(script=[(1.0, "line", "loading"), (3.0, "exit", -9)])
        h = Harness(tmp_path, cfg, {"train": dies})
        sup = await h.open(resume_from="/data/old/step_500")
        await h.run(9)
        assert len(h.spawned) >= 2
        assert [p.env["NIGHTSHIFT_RESUME"] for p in h.factory.procs] == ["/data/old/step_500"] * len(h.spawned)
        # the daemon restarts before the run has a checkpoint: still the same starting point
        h2 = Harness(tmp_path, cfg, {"train": Behaviour(trainer=True, steps=1000, interval=5)},
                     clock=h.clock, store=h.store)
        sup2 = await h2.open()
        assert sup2.run_id == sup.run_id
        await h2.run(12)
        assert h2.factory.procs[0].env["NIGHTSHIFT_RESUME"] == "/data/old/step_500"
        assert sup2.current.facts.checkpoint is not None  # now the run has its own checkpoints...
        h2.factory.procs[0].exit(-9)
        await h2.run(3, until=lambda s: len(h2.spawned) == 2)
        await h2.run(1)
        own = h2.factory.procs[1].env["NIGHTSHIFT_RESUME"]  # ...and they win
        assert own.startswith(str(Path(cfg["job"]["checkpoint_dir"]) / f"run-{sup2.run_id}")), own
    run(go())


# ---------------------------------------------------------------- 8: a failing command
class FailingCap(FakeCap):
    def restore(self):  # the sysfs write fails (EIO from the driver)
        raise OSError(5, "Input/output error", "/sys/class/drm/card0/device/pp_od_clk_voltage")


def test_a_failing_command_is_an_event_and_a_problem_and_the_job_trains_on(tmp_path, monkeypatch):
    """Old: a live reload whose handler raised was one log line; the user saw nothing."""
    async def go():
        caps: list[str] = []
        from daemon.core import parts as build
        monkeypatch.setattr(build, "clockcap", lambda c, s: FakeCap(caps, c["thermal"]["clock_cap_mhz"]))
        cfg = config(tmp_path, thermal={"clock_cap": True, "clock_cap_mhz": 1800})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=10000)},
                    clockcap=FailingCap(caps, 1800))
        sup = await h.open()
        await h.run(2)
        new = config(tmp_path, thermal={"clock_cap": True, "clock_cap_mhz": 1500})
        sup.commands.append(("reconfigure", (new, ["thermal.clock_cap_mhz"], []), None))
        await h.run(1)
        [err] = [m for m in h.events("error") if "reconfigure failed" in m]
        assert "Input/output error" in err
        assert any("Input/output error" in p for p in sup.face.snapshot["problems"])
        assert not sup.done.is_set() and sup.state == State.RUNNING
        step = sup.current.facts.step
        await h.run(3)
        assert sup.current.facts.step > step
    run(go())


# ---------------------------------------------------------------- 7: keys read only at start
def test_a_reload_never_calls_in_force_a_key_read_only_at_start(tmp_path):
    """Old: resets.probe, gpu.card, api.enabled, job.log_max_bytes... were announced "now in
    force" and changed nothing; daemon.log_level now applies live."""
    import logging

    from daemon.service.configwatch import ConfigWatcher
    from daemon.state import config as config_mod

    async def go():
        path = tmp_path / "config.toml"
        base = f'[job]\ncommand = ["trainer"]\nworkdir = "{tmp_path}"\n[daemon]\nstate_dir = "state"\n'
        path.write_text(base)
        cfg = config_mod.load(path)
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=10000)})
        sup = await h.open()
        await h.run(1)
        watcher = ConfigWatcher(path, asyncio.get_running_loop(),
                                on_change=lambda new, keys, restart: sup.commands.append(
                                    ("reconfigure", (new, keys, restart), None)),
                                on_error=lambda e: None, current=config_mod.load(path))
        probe = not cfg["resets"]["probe"]
        path.write_text(base.replace('state_dir = "state"', 'state_dir = "state"\nlog_level = "debug"')
                        + f"[resets]\nprobe = {str(probe).lower()}\n[gpu]\ncard = \"card1\"\n"
                        + "[api]\nenabled = false\n")
        level = logging.getLogger().level
        try:
            watcher.reload()
            await h.run(0.6)
            applied = [m for m in h.events("config") if "in force" in m]
            waits = [m for m in h.events("config") if "restart" in m]
            assert applied and "daemon.log_level" in applied[-1]
            assert logging.getLogger().level == logging.DEBUG
            for key in ("resets.probe", "gpu.card", "api.enabled"):
                assert key not in applied[-1] and key in waits[-1], (applied, waits)
        finally:
            logging.getLogger().setLevel(level)
    run(go())


# ---------------------------------------------------------------- signals: one SIGINT is graceful
def test_a_single_sigint_is_a_graceful_stop_with_a_final_checkpoint(tmp_path):
    """Ctrl-C once = what systemctl stop does: checkpoint, let the job exit, exit 130."""
    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=1000, interval=50)})
        sup = await h.open()
        await h.run(20)
        sup.request_stop(signal.SIGINT)
        await h.run(10, until=lambda s: s.done.is_set())
        assert sup.done.is_set() and sup.exit_code() == 130
        proc = h.factory.procs[-1]
        assert proc.returncode == 0 and sup.current.facts.checkpoint["step"] == proc.step
    run(go())


# ---------------------------------------------------------------- liveness: the schedule's hold
def test_a_job_held_by_the_schedule_is_never_hung(tmp_path):
    """The night window closes on a running job: held (SIGSTOP for a script), never hung."""
    from datetime import datetime, timedelta

    async def go():
        clock = FakeClock()
        now = datetime.fromtimestamp(clock.t)
        end = now + timedelta(minutes=2)  # the window closes two minutes from now
        cfg = config(tmp_path, job={"command": ["script"], "heartbeat_timeout_s": 5.0},
                     schedule={"enabled": True, "window_start": (now - timedelta(hours=1)).strftime("%H:%M"),
                               "window_end": end.strftime("%H:%M")})
        from daemon.core import parts as build
        h = Harness(tmp_path, cfg, {"script": Behaviour(script=[(1.0, "line", "hi"), (5000.0, "exit", 0)])},
                    clock=clock, schedule=build.schedule(cfg))
        h.parts.schedule.clock = clock
        sup = await h.open()
        await h.run(200, dt=0.5)
        assert sup.face.snapshot["held_by"] == "schedule", sup.face.snapshot["held_by"]
        assert h.factory.procs[0].stopped_by_signal
        await h.run(300, dt=0.5)
        assert not h.events("hang") and len(h.spawned) == 1 and h.factory.procs[0].returncode is None
    run(go())


# ---------------------------------------------------------------- a restart forgets nothing
def test_a_restarted_daemon_keeps_checkpoint_costs_and_the_restart_history(tmp_path):
    """The interval's measured checkpoint costs and the restart budget survive a daemon restart:
    three deaths before it, the daemon's own death under a running job (a restart too, issue 25)
    and one after it exceed restart_limit = 4 in the window."""
    async def go():
        cfg = config(tmp_path, job={"restart_limit": 4, "restart_backoff_s": 1.0},
                     checkpoint={"interval": "auto"})
        beh = {"trainer": Behaviour(trainer=True, steps=1000, interval=3)}
        h = Harness(tmp_path, cfg, beh)
        sup = await h.open()
        for _ in range(3):
            await h.run(6)
            h.factory.procs[-1].exit(-9)
        await h.run(4)
        costs = list(sup.current.facts.checkpoint_costs)
        assert costs and sup.run["restarts"] == 3
        h2 = Harness(tmp_path, cfg, beh, clock=h.clock, store=h.store)
        sup2 = await h2.open()
        assert list(sup2.current.facts.checkpoint_costs)[-len(costs):] == costs
        assert sup2.run["restarts"] == 4  # the first daemon died with its job running
        await h2.run(5)
        assert sup2.state == State.RUNNING
        h2.factory.procs[-1].exit(-9)
        await h2.run(5)
        assert sup2.state == State.FAILED and "restart_limit = 4" in (sup2.run["failure"] or "")
    run(go())


# ---------------------------------------------------------------- checkpoint.keep / best_metric
def test_checkpoint_keep_and_best_metric_reach_the_job(tmp_path):
    async def go():
        cfg = config(tmp_path, checkpoint={"keep": 7, "best_metric": "val_loss"})
        h = Harness(tmp_path, cfg, {"trainer": Behaviour(trainer=True, steps=100)})
        await h.open()
        await h.run(2)
        env = h.factory.procs[0].env
        assert env["NIGHTSHIFT_CHECKPOINT_KEEP"] == "7" and env["NIGHTSHIFT_BEST_METRIC"] == "val_loss"
    run(go())
