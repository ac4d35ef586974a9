"""Issue 29 (1): "when does it end" answered in 3 seconds: a clock time and a duration, a
prediction that converges (net progress over a window that grows with the run), a range while
it is uncertain, the same words in the card, the JSON and the dashboard."""

from __future__ import annotations

import time

import pytest

from daemon.policy import eta
from daemon.web import statusfmt


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _night(total=3000, rate=1.0, train_s=480.0, cool_s=180.0, start_s=60.0, reset_at=None,
           reset_cost_s=300.0, lost=40, dt=5.0, cold_s=None):
    """A thermally cycling job on a fake clock: (t, step, counting, restarting, cooling) every
    ``dt`` s until done. Trains ``train_s`` at ``rate``, cools ``cool_s``, again; optionally one reset at
    step ``reset_at`` that costs ``reset_cost_s`` (restarting, as the Supervisor says while it
    recovers and the job loads) and throws ``lost`` steps away. ``cold_s``: the first training
    stretch (a cold chip trains longer before its first pause)."""
    t, step, phase_t, training, out = 0.0, None, (train_s - cold_s if cold_s else 0.0), True, []
    reset_done = False
    while step is None or step < total:
        if t >= start_s:
            if step is None:
                step = 0
            if reset_at is not None and not reset_done and step >= reset_at:
                reset_done = True
                out.append((t, step, True, True, False))
                t += reset_cost_s
                step -= lost
                phase_t = 0.0
                continue
            if training:
                step = min(total, step + int(rate * dt))
            phase_t += dt
            if training and phase_t >= train_s or not training and phase_t >= cool_s:
                training, phase_t = not training, 0.0
        out.append((t, step, True, False, step is not None and not training))
        t += dt
    return out, t


def _shown(samples, total):
    """Feed a ProgressMeter like the Supervisor does; the ETA shown at each sample."""
    m = eta.ProgressMeter()
    shown = []
    for t, step, counting, restarting, cooling in samples:
        m.note(t, step, counting, restarting, cooling)
        if step is None:
            continue
        e = eta.estimate(total - step, 1.0, None, m.rate())
        shown.append((t, step, e))
    return shown


@pytest.mark.parametrize("reset_at", [None, 2000])
def test_the_eta_at_a_third_and_two_thirds_of_a_cycling_night_is_within_15_percent(reset_at):
    """The issue's night: 3000 steps on a chip that pauses a third of the time (plus a reset).
    The old ETA (the steady rate, then steady x duty) said half of what it took."""
    samples, end = _night(reset_at=reset_at)
    shown = _shown(samples, 3000)
    for frac in (1 / 3, 2 / 3):
        t, step, e = min(shown, key=lambda x: abs(x[0] - frac * end))
        took = end - t
        assert e.basis == "progress", e
        assert abs(e.seconds / took - 1) <= 0.15, (frac, step, e.seconds, took)
        assert e.low_s <= took * 1.15 and e.high_s >= took * 0.85, "the range covers the truth"


def test_a_cold_start_fades_from_the_eta_once_the_run_has_cycled():
    """The recorded thermal night (bench/results/eta.json) ran faster at first than ever after
    (a cold chip trains longer before its first pause); counted over the whole run, that start
    made the ETA 17% short at a third of it. Weighed less once the run has paused often, it
    does not: here a 400 s first stretch, then 60 s of training per 30 s pause (-12% at a
    third with the whole run's rate)."""
    samples, end = _night(total=3000, train_s=60.0, cool_s=30.0, cold_s=400.0, dt=2.0)
    shown = _shown(samples, 3000)
    for frac in (1 / 3, 2 / 3):
        t, step, e = min(shown, key=lambda x: abs(x[0] - frac * end))
        assert abs(e.seconds / (end - t) - 1) <= 0.08, (frac, step, e.seconds, end - t)


def test_the_prediction_converges_instead_of_swinging_with_each_pause():
    """After the first quarter no two readings a minute apart differ by more than 10%: a pause
    no longer swings it 12m55s -> 22m04s."""
    samples, end = _night()
    shown = [x for x in _shown(samples, 3000) if x[0] > end / 4 and x[2].seconds > 600]
    for (t0, _, a), (t1, _, b) in zip(shown, shown[12:], strict=False):  # 12 samples of 5 s: a minute apart
        expected = a.seconds - (t1 - t0)
        assert abs(b.seconds - expected) <= 0.10 * a.seconds, (t0, a.seconds, t1, b.seconds)


def test_the_range_is_wide_early_and_narrows_as_the_run_is_seen():
    samples, end = _night()
    shown = _shown(samples, 3000)
    early = min(shown, key=lambda x: abs(x[0] - end / 10))[2]
    late = min(shown, key=lambda x: abs(x[0] - 0.9 * end))[2]
    rel = lambda e: (e.high_s - e.low_s) / e.seconds  # noqa: E731
    assert rel(early) > 0.3 and rel(late) < 0.15, (rel(early), rel(late))


def test_time_held_by_a_person_is_not_counted_as_slow_progress():
    m = eta.ProgressMeter()
    for t in range(0, 101):
        m.note(float(t), t, True)  # 1 step/s for 100 s
    for t in range(101, 3701):
        m.note(float(t), 100, False)  # paused by you for an hour
    m.note(3702.0, 101, True)
    r = m.rate()
    assert r is not None and r.rate == pytest.approx(1.0, rel=0.05) and r.observed_s < 110


def test_a_stall_counts_even_without_a_new_sample():
    m = eta.ProgressMeter()
    for t in range(0, 61):
        m.note(float(t), t, True)
    for t in range(61, 121):
        m.note(float(t), 60, True)  # recovering after a reset: no progress for a minute
    assert m.rate().rate == pytest.approx(0.5, rel=0.05)


def test_the_meter_stays_small_over_a_long_night():
    m = eta.ProgressMeter()
    for t in range(0, 40000):
        m.note(float(t), t // 2, True)
    assert len(m.samples) <= eta.MAX_SAMPLES and m.rate().rate == pytest.approx(0.5, rel=0.01)


def test_before_the_net_rate_is_known_the_eta_is_a_wide_range():
    e = eta.estimate(100, 10.0, None, None)
    assert e.basis == "steady" and e.low_s < e.seconds < e.high_s


# ------------------------------------------------------------------ the words
def _st(**over):
    st = {"state": "running", "display_state": "RUNNING", "display_detail": "training on this machine",
          "run_id": 3, "job": "demo", "step": 1000, "total_steps": 3000, "progress_pct": 33.3,
          "steps_per_s": 1.0, "eta_s": 7980, "eta_steady_s": 2000, "eta_basis": "progress",
          "eta_why": "from the progress of the last 66 min, pauses and resets included",
          "temps": {"edge_c": 80.0, "tctl_c": 84.0}, "resets": {}, "backend": "local", "cloud": {}}
    st.update(over)
    return st


NOW = 1_765_000_000.0  # 2025-12-06 05:46:40 UTC


def test_the_eta_is_a_clock_time_and_a_duration(utc):
    st = _st(eta_at=NOW + 7980, eta_low_at=NOW + 7900, eta_high_at=NOW + 8000)
    assert statusfmt.eta_text(st, NOW) == "ends about 07:59, in 2h13m"
    text = statusfmt.render(st, NOW)
    assert "ETA   ends about 07:59, in 2h13m" in text
    assert all(len(line) <= statusfmt.WIDTH for line in text.splitlines())


def test_an_uncertain_eta_is_a_range(utc):
    st = _st(eta_at=NOW + 7980, eta_low_at=NOW + 7980 - 1200, eta_high_at=NOW + 7980 + 1200)
    assert statusfmt.eta_text(st, NOW) == "ends 07:39-08:19, in about 2h13m"
    flat = " ".join(line.strip() for line in statusfmt.render(st, NOW).splitlines())
    assert "ends 07:39-08:19, in about 2h13m (from the progress of the last 66 min" in flat


def test_an_end_more_than_a_day_away_names_the_day(utc):
    st = _st(eta_s=200000, eta_at=NOW + 200000, eta_low_at=NOW + 200000, eta_high_at=NOW + 200000)
    assert statusfmt.eta_text(st, NOW) == "ends about Mon 13:20, in 55h33m"


# ------------------------------------------------------------------ one renderer (item 4)
def _run(coro):
    import asyncio
    return asyncio.run(coro)


@pytest.mark.parametrize("action,word", [("pause", "PAUSED by you"), ("checkpoint", "RUNNING"),
                                         ("resume", "RUNNING")])
def test_a_control_reply_says_what_the_status_first_line_says(tmp_path, action, word):
    """Was "Paused. The run is now running." while the status said PAUSED by you."""
    from daemon.web import client
    from tests.harness import Behaviour, Harness, config

    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=1000,
                                                                      interval=1000)})
        sup = await h.open()
        await h.run(5)
        if action == "resume":
            await h.command("pause")
        res = await h.command(action)
        text = client._control_text(res)
        assert res["headline"] == word == sup.face.snapshot["headline"], (res, sup.face.snapshot["headline"])
        assert text.endswith(f" Now: {word}."), text
        first = statusfmt.render(sup.face.snapshot).splitlines()[0]
        assert first == f"nightshift  {word}", first
        assert "running" not in text.lower() or word == "RUNNING"
    _run(go())


def test_the_status_json_has_the_eta_as_a_clock_time_and_its_words(tmp_path):
    from tests.harness import Behaviour, Harness, config

    async def go():
        h = Harness(tmp_path, config(tmp_path), {"trainer": Behaviour(trainer=True, steps=400,
                                                                      step_s=0.5)})
        sup = await h.open()
        await h.run(60)
        st = sup.face.snapshot
        assert st["eta_basis"] == "progress", st["eta_why"]
        assert st["eta_at"] == pytest.approx(h.clock.t + st["eta_s"], abs=2)  # the wall clock
        assert st["eta_low_at"] <= st["eta_at"] <= st["eta_high_at"]
        assert st["eta_text"] == statusfmt.eta_text(st) and st["eta_text"].startswith("ends ")
        # 400 steps at 2/s, 30 steps done after the start-up: about 185 s left
        remaining = (st["total_steps"] - st["step"]) / 2.0
        assert st["eta_s"] == pytest.approx(remaining, rel=0.15)
    _run(go())


def test_the_supervisor_tells_the_meter_the_time_it_spends_restarting_the_job(tmp_path):
    """A crash: the 3 s back-off and the new process loading are restarting time, measured
    apart from the training and pausing: one fault, its cost measured. The ETA expects more at
    the rate policy/faults.py estimates (one crash in 50 s is not 70 an hour: the prior holds
    it near one in 2-4 h), not at the run's own rate (which made it 10% longer here)."""
    from tests.harness import Behaviour, Harness, config

    async def go():
        h = Harness(tmp_path, config(tmp_path, job={"restart_backoff_s": 3.0}),
                    {"trainer": Behaviour(trainer=True, steps=1000, step_s=0.5, interval=10)})
        sup = await h.open()
        await h.run(20)
        before = sup.face.progress._restart - sup.face.progress.samples[0].restart_s
        h.factory.procs[-1].exit(1)
        await h.run(30)
        restarted = sup.face.progress._restart - sup.face.progress.samples[0].restart_s
        assert before == 0.0 and 3.0 <= restarted <= 6.0, (before, restarted, h.events()[-4:])
        assert sup.face.snapshot["eta_basis"] == "progress"
        ahead = sup.face.progress.rate().faults
        assert sup.face.progress.faults == 1 and ahead.measured and ahead.cost_s >= restarted, ahead
        remaining = (1000 - sup.face.snapshot["step"]) / 2.0  # 2 steps/s
        assert sup.face.snapshot["eta_s"] == pytest.approx(remaining, rel=0.04)
        said = sup.face.snapshot["eta_faults"]  # the JSON says what the ETA expects of them
        assert said["measured"] and said["prior"] == "default" and said["cost_s"] >= restarted, said
        assert said["per_h"] == pytest.approx(ahead.per_s * 3600, abs=0.01) and said["per_h"] < 1.0
    _run(go())


# ------------------------------------------------------------------ 40 columns (item 5)
LONG_CKPT = "/home/ana/.local/state/nightshift/checkpoints/run-1/step_000264"


def test_a_long_checkpoint_path_is_shortened_from_the_left_never_past_40_columns():
    """Was one 53-character line: a checkpoint path in the last event."""
    st = _st(last_event={"t": NOW - 5, "kind": "checkpoint", "message": f"checkpoint saved: {LONG_CKPT}"},
             checkpoint={"step": 264, "age_s": 5, "path": LONG_CKPT})
    text = statusfmt.render(st, NOW)
    assert all(len(line) <= statusfmt.WIDTH for line in text.splitlines()), text
    assert ".../checkpoints/run-1/step_000264." in text and "/home/ana" not in text


def test_shorten_path_keeps_the_end_and_fits():
    assert statusfmt.shorten_path(LONG_CKPT, 34) == ".../checkpoints/run-1/step_000264"
    assert statusfmt.shorten_path(LONG_CKPT, 25) == ".../run-1/step_000264"
    assert statusfmt.shorten_path("/a/" + "x" * 50, 20) == "..." + "x" * 17
    assert statusfmt.shorten_path("short/path", 34) == "short/path"


def test_no_word_of_any_length_makes_a_line_wider_than_the_card():
    st = _st(problems=["token " + "y" * 70 + " is odd"], paused_reason=None)
    assert all(len(line) <= statusfmt.WIDTH for line in statusfmt.render(st, NOW).splitlines())


def test_a_range_within_one_clock_minute_is_said_as_durations(utc):
    """A short run (the demo): 04:10-04:10 says nothing; the range goes to the duration."""
    now = NOW - 30  # 05:46:10
    st = _st(eta_s=20, eta_at=now + 20, eta_low_at=now + 12, eta_high_at=now + 30)
    assert statusfmt.eta_text(st, now) == "ends about 05:46, in 12s-30s"
    st = _st(eta_s=20, eta_at=now + 20, eta_low_at=now + 19, eta_high_at=now + 21)
    assert statusfmt.eta_text(st, now) == "ends about 05:46, in 20s"  # certain enough: one figure


def test_a_stall_widens_the_range_to_at_most_twice_the_eta():
    """A restart that loads for a minute: the recent half's rate is tiny; the range stays sane."""
    m = eta.ProgressMeter()
    for t in range(0, 100):
        m.note(float(t), t, True)
    for t in range(100, 160):
        m.note(float(t), 100, True)  # loading after a reset
    e = eta.estimate(200, 1.0, None, m.rate())
    assert e.basis == "progress" and e.high_s <= 2 * e.seconds + 1e-6 and e.low_s >= e.seconds / 2
