"""Issue 27: cloud failover under real faults. The real Supervisor (tests/harness.py: fake time,
the real store, runner, policies), the real Offloader and the real ModalBackend built on the
real modal SDK objects; only Modal's network boundary is faked (tests/modal_faults.py), raising
the SDK's own exception classes as its gRPC layer does. Run together with ``-k cloud_fault``."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import modal.exception as mx
import pytest

from daemon.cloud.offload.modal_backend import ModalBackend, volume_name
from daemon.cloud.offloader import JOURNAL, run_key
from daemon.policy.states import State
from tests.harness import Behaviour, Harness, config, write_checkpoint
from tests.modal_faults import Cloud, Fault
from trainer.format import find_latest_valid, list_checkpoints

BEH = {"trainer": Behaviour(trainer=True, steps=100_000, interval=10)}


def run(coro):
    return asyncio.run(coro)


def modal_cfg(tmp_path: Path, **offload):
    return config(tmp_path, offload={"backend": "modal", "budget_usd": 50.0, "remote_steps_per_s": 10.0,
                                     **offload})


def harness(tmp_path: Path, monkeypatch, cfg=None, parts=None, **cloud_kw) -> tuple[Harness, Cloud]:
    cfg = cfg or modal_cfg(tmp_path)
    h = Harness(tmp_path, cfg, BEH, **(parts or {}))
    cloud = Cloud(tmp_path / "modal", h.clock.monotonic, **cloud_kw)  # the cloud's time is real time
    cloud.install(monkeypatch)
    return h, cloud


async def to_cloud(h: Harness) -> None:
    """Train locally to step 12, then `nightshift offload`: the job is on Modal."""
    await h.open()
    await h.run(12)
    assert (await h.command("offload"))["ok"]
    await h.run(60, until=lambda s: s.state == State.REMOTE)
    assert h.sup.state == State.REMOTE, h.events()


def reopen(h: Harness, cfg=None) -> Harness:
    """The daemon killed (-9) and started again: a new Supervisor, Offloader and ModalBackend on
    the same store, files and clock; nothing survives in memory."""
    return Harness(h.tmp, cfg or h.cfg, BEH, clock=h.clock, store=h.store)


def local_steps(h: Harness) -> list[int]:
    return [int(p.name.rsplit("_", 1)[1]) for p in list_checkpoints(h.sup.checkpoint_dir)]


def test_cloud_fault_stop_waits_for_the_cancel_to_settle_and_the_final_checkpoint_comes_home(tmp_path, monkeypatch):
    """Old: the pull ran ~2 s after cancel() and brought home the checkpoint before the one the
    container was saving (Modal needs up to ~20 s: InputCancellation, save, commit)."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch, settle_s=20.0)
        await to_cloud(h)
        await h.run(33)  # ~330 cloud steps: the volume's newest is a multiple of 50
        [call] = cloud.calls.values()
        assert max(call.written) % 50 == 0
        ans = await h.command("stop")
        assert ans["ok"] and h.sup.state == State.STOPPED, h.events()
        final = call.written[-1]
        assert final % 50 != 0 and final > max(s for s in call.written if s % 50 == 0)
        assert max(local_steps(h)) == final  # the save on the way out came home
        assert call.cancels == 1 and "cancelling" in " ".join(h.events("state"))
        pulled_at = next(e["t"] for e in h.store.events(None, kind="pulled")) - (h.clock.t - h.clock.mono)
        assert pulled_at >= call.cancelled_at + 19  # not before the container committed
        assert h.sup.run["remote_call_id"] is None and h.sup.run["backend"] == "local"
        assert not list(Path(h.sup.checkpoint_dir).glob(".tmp-*"))
    run(go())


@pytest.mark.parametrize("n", [1, 50])
def test_cloud_fault_rate_limited_polls_never_fail_a_healthy_run(tmp_path, monkeypatch, n):
    """Old: one ResourceExhaustedError (the SDK does not retry RESOURCE_EXHAUSTED) was taken for
    the job's failure: the call was cancelled and the run FAILED."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        await to_cloud(h)
        cloud.faults.append(Fault("get", lambda: mx.ResourceExhaustedError("rate limit exceeded"), times=n))
        await h.run(30, dt=1.0)
        if n > 1:
            assert h.sup.state == State.REMOTE and "rate-limiting" in (h.sup.face.snapshot["cloud"]["problem"] or "")
        await h.run(2000, dt=1.0, until=lambda s: cloud.count("get", "ResourceExhaustedError") == n
                    and s.current.remote.problem is None)
        assert cloud.count("get", "ResourceExhaustedError") == n
        await h.run(10, dt=1.0)
        [call] = cloud.calls.values()
        assert h.sup.state == State.REMOTE and call.cancels == 0 and not h.events("failed")
        assert h.sup.face.snapshot["cloud"]["problem"] is None
        assert h.sup.current.facts.step == call.step_at(h.clock.mono) or h.sup.current.facts.step >= max(call.written)
    run(go())


def test_cloud_fault_90_s_unavailable_then_back_the_run_goes_on(tmp_path, monkeypatch):
    """Old: 20 poll errors (40-60 s) failed the run and cancelled the A100."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        await to_cloud(h)
        t0 = h.clock.mono
        cloud.faults.append(Fault("*", lambda: mx.ServiceError("UNAVAILABLE"), start=t0, end=t0 + 90))
        await h.run(60, dt=1.0)
        assert h.sup.state == State.REMOTE
        assert "cannot reach the remote run" in h.sup.face.snapshot["cloud"]["problem"]
        await h.run(90, dt=1.0)
        [call] = cloud.calls.values()
        assert h.sup.state == State.REMOTE and h.sup.face.snapshot["cloud"]["problem"] is None
        assert call.cancels == 0 and not h.events("failed") and len(cloud.calls) == 1
        assert cloud.count("get", "ServiceError") >= 5
    run(go())


def test_cloud_fault_11_min_unavailable_cancel_retried_until_confirmed_then_fallback(tmp_path, monkeypatch):
    """Old: the run FAILED after a minute, the one cancel failed in the same outage and was never
    retried ("the call was asked to stop"), nothing was pulled, the A100 billed on."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        await to_cloud(h)
        t0 = h.clock.mono
        cloud.faults.append(Fault("*", lambda: mx.ServiceError("UNAVAILABLE"), start=t0, end=t0 + 660))
        await h.run(610, dt=1.0, until=lambda s: s.state == State.CANCELLING)
        assert h.sup.state == State.CANCELLING and 600 <= h.clock.mono - t0 <= 640
        await h.run(20, dt=1.0)
        problem = h.sup.face.snapshot["cloud"]["problem"]
        assert problem.startswith("cloud call fc-0001 may still be running and billing: cancel not confirmed, retrying")
        assert any("may still be billing" in m for m in h.events("offload"))
        await h.run(200, dt=1.0, until=lambda s: s.state == State.RUNNING)
        [call] = cloud.calls.values()
        assert h.sup.state == State.RUNNING, h.events()  # [offload] has only modal: the local GPU
        assert call.cancels == 1 and call.cancelled_at >= t0 + 660  # confirmed once the API was back
        assert cloud.count("cancel", "ServiceError") >= 2
        assert any("modal unreachable for 10 min" in m and "back to the local GPU" in m
                   for m in h.events("offload_failed"))
        assert max(local_steps(h)) == call.written[-1]  # the cloud's steps came home first
        # the budget counted the whole time the call could bill: until it settled
        assert h.sup.run["cloud_seconds"] >= call.cancelled_at + cloud.settle_s - call.started - 2
        assert not h.events("failed")
    run(go())


def test_cloud_fault_restart_during_cancelling_and_during_the_pull_after_a_stop_stays_stopped(tmp_path, monkeypatch):
    """Old: what follows the pull lived in memory; re-attached after a restart the run became
    "pulling -> succeeded: finished at step 76" of 100,000, and a settled cancel (TERMINATED:
    an empty RemoteError) read as failed."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        await to_cloud(h)
        await h.run(10)
        h.sup.submit("stop")
        await h.run(2, until=lambda s: s.state == State.CANCELLING)
        assert h.sup.state == State.CANCELLING
        h2 = reopen(h)  # killed while cancelling
        sup2 = await h2.open()
        assert sup2.state == State.CANCELLING
        # the pull fails for a while (Modal unavailable): killed again, this time while pulling
        t = h.clock.mono
        cloud.faults.append(Fault("listdir", lambda: mx.ServiceError("UNAVAILABLE"), start=t + 15, end=t + 60))
        await h2.run(40, until=lambda s: s.state == State.PULLING)
        assert sup2.state == State.PULLING, h2.events()
        h3 = reopen(h2)
        sup3 = await h3.open()
        await h3.run(120, until=lambda s: s.state not in (State.PULLING, State.CANCELLING))
        assert sup3.state == State.STOPPED, h3.events()
        assert not any("-> succeeded" in m or "-> failed" in m for m in h3.events("state")), h3.events("state")
        [call] = cloud.calls.values()
        assert max(local_steps(h3)) == call.written[-1] and len(cloud.calls) == 1
        ans = await h3.command("resume")  # resumable: from the checkpoint the cloud made
        assert ans["ok"]
        await h3.run(5, until=lambda s: s.state == State.RUNNING)
        assert h3.factory.procs[-1].env["NIGHTSHIFT_RESUME"].endswith(f"step_{call.written[-1]:09d}")
    run(go())


def test_cloud_fault_an_attempt_at_its_time_limit_is_cut_through_cancelling_and_goes_on_there(tmp_path, monkeypatch):
    """Old: nothing cut a cloud attempt before Modal's own per-attempt timeout ([offload]
    timeout_s), which kills the container without a final save; the call then failed with
    FunctionTimeoutError and so did the run, the cloud's checkpoints never brought home. Now the
    daemon cuts it first, through the same cancelling as a stop (the final checkpoint committed
    and pulled), and a fresh attempt goes on from it on the same backend."""
    async def go():
        cfg = modal_cfg(tmp_path, timeout_s=600.0, retries=0)
        h, cloud = harness(tmp_path, monkeypatch, cfg=cfg, timeout_s=600.0)
        await to_cloud(h)
        [first] = cloud.calls.values()
        await h.run(600, dt=1.0, until=lambda s: s.state == State.CANCELLING)
        assert h.sup.state == State.CANCELLING, h.events()
        assert 440 <= h.clock.mono - first.started <= 460  # 600 s less a quarter of it
        assert any("time limit" in m and "timeout_s = 600 s" in m for m in h.events("offload"))
        h2 = reopen(h)  # killed while cancelling: the record says a fresh attempt follows
        sup2 = await h2.open()
        assert sup2.state == State.CANCELLING
        await h2.run(120, dt=1.0, until=lambda s: s.state == State.REMOTE)
        assert sup2.state == State.REMOTE, h2.events()
        assert first.cancels == 1 and len(cloud.calls) == 2  # one fresh attempt, never two
        stop = first.step_at(first.cancelled_at)
        assert first.written[-1] == stop and max(local_steps(h2)) == stop  # its last steps came home
        pulled_at = next(e["t"] for e in h2.store.events(None, kind="pulled")) - (h2.clock.t - h2.clock.mono)
        assert pulled_at >= first.cancelled_at + cloud.settle_s - 1  # after the container committed
        second = cloud.calls["fc-0002"]
        assert second.start_step == stop and sup2.run["remote_call_id"] == "fc-0002"
        # well past where Modal would have killed the first attempt: the run goes on
        await h2.run(first.started + 700 - h2.clock.mono, dt=1.0)
        assert sup2.state == State.REMOTE and not h2.events("failed"), h2.events()
        assert not any("-> failed" in m for m in h2.events("state"))
        assert sup2.run["cloud_seconds"] >= first.cancelled_at + cloud.settle_s - first.started - 2
    run(go())


def test_cloud_fault_history_keeps_where_a_run_ran_after_the_pull_and_a_restart(tmp_path, monkeypatch):
    """Issue 28: after the pull `remote_backend` is cleared, and `nightshift runs` said `local`
    for a run that ran on Modal (its cost beside it). Now the run book keeps where it ran."""
    from daemon.commands import offline
    from daemon.web.queuecli import format_runs

    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        await to_cloud(h)
        assert [r["backend"] for r in h.sup.face.runs()] == ["local+modal"]
        await h.run(10)
        assert (await h.command("stop"))["ok"] and h.sup.state == State.STOPPED, h.events()
        assert h.sup.run["remote_backend"] is None  # the call is over ...
        [row] = h.sup.face.runs()
        assert row["backend"] == "local+modal" and row["cost_usd"] > 0  # ... where it ran is not
        assert f"ran on local+modal (${row['cost_usd']:.2f})" in format_runs(h.sup.face.runs())
        h2 = reopen(h)  # a restart
        await h2.open()
        assert [r["backend"] for r in h2.sup.face.runs()] == ["local+modal"]
        assert json.loads(format_runs(h2.sup.face.runs(), json_out=True))["runs"][0]["backend"] == "local+modal"
        await h2.run(5, until=lambda s: s.state == State.RUNNING)  # the start goes on here
        assert h2.sup.state == State.RUNNING, h2.events()
        assert [r["backend"] for r in h2.sup.face.runs()] == ["local+modal"]
        assert [r["backend"] for r in offline.runs(h2.cfg)] == ["local+modal"]  # the daemon down
    run(go())


def test_cloud_fault_a_preemption_modal_retries_in_the_same_call_never_starts_a_second_gpu(tmp_path, monkeypatch):
    """Old: on Modal's preemption the body commits the summary "final"/"preempted"; Modal runs
    the same input again in the same call, but until the new container's first commit the poll
    read that summary as this call's end: the daemon launched a second call (a second A100 on the
    same volume) and forgot the first without cancelling it."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        await to_cloud(h)
        [call] = cloud.calls.values()
        call.preempt(h.clock.mono + 5)
        await h.run(60, dt=1.0)
        assert call.preemptions == 1
        assert cloud.count("spawn") == 1 and list(cloud.calls) == ["fc-0001"], h.events()
        assert h.sup.state == State.REMOTE and h.sup.run["remote_call_id"] == "fc-0001"
        await h.run(30, dt=1.0)
        assert (h.sup.current.facts.step or 0) > call.written[0] and call.step_at(h.clock.mono) > call.start_step
        assert cloud.count("spawn") == 1 and not h.events("failed")
    run(go())


def test_cloud_fault_cancel_of_a_cloud_run_brings_its_final_checkpoint_home_then_the_queue_moves_on(tmp_path, monkeypatch):
    """Issue 28: `nightshift cancel` of a run on the cloud was refused ("`nightshift stop`
    brings it home first", then a second command). Now it goes through cancelling like a stop
    (the call settles, its final checkpoint comes home), the run ends cancelled, the queue moves
    on; a restart while cancelling keeps the user's word."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        await to_cloud(h)
        fut = h.sup.submit("queue_add", {"name": "next", "command": ["trainer", "--lr", "0.1"]})
        await h.run(0.4)
        assert fut.result()["ok"]
        await h.run(10)
        h.sup.submit("cancel", {})
        await h.run(2, until=lambda s: s.state == State.CANCELLING)
        assert h.sup.state == State.CANCELLING, h.events()
        h2 = reopen(h)  # killed while cancelling: the cancel is the record's, not memory's
        sup2 = await h2.open()
        await h2.run(120, dt=0.5, until=lambda s: s.run_id != 1)
        [call] = cloud.calls.values()
        assert call.cancels >= 1 and len(cloud.calls) == 1
        first = h2.store.get_run(1)
        assert first["state"] == "cancelled", h2.events("state")
        assert max(int(p.name.rsplit("_", 1)[1]) for p in (tmp_path / "checkpoints").rglob("step_*")
                   if p.is_dir()) >= call.written[-1]  # the final checkpoint came home first
        assert any("cancelled on the cloud" in m for m in h2.events("cancelled"))
        assert sup2.run_id == 2 and sup2.job["command"] == ["trainer", "--lr", "0.1"]  # the queue moved on
    run(go())


def test_cloud_fault_a_climb_back_on_the_cloud_with_action_next_cuts_the_call_and_the_queue_moves_on(tmp_path, monkeypatch):
    """A climb back seen in a cloud run's progress was "said only": with [divergence] action
    next (or stop) the A100 trained on, billing, and the queue waited. Now the call is cut
    through cancelling (its final checkpoint home), the run fails as it would here, the queue
    moves on."""
    def loss(step: int) -> float:  # the local job's curve (tests/harness.py) down to step 1250, then back up
        return 2.0 / max(1, step) if step <= 1250 else 2.0 / 1250 * (1 + (step - 1250) / 20)

    async def go():
        from daemon.core import parts as build
        cfg = modal_cfg(tmp_path)
        cfg["divergence"]["action"] = "next"
        h, cloud = harness(tmp_path, monkeypatch, cfg=cfg, parts={"divergence": build.divergence(cfg)}, loss=loss)
        await to_cloud(h)
        fut = h.sup.submit("queue_add", {"name": "next", "command": ["trainer", "--lr", "0.1"]})
        await h.run(0.4)
        assert fut.result()["ok"]
        await h.run(400, dt=1.0, until=lambda s: s.state == State.CANCELLING)
        assert h.sup.state == State.CANCELLING, h.events()
        await h.run(2)
        [call] = cloud.calls.values()
        assert 1250 < call.step_at(call.cancelled_at) < 1600, call  # caught early in the climb
        assert any("climbing back" in m and "action: next" in m for m in h.events("divergence"))
        await h.run(120, dt=0.5, until=lambda s: s.run_id != 1)
        first = h.store.get_run(1)
        assert first["state"] == "failed" and "loss climbed back" in first["failure"], h.events("state")
        assert call.cancels == 1 and len(cloud.calls) == 1
        assert h.sup.run_id == 2 and h.sup.job["command"] == ["trainer", "--lr", "0.1"]
    run(go())


def test_cloud_fault_sigterm_while_moving_to_the_cloud_launches_nothing(tmp_path, monkeypatch):
    """Old: SIGTERM during the move launched the remote job anyway, then the daemon exited: the
    trainer ran unsupervised, billing past the budget until the next start."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        await h.open()
        await h.run(12)
        h.sup.submit("offload")
        await h.run(0.2)
        assert h.sup.state == State.OFFLOADING
        h.sup.request_stop(signal.SIGTERM)  # while the local job takes its final checkpoint
        await h.run(30, until=lambda s: s.done.is_set())
        assert h.sup.done.is_set() and not cloud.calls and cloud.count("spawn") == 0
        assert any("nothing launched" in m for m in h.events("offload"))
        h2 = reopen(h)
        sup2 = await h2.open()  # the next start: local, from the newest checkpoint
        await h2.run(3)
        assert sup2.state == State.RUNNING and not cloud.calls
    run(go())


def test_cloud_fault_sigterm_during_the_upload_launches_nothing(tmp_path, monkeypatch):
    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        await h.open()
        await h.run(12)
        real_gate = cloud._gate

        def gate(op):
            if op == "upload":
                h.sup.request_stop(signal.SIGTERM)  # arrives while the upload is in flight
            real_gate(op)
        cloud._gate = gate
        h.sup.submit("offload")
        await h.run(30, until=lambda s: s.done.is_set())
        assert h.sup.done.is_set() and cloud.count("upload") == 1
        assert not cloud.calls and cloud.count("spawn") == 0
        assert any("nothing was launched" in m for m in h.events("offload"))
    run(go())


class Crash(BaseException):
    """The daemon dies (kill -9) at this instant."""


def test_cloud_fault_a_crash_right_after_spawn_never_starts_a_second_gpu(tmp_path, monkeypatch):
    """Old: the call id lived only in memory until the launch returned; the next start launched a
    second A100 on the same volume."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        cloud.exit_error = Crash()  # spawn done; the daemon dies on the way out of app.run
        await h.open()
        await h.run(12)
        h.sup.submit("offload")
        with pytest.raises(Crash):
            await h.run(60)
        assert len(cloud.calls) == 1 and h.store.get_run(1)["remote_call_id"] is None
        cloud.exit_error = None
        h2 = reopen(h)
        sup2 = await h2.open()
        await h2.run(30, until=lambda s: s.state == State.REMOTE)
        assert sup2.state == State.REMOTE and len(cloud.calls) == 1, h2.events()
        assert sup2.run["remote_call_id"] == "fc-0001" and cloud.count("spawn") == 1
        assert any("found call fc-0001 of this run still running" in m for m in h2.events("offload"))
    run(go())


def test_cloud_fault_an_error_leaving_app_run_after_spawn_keeps_the_call(tmp_path, monkeypatch):
    async def go():
        h, cloud = harness(tmp_path, monkeypatch)
        cloud.exit_error = mx.ConnectionError("stream reset while stopping the app's log stream")
        await to_cloud(h)
        assert h.sup.run["remote_call_id"] == "fc-0001" and len(cloud.calls) == 1
        journal = [json.loads(x) for x in (h.sup.run_dir / JOURNAL).read_text().splitlines()]
        assert journal[0] == {"backend": "modal", "key": run_key("job", 1), "call_id": "fc-0001"}
    run(go())


def test_cloud_fault_stop_before_the_first_cloud_checkpoint_reuses_the_equal_local_step(tmp_path, monkeypatch):
    """Old: the pull renamed onto the existing local step_N (ENOTEMPTY): the run FAILED and a
    .tmp- directory stayed behind."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch, rate=0.0)  # the container never got to train
        await to_cloud(h)
        up = max(local_steps(h))
        ans = await h.command("stop")
        assert ans["ok"] and h.sup.state == State.STOPPED, h.events()
        assert max(local_steps(h)) == up and not list(Path(h.sup.checkpoint_dir).glob(".tmp-*"))
        assert find_latest_valid(h.sup.checkpoint_dir).step == up
    run(go())


def test_cloud_fault_pull_skips_a_corrupt_newest_remote_step_and_leaves_no_temp(tmp_path, monkeypatch):
    cloud = Cloud(tmp_path / "modal", lambda: 0.0)
    cloud.install(monkeypatch)
    vol = cloud.vol(volume_name("k"))
    for step in (100, 150):
        write_checkpoint(vol / "ckpt" / f"step_{step:09d}", step)
    bad = vol / "ckpt/step_000000150/weights.bin"
    raw = bytearray(bad.read_bytes())
    raw[3] ^= 0xFF  # same size, wrong bytes
    bad.write_bytes(bytes(raw))
    dest = tmp_path / "home"
    got = ModalBackend(modal_cfg(tmp_path)["offload"]).pull("k", "fc", dest)
    assert got == dest / "step_000000100" and find_latest_valid(dest).step == 100
    assert sorted(p.name for p in dest.iterdir()) == ["step_000000100"]  # no .tmp- left


def test_cloud_fault_bytes_read_per_poll_at_step_50000_stay_under_16_kib(tmp_path, monkeypatch):
    """Old: every 2 s poll read the whole remote progress.jsonl: 8.7 MiB by morning."""
    cloud = Cloud(tmp_path / "modal", lambda: 5000.0, rate=10.0, interval=1000)
    cloud.install(monkeypatch)
    key = "k"
    vol = cloud.vol(volume_name(key))
    (vol / "run").mkdir(parents=True)
    with open(vol / "run/progress.jsonl", "w") as f:  # what the body also keeps, for the record
        for s in range(1, 50_001):
            f.write(json.dumps({"t": s, "kind": "progress", "step": s, "total_steps": 100_000,
                                "loss": 1.0 / s, "steps_per_s": 10.0}) + "\n")
    write_checkpoint(vol / "ckpt/step_000000000", 0)
    b = ModalBackend(modal_cfg(tmp_path)["offload"])
    with cloud_call(cloud, vol):
        b.remember("fc-0001", key)
        polls = [b.poll("fc-0001") for _ in range(20)]
    assert polls[-1].state == "running" and polls[-1].step == 50_000
    assert b.bytes_read / 20 < 16 * 1024 and sum(cloud.bytes_read.values()) == b.bytes_read
    assert "run/progress.jsonl" not in cloud.bytes_read


class cloud_call:  # noqa: N801 - a context manager: one call at step 50,000
    def __init__(self, cloud: Cloud, vol: Path):
        from tests.modal_faults import Call
        self.call = Call("fc-0001", vol, 0.0, 0, 100_000, 10.0, 1000, 20.0)
        cloud.calls["fc-0001"] = self.call

    def __enter__(self):
        return self.call

    def __exit__(self, *exc):
        return False


def test_cloud_fault_a_stop_waiting_on_the_cloud_is_answered_when_the_daemon_shuts_down(tmp_path, monkeypatch):
    """Old: `nightshift stop` on a cloud run, then SIGTERM: the stop was never answered and the
    CLI died with a JSONDecodeError traceback when the API went away."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch, settle_s=60.0)
        await to_cloud(h)
        fut = h.sup.submit("stop")
        await h.run(3, until=lambda s: s.state == State.CANCELLING)
        h.sup.request_stop(signal.SIGTERM)
        await h.run(5, until=lambda s: s.done.is_set())
        assert h.sup.done.is_set() and fut.done()
        assert fut.result()["ok"] and "shutting down while cancelling" in fut.result()["message"]
        assert Record_of(h)["after_pull"] == "stopped"  # the next start ends it stopped
    run(go())


def Record_of(h: Harness) -> dict:  # noqa: N802 - the persisted remote record, as JSON
    return json.loads(h.store.get_run(h.sup.run_id)["remote_state"])


def test_cloud_fault_the_stop_cli_says_the_daemon_went_away_instead_of_a_traceback(tmp_path):
    import http.server
    import os
    import threading

    from daemon.web import client

    class Half(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # the daemon shuts down mid-answer: headers, half a body, gone
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            self.wfile.write(b'{"ok": tr')

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Half)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("x" * 32)
    os.chmod(token, 0o600)
    try:
        text, code = client.control(f"http://127.0.0.1:{srv.server_port}", token, "stop")
    finally:
        srv.shutdown()
        srv.server_close()
    assert code == 1 and "stopped before answering stop" in text and "nightshift status" in text


STUBBORN = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a job that will not stop by itself
print('iter 1', flush=True)
while True:
    time.sleep(0.1)
"""


@pytest.mark.slow  # ~12 s: a job that ignores SIGTERM is given its whole share of the budget
def test_cloud_fault_on_preemption_the_body_commits_within_15_s_without_sleeping(tmp_path):
    """Old: on Modal's SIGINT (SIGKILL ~30 s later) the body waited up to 20 s for the job, 5 s
    more after a KILL and 5 s for its output before the commit even started, then slept between
    commit retries: the final checkpoint could miss the SIGKILL."""
    import os
    import sys
    import threading
    import time

    from daemon.cloud.offload import remote

    commits: list[float] = []

    def commit():  # the volume: fails twice on the way out, then works
        commits.append(time.monotonic())
        if len(commits) in (1, 2) and interrupted:
            raise mx.ServiceError("UNAVAILABLE")

    interrupted: list[float] = []

    def preempt(signum, frame):
        interrupted.append(time.monotonic())
        raise KeyboardInterrupt  # what Python makes of Modal's SIGINT in a sync body

    def soon():
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGINT)

    old = signal.signal(signal.SIGINT, preempt)
    try:
        threading.Thread(target=soon, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            remote.run_remote({"command": [sys.executable, "-c", STUBBORN], "env": {}}, str(tmp_path / "vol"),
                              commit=commit, poll_s=0.1, term_grace_s=20.0)
    finally:
        signal.signal(signal.SIGINT, old)
    t0 = interrupted[0]
    final = [t for t in commits if t >= t0]
    assert len(final) == 3 and final[-1] - t0 < remote.FINAL_S  # committed within the budget
    assert final[-1] - final[0] < 1.0  # retried at once, no sleeps between
    summary = json.loads((tmp_path / "vol/run/summary.json").read_text())
    assert summary["state"] == "final" and summary["result"] == "preempted"


def test_cloud_fault_a_wall_clock_step_changes_neither_the_bill_nor_the_budget(tmp_path, monkeypatch):
    """Old: cost = (wall now - wall launch) x price: a clock set forward 10 h billed 10 h of A100
    ($21 against a $5 budget: cancelled); set back, the bill went negative."""
    async def go():
        h, cloud = harness(tmp_path, monkeypatch, cfg=modal_cfg(tmp_path, budget_usd=5.0))
        await to_cloud(h)
        await h.run(60, dt=1.0)
        before = h.sup.face.snapshot["cloud"]["cost_usd"]
        h.clock.step(10 * 3600)  # NTP / an RTC in local time: the wall clock alone jumps
        await h.run(10, dt=1.0)
        after = h.sup.face.snapshot["cloud"]["cost_usd"]
        per_s = 2.10 / 3600
        assert abs(after - before - 10 * per_s) < 3 * per_s, (before, after)
        assert h.sup.state == State.REMOTE and not h.events("budget")
        h.clock.step(-20 * 3600)
        await h.run(10, dt=1.0)
        assert h.sup.face.snapshot["cloud"]["cost_usd"] >= after
        ans = await h.command("stop")
        assert ans["ok"] and h.sup.state == State.STOPPED
        secs = h.sup.run["cloud_seconds"]
        assert 80 <= secs <= 80 + cloud.settle_s + 20, secs  # what really ran, not 10 h
    run(go())
