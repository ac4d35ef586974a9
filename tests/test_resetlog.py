"""The reset log (daemon/gpu/resets/resetlog.py) on a real SQLite store: only resets count toward
offload, the reset rate and the heat diagnosis; soft recoveries and faults are counted apart;
one incident is one count even when a late line revises it; a restart forgets nothing.
Issue 26 (kinds) and issue 30 (the bookkeeping out of the Supervisor)."""

from __future__ import annotations

import asyncio

from daemon.gpu.resets import ResetEvent
from daemon.gpu.resets.resetlog import ResetLog
from daemon.policy.states import State
from daemon.state.store import Store
from tests.harness import Behaviour, FakeClock, FakeDetector, FakeSensor, Harness, config

T0 = 1_700_000_000.0


def cfg(window_s: float = 3600.0) -> dict:
    return {"resets": {"window_s": window_s},
            "thermal": {"pause_at_c": 90.0, "tctl_pause_at_c": 95.0, "governor": "off"}}


def incident(t: float, kind: str, *, id: int, label: str = "", kernel_resets: int = 0,
             attributed: bool = True) -> ResetEvent:
    return ResetEvent(t=t, sources=["kernel"], lines=[f"{kind} at {t}"], kind=kind, label=label,
                      kernel_resets=kernel_resets or (1 if kind == "reset" else 0), id=id,
                      attributed=attributed)


def test_soft_recoveries_and_faults_never_count_as_resets(tmp_path):
    store = Store(tmp_path / "s.db")
    rl = ResetLog(store, cfg())
    run = store.create_run("job", {}, None)
    soft = rl.record(incident(T0, "soft_recovery", id=1, label="soft recovery (gfx)"),
                     {"edge_c": 88.0}, run, 10)
    fault = rl.record(incident(T0 + 60, "fault", id=2, label="page fault"), {"edge_c": 89.0}, run, 11)
    assert soft.counters == {} and fault.counters == {}  # the run's "resets" stays 0
    assert (soft.event_kind, fault.event_kind) == ("soft_recovery", "gpu_fault")
    assert rl.in_window(T0 + 100) == 0 and rl.reset_times() == []
    st = rl.status(T0 + 100, run)
    assert st["soft_recoveries"] == {"in_window": 1, "total": 1}
    assert st["faults"] == {"in_window": 1, "total": 1}
    # two hot "incidents", but no reset: no heat verdict, and the fault has its own line
    assert st["heat_correlated"] is None
    assert "1 GPU page fault in the job: usually the job's or ROCm's bug" in \
        " ".join(st["diagnosis"].split())
    reset = rl.record(incident(T0 + 200, "reset", id=3, label="MES hang", kernel_resets=2),
                      {"edge_c": 60.0}, run, 12)
    assert reset.counters == {"resets": 1} and reset.event_kind == "reset"
    assert "MES hang (2 kernel resets)" in reset.message
    assert rl.in_window(T0 + 300) == 1 and rl.status(T0 + 300, run)["kernel_resets_in_window"] == 2


def test_a_revised_incident_moves_its_count_and_is_never_counted_twice(tmp_path):
    store = Store(tmp_path / "s.db")
    rl = ResetLog(store, cfg())
    run = store.create_run("job", {}, None)
    first = incident(T0, "soft_recovery", id=7, label="soft recovery (gfx)")
    rl.record(first, {}, run, 1)
    revised = incident(T0, "reset", id=7, label="ring timeout (gfx)", kernel_resets=1)
    rec = rl.record(revised, {}, run, 1)
    assert rec.counters == {"resets": 1} and rec.data.get("revised")
    again = rl.record(incident(T0, "reset", id=7, label="ring timeout (gfx)", kernel_resets=2), {},
                      run, 1)
    assert again.counters == {}  # already a reset: more kernel resets are detail
    assert rl.in_window(T0 + 1) == 1
    assert rl.status(T0 + 1, run)["soft_recoveries"]["total"] == 0
    [row] = store.resets(run)
    assert row["kind"] == "reset" and row["info"]["kernel_resets"] == 2


def test_an_unattributed_incident_is_shown_and_counts_toward_nothing(tmp_path):
    store = Store(tmp_path / "s.db")
    rl = ResetLog(store, cfg())
    run = store.create_run("job", {}, None)
    rec = rl.record(incident(T0, "reset", id=1, attributed=False), {}, run, 1)
    assert rec.counters == {} and rec.event_kind == "gpu_unattributed"
    assert "not counted toward offload" in rec.message
    assert rl.in_window(T0 + 1) == 0 and rl.reset_times() == []
    assert rl.status(T0 + 1, run)["unattributed"] == {"in_window": 1, "total": 1}


def test_a_restart_rebuilds_kinds_window_and_run_counts_from_the_store(tmp_path):
    store = Store(tmp_path / "s.db")
    rl = ResetLog(store, cfg(window_s=600.0))
    run = store.create_run("job", {}, None)
    rl.record(incident(T0, "reset", id=1), {"edge_c": 70.0}, run, 1)  # leaves the window
    rl.record(incident(T0 + 500, "reset", id=2), {"edge_c": 70.0}, run, 1)
    rl.record(incident(T0 + 510, "fault", id=3), {}, run, 2)
    again = ResetLog(store, cfg(window_s=600.0))
    again.load(T0 + 700)
    assert again.in_window(T0 + 700) == 1 and again.in_window(T0 + 700, "fault") == 1
    assert again.reset_times() == [T0 + 500]
    assert again.status(T0 + 700, run)["faults"]["total"] == 1


def test_a_reset_or_a_fault_can_explain_a_death_a_soft_recovery_cannot(tmp_path):
    from daemon.policy.supervise import reset_explains_death
    store = Store(tmp_path / "s.db")
    rl = ResetLog(store, cfg())
    rl.record(incident(T0, "soft_recovery", id=1), {}, None, None)
    assert not reset_explains_death(T0 + 2, rl.death_times())  # the compositor's recovery
    rl.record(incident(T0 + 50, "fault", id=2), {}, None, None)
    rl.record(incident(T0 + 90, "reset", id=3), {}, None, None)
    assert rl.death_times() == [T0 + 50, T0 + 90]


def test_the_supervisor_offloads_on_resets_only(tmp_path):
    """offload_after = 2: two soft recoveries and a GPU fault move nothing; two resets do."""
    async def go():
        clock = FakeClock()
        det = FakeDetector()
        c = config(tmp_path, resets={"offload_after": 2},
                   offload={"backend": "local", "budget_usd": 5.0})
        from tests.test_dashboard_markers import RunningCloud
        h = Harness(tmp_path, c, {"trainer": Behaviour(trainer=True, steps=100000)}, clock=clock,
                    sensor=FakeSensor(clock), detector=det,
                    backends={"local": RunningCloud(step=60, total_steps=100000)})
        sup = await h.open()
        await h.run(5)
        for i, kind in enumerate(["soft_recovery", "soft_recovery", "fault"]):
            det.events.append(incident(clock.t, kind, id=i + 1))
            await h.run(5)
        assert sup.state == State.RUNNING and sup.run["resets"] == 0
        st = sup.face.snapshot["resets"]
        assert (st["in_window"], st["soft_recoveries"]["total"], st["faults"]["total"]) == (0, 2, 1)
        assert h.events("soft_recovery") and h.events("gpu_fault") and not h.events("reset")
        # shown apart: the phone text and /metrics
        from daemon.web.metrics import exposition, make_registry
        from daemon.web.statusfmt import render
        text = " ".join(render(sup.face.snapshot, clock.t).split())
        assert "reset none in this run." in text
        assert "1 GPU page fault, 2 soft recoveries in this run (not resets)." in text
        metrics = exposition(make_registry(lambda: sup.face.snapshot)).decode()
        assert "nightshift_resets_total 0.0" in metrics
        assert "nightshift_gpu_faults_total 1.0" in metrics
        assert "nightshift_soft_recoveries_total 2.0" in metrics
        for i in range(2):
            det.events.append(incident(clock.t, "reset", id=10 + i, label="MES hang"))
            await h.run(5)
        await h.run(40, until=lambda s: s.state in (State.OFFLOADING, State.REMOTE))
        assert sup.state in (State.OFFLOADING, State.REMOTE), sup.state
        assert sup.run["resets"] == 2
    asyncio.run(go())


def test_a_job_death_noticed_after_its_reset_was_stored_joins_the_stored_row_quietly(tmp_path):
    """Under load the daemon can notice the job's death (its "GPU Hang" message) after the
    kernel's reset was already closed and stored. The death still belongs to that reset: the
    stored row's sources name the job too (it named the kernel alone), it is still one reset
    counted once, and the late evidence is a detail of the timeline, not a second warning."""
    from daemon.gpu.resets import ResetDetector
    from daemon.gpu.simgpu import RESET_LINES

    log = tmp_path / "kmsg.log"
    log.write_text("")
    t = [1000.0]
    det = ResetDetector({"sources": ["kmsg", "job"]}, kernel_log=str(log), clock=lambda: t[0],
                        quiet_s=2.0, settle_s=1.0, job_window_s=30.0)
    with open(log, "a") as f:
        f.writelines(f"[{2.0 + i * 0.01:12.6f}] {line}\n" for i, line in enumerate(RESET_LINES))
    det.poll()
    store = Store(tmp_path / "s.db")
    rl = ResetLog(store, cfg(), clock=lambda: t[0])
    run = store.create_run("job", {}, None)
    t[0] += 5
    [ev] = det.poll()  # closed and stored before the death was noticed
    first = rl.record(ev, {"edge_c": 70.0}, run, 120)
    assert first.counters == {"resets": 1} and store.resets()[0]["sources"] == ["kernel"]
    det.note_job_exit("HW Exception by GPU node-1 (Agent handle: 0x55) reason :GPU Hang", t[0])
    t[0] += 5
    [again] = det.poll()  # the same incident, with the job's evidence added
    assert again.id == ev.id
    late = rl.record(again, {"edge_c": 70.0}, run, 120)
    [row] = store.resets()
    assert sorted(row["sources"]) == ["job", "kernel"]
    assert late.counters == {} and rl.in_window(t[0]) == 1  # counted once
    assert late.detail and late.level == "info" and "job" in late.message
