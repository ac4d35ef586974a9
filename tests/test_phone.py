"""What a user sees at 3 am, part by part with plain values: the duty-cycle ETA, the display
states, the 40-column text, Prometheus types, config reload said once, the job's log, the CLI's
words. The same things against the real daemon: tests/test_phone_daemon.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.core.statusview import display_state
from daemon.gpu.diagnosis import diagnose
from daemon.job import joblog
from daemon.policy import eta
from daemon.policy.states import State
from daemon.service.configwatch import ConfigWatcher
from daemon.state import config as config_mod
from daemon.web import client, metrics, statusfmt
from tests.helpers import ROOT, free_port, write_config


# ------------------------------------------------------------------ duty cycle and ETA
def test_duty_cycle_counts_pauses_and_restarts_against_training():
    # trains 10-40 and 50-100: 80 of 100 s
    d = eta.duty_cycle([(0.0, False), (10.0, True), (40.0, False), (50.0, True)], 100.0)
    assert d is not None and d.fraction == pytest.approx(0.8) and d.observed_s == 100.0


def test_duty_cycle_only_looks_at_the_last_hour():
    d = eta.duty_cycle([(0.0, True), (3000.0, False)], 4600.0)
    assert d.observed_s == 3600.0 and d.training_s == pytest.approx(2000.0)


def test_the_issue_case_an_eta_of_28_s_with_86_s_left_becomes_86_s():
    """The steady rate said 28 s; the job trained a third of the time (thermal pauses)."""
    duty = eta.Duty(fraction=28 / 86, observed_s=600.0, training_s=195.0)
    e = eta.estimate(remaining_steps=280, steady_rate=10.0, duty=duty)
    assert e.basis == "duty" and e.seconds == pytest.approx(86.0) and e.steady_s == pytest.approx(28.0)
    assert "33%" in e.why


def test_eta_is_the_steady_one_too_early_and_unknown_when_barely_training():
    early = eta.estimate(100, 10.0, eta.Duty(0.5, eta.MIN_OBSERVED_S - 1, 10.0))
    assert early.basis == "steady" and early.seconds == 10.0
    stalled = eta.estimate(100, 10.0, eta.Duty(0.01, 3600.0, 36.0))
    assert stalled.seconds is None and stalled.steady_s == 10.0 and "hardly trained" in stalled.why
    assert eta.estimate(100, None, None).seconds is None
    assert eta.estimate(None, 2.0, None).seconds is None


def test_timeline_rebuilt_from_events_after_a_daemon_restart():
    evs = [
        {"t": 0, "kind": "run", "message": "new run 1"},
        {"t": 1, "kind": "state", "message": "", "data": {"new": "starting"}},
        {"t": 5, "kind": "state", "message": "", "data": {"new": "running"}},
        {"t": 20, "kind": "paused_hot", "message": "paused before overheating"},
        {"t": 20, "kind": "state", "message": "", "data": {"new": "cooling"}},
        {"t": 30, "kind": "released", "message": "job released"},
        {"t": 30, "kind": "state", "message": "", "data": {"new": "running"}},
        {"t": 40, "kind": "paused", "message": "paused by the user"},
        {"t": 50, "kind": "state", "message": "", "data": {"new": "stopped"}},
        # `nightshift resume` of a stopped run lifts the user's pause without a "released"
        {"t": 55, "kind": "state", "message": "", "data": {"new": "starting"}},
        {"t": 58, "kind": "state", "message": "", "data": {"new": "running"}},
        {"t": 60, "kind": "daemon", "message": "stopped by SIGTERM"},  # down until 90
        {"t": 90, "kind": "run", "message": "continuing run 1"},
        {"t": 91, "kind": "state", "message": "", "data": {"new": "running"}},
    ]
    tl = eta.transitions_from_events(evs)
    assert tl == [(0.0, False), (5.0, True), (20.0, False), (30.0, True), (40.0, False),
                  (58.0, True), (60.0, False), (91.0, True)]
    d = eta.duty_cycle(tl, 101.0)
    assert d.training_s == pytest.approx(15 + 10 + 2 + 10)


def test_meter_keeps_the_transition_in_force_at_the_window_start():
    m = eta.DutyMeter(window_s=100.0)
    m.note(0.0, True)
    m.note(10.0, False)
    m.note(20.0, True)
    m.note(500.0, True)
    assert m.transitions == [(20.0, True)]
    assert m.duty(500.0).fraction == 1.0


# ------------------------------------------------------------------ display states
@pytest.mark.parametrize("state,holds,word,detail", [
    (State.RUNNING, set(), "RUNNING", "training"),
    (State.RUNNING, {"user"}, "PAUSED", "by you"),
    (State.RUNNING, {"schedule"}, "PAUSED", "by the schedule"),
    (State.COOLING, {"thermal"}, "COOLING", "cooled"),
    (State.COOLING, {"thermal", "user"}, "PAUSED", "by you (and cooling)"),
    (State.RECOVERING, set(), "RECOVERING", "reset"),
    (State.OFFLOADING, set(), "CLOUD", "moving"),
    (State.REMOTE, set(), "CLOUD", "in the cloud"),
    (State.PULLING, set(), "CLOUD", "home"),
    (State.STOPPED, {"user"}, "STOPPED", "nightshift resume"),
    (State.SUCCEEDED, set(), "DONE", "finished"),
    (State.FAILED, set(), "FAILED", "gave up"),
    (State.STARTING, set(), "STARTING", "starting"),
    (State.STARTING, {"schedule"}, "PAUSED", "by the schedule"),  # waiting for the night window
    (State.IDLE, {"user"}, "PAUSED", "by you"),
])
def test_every_state_has_a_word_a_tired_user_can_tell_apart(state, holds, word, detail):
    w, d = display_state(state, frozenset(holds))
    assert w == word and detail in d


# ------------------------------------------------------------------ the phone's text
LONG_REASON = ("edge 86.0 C rising: crosses 88 C in 0.4 s, before the next poll; Tctl 90.1 C "
               "is close to tctl_pause_at_c")


def _status(**over):
    st = {"state": "running", "display_state": "RUNNING", "display_detail": "training on this machine",
          "run_id": 3, "job": "demo", "step": 120, "total_steps": 300, "progress_pct": 40.0,
          "loss": 2.5, "loss_trend": [3.0, 2.8, 2.5], "steps_per_s": 10.0, "eta_s": 40,
          "eta_steady_s": 18, "eta_basis": "duty", "eta_why": "trains 45% of the time",
          "duty_cycle": 0.45, "temps": {"edge_c": 80.0, "tctl_c": 84.0},
          "resets": {"in_window": 1, "total": 1, "window_s": 3600, "heat_correlated": None},
          "backend": "local", "cloud": {}, "checkpoint": {"step": 100, "age_s": 12},
          "paused_reason": None, "last_event": {"t": 1000.0, "kind": "paused_hot",
                                                "message": "paused before overheating: " + LONG_REASON},
          "failure": None, "problems": []}
    st.update(over)
    return st


def _fits(text):
    return all(len(line) <= statusfmt.WIDTH for line in text.splitlines())


def _flat(text):
    return re.sub(r"\s+", " ", text)


def _words_kept(text, sentence):
    """Every word of ``sentence`` is on the screen whole (wrapping may only break at spaces)."""
    joined = " ".join(line.strip() for line in text.splitlines())
    return all(w in joined.split() or w in joined for w in sentence.split())


def test_running_shows_the_duty_cycle_eta_with_the_steady_one_beside_it():
    text = statusfmt.render(_status(), now=1010.0)
    assert text.splitlines()[0] == "nightshift  RUNNING"
    assert _fits(text)
    flat = _flat(text)
    assert "ETA in 40s." in flat  # a document without eta_at (an older daemon): a duration
    flat = _flat(statusfmt.render(_status(eta_at=1050.0, eta_low_at=1050.0, eta_high_at=1050.0),
                                  now=1010.0))
    clock = statusfmt.clock(1050.0, 1010.0)
    assert f"ETA ends about {clock}, in 40s (it trains 45% of the time; 18s at the steady rate)." in flat
    assert "10.00 steps/s while training" in flat
    assert "Too few so far to tell if heat causes them." in flat
    assert "10s ago: Paused before overheating: " + LONG_REASON + "." in flat  # whole, not cut


def test_paused_by_you_reads_paused_with_the_full_reason_and_no_eta():
    st = _status(state="running", display_state="PAUSED", display_detail="by you", steps_per_s=None,
                 eta_s=None, eta_steady_s=None, eta_why=None, eta_basis=None,
                 paused_reason="paused by the user")
    text = statusfmt.render(st, now=1010.0)
    assert text.splitlines()[0] == "nightshift  PAUSED by you"
    assert "why   Paused by the user." in text and "ETA" not in text and "rate" not in text
    st = _status(display_state="COOLING", display_detail="paused until the GPU has cooled",
                 paused_reason=LONG_REASON)
    text = statusfmt.render(st, now=1010.0)
    assert _fits(text) and text.startswith("nightshift  COOLING")
    why = [line for line in text.splitlines() if line.startswith("why") or line.startswith("      ")]
    assert _words_kept("\n".join(why), LONG_REASON)


@pytest.mark.parametrize("word,state", [("STOPPED", "stopped"), ("DONE", "succeeded"), ("FAILED", "failed")])
def test_nothing_stale_after_the_run_ends(word, state):
    st = _status(state=state, display_state=word, display_detail="", steps_per_s=None, eta_s=None,
                 eta_steady_s=None, eta_why=None, eta_basis=None, paused_reason=None,
                 failure="job failed: ValueError: bad\ntraceback" if word == "FAILED" else None)
    text = statusfmt.render(st, now=1010.0)
    assert text.splitlines()[0] == f"nightshift  {word}"
    assert "ETA" not in text and "rate" not in text and "why" not in text
    assert "reset 1 in the last 1h00m, 1 in this run." in _flat(text)
    assert ("FAIL  Job failed: ValueError: bad." in text) == (word == "FAILED")


def test_a_minimal_or_hostile_status_still_renders():
    text = statusfmt.render({"state": "running", "temps": {"edge_c": None}, "eta_s": None})
    assert text.startswith("nightshift  RUNNING") and _fits(text)
    assert "reset none in this run." in text


# ------------------------------------------------------------------ Prometheus
def test_counters_are_counters_and_the_rest_gauges():
    st = _status(restarts=2, pauses=5, steps_lost=7, holds={"thermal": "hot"},
                 resets={"total": 3, "in_window": 1})
    text = metrics.exposition(metrics.make_registry(lambda: st)).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name, value in (("nightshift_resets", 3), ("nightshift_restarts", 2),
                        ("nightshift_pauses", 5), ("nightshift_steps_lost", 7)):
        assert fams[name].type == "counter", name
        assert fams[name].samples[0].name == name + "_total" and fams[name].samples[0].value == value
    for name in ("nightshift_step", "nightshift_eta_seconds", "nightshift_duty_cycle_ratio",
                 "nightshift_temperature_celsius", "nightshift_resets_in_window", "nightshift_state"):
        assert fams[name].type == "gauge", name
    assert {s.labels["owner"]: s.value for s in fams["nightshift_held"].samples}["thermal"] == 1.0
    assert not fams["nightshift_loss"].samples or fams["nightshift_loss"].samples[0].value == 2.5


def test_grafana_dashboard_queries_only_metrics_that_exist():
    import json
    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    text = metrics.exposition(metrics.make_registry(lambda: _status(holds={}))).decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    names |= {f.name for f in text_string_to_metric_families(text)}
    used = {m for e in exprs for m in re.findall(r"nightshift_[a-z_]+", e)}
    assert used and used <= names, used - names
    assert any("increase(nightshift_resets_total" in e for e in exprs)


# ------------------------------------------------------------------ config reload says each thing once
def _watcher(path, changes, errors):
    return ConfigWatcher(path, None, lambda new, keys, restart: changes.append((keys, restart)),
                         errors.append, current=config_mod.load(path))


def test_a_rejected_edit_is_reported_once_however_many_file_events(tmp_path):
    path = write_config(tmp_path, {"job": {"command": ["true"]}})
    changes, errors = [], []
    w = _watcher(path, changes, errors)
    good = path.read_text()
    path.write_text(good + "\n[thermal]\nbogus = 1\n")
    w.reload()
    w.reload()  # the editor's rename + chmod events
    assert len(errors) == 1 and "bogus" in str(errors[0])
    path.write_text(good + "\n[thermal]\nbogus2 = 1\n")
    w.reload()
    assert len(errors) == 2  # a different error is news
    path.write_text(good)
    w.reload()
    path.write_text(good + "\n[thermal]\nbogus2 = 1\n")
    w.reload()
    assert len(errors) == 3 and changes == []  # broken again after a good save: said again


def test_a_port_edit_waits_once_and_reverting_it_clears_the_warning(tmp_path):
    port = free_port()
    path = write_config(tmp_path, {"job": {"command": ["true"]}, "api": {"port": port},
                                   "thermal": {"pause_at_c": 90.0}})
    changes, errors = [], []
    w = _watcher(path, changes, errors)
    text = path.read_text()
    path.write_text(text.replace(f"port = {port}", f"port = {port + 1}"))
    w.reload()
    assert changes[-1] == (["api.port"], ["api.port"])
    path.write_text(text.replace(f"port = {port}", f"port = {port + 1}")
                    .replace("pause_at_c = 90.0", "pause_at_c = 85.0"))
    w.reload()
    assert changes[-1] == (["thermal.pause_at_c"], [])  # the waiting port is not said again
    path.write_text(text.replace("pause_at_c = 90.0", "pause_at_c = 85.0"))
    w.reload()
    assert changes[-1] == (["api.port"], [])  # back to the running port: applied, no restart
    w.reload()
    assert len(changes) == 3 and not errors


# ------------------------------------------------------------------ the job's log
def test_logs_reach_back_into_the_rotated_file_and_pick_the_newest_run(tmp_path):
    for run in (1, 2):
        (tmp_path / "runs" / str(run)).mkdir(parents=True)
    (tmp_path / "runs" / "2" / "job.log.1").write_text("".join(f"old {i}\n" for i in range(5)))
    (tmp_path / "runs" / "2" / "job.log").write_text("new 0\nnew 1\n")
    path = joblog.log_path(tmp_path, None)
    assert path == tmp_path / "runs" / "2" / "job.log"
    assert joblog.last_lines(path, 4) == ["old 3", "old 4", "new 0", "new 1"]
    with pytest.raises(FileNotFoundError, match="no run 7 .*runs: 1, 2"):
        joblog.log_path(tmp_path, 7)


@pytest.mark.slow
def test_follow_goes_on_across_a_rotation(tmp_path):
    path = tmp_path / "job.log"
    path.write_text("before\n")
    def append(text: str) -> None:
        with path.open("a") as f:
            f.write(text)
    script = iter([
        lambda: append("one\ntw"),
        lambda: append("o\n"),
        lambda: (append("three\n"), path.rename(tmp_path / "job.log.1")),
        lambda: path.write_text("four\n"),
    ])
    got: list[str] = []

    def sleep(_):
        step = next(script, None)
        if step is not None:
            step()

    for line in joblog.follow(path, poll_s=0, sleep=sleep, stop=lambda: len(got) >= 4):
        got.append(line)
    assert got == ["one", "two", "three", "four"]


# ------------------------------------------------------------------ the CLI's words
def test_control_answers_name_the_state_once():
    assert client._control_text({"ok": False, "message": "nothing to pause: the run is stopped",
                                 "state": "stopped"}) == "Nothing to pause: the run is stopped."
    # issue 29 (4): was "Paused. The run is now running." -- now the status' own first words
    assert client._control_text({"ok": True, "message": "paused", "state": "running",
                                 "headline": "PAUSED by you"}) == "Paused. Now: PAUSED by you."
    assert client._control_text({"ok": True, "message": "checkpoint requested (command 1)",
                                 "state": "running", "headline": "RUNNING"}) == \
        "Checkpoint requested (command 1). Now: RUNNING."


def test_the_cli_finds_the_address_the_daemon_wrote_while_it_lives(tmp_path):
    client.write_served_address(tmp_path, "127.0.0.1", 9999)
    assert client.served_address(tmp_path) == ("127.0.0.1", 9999)
    assert os.stat(tmp_path / "api.json").st_mode & 0o777 == 0o600
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "api.json").write_text(f'{{"host": "127.0.0.1", "port": 1, "pid": {dead.pid}}}')
    assert client.served_address(tmp_path) is None
    (tmp_path / "api.json").write_text("{not json")
    assert client.served_address(tmp_path) is None


@pytest.mark.slow
def test_help_is_whole_sentences_and_lists_the_exit_codes():
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "--help"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0
    assert "78 bad config," not in r.stdout
    assert "nightshift supervises one training job overnight" in r.stdout
    assert re.search(r"78\s+the configuration is invalid", r.stdout)
    assert "logs" in r.stdout and "--long" not in r.stdout  # subcommand flags stay in their help


@pytest.mark.parametrize("temps", [[], [{}], [{"edge_c": 50.0}], [{"edge_c": 86.0}] * 3,
                                   [{"edge_c": 50.0}] * 3, [{"edge_c": 50.0}, {"edge_c": 86.0}]])
def test_the_diagnosis_headline_is_a_whole_sentence(temps):
    d = diagnose([{"temps": t} for t in temps], {"pause_at_c": 88.0, "tctl_pause_at_c": 95.0})
    assert d.headline[0].isupper() and d.headline.endswith(".") and not d.headline.endswith(":.")
    assert all(len(line) <= 40 for line in d.summary.splitlines())


def test_sensors_report_does_not_list_a_missing_reset_source_as_working(tmp_path):
    from daemon.commands.sensors_report import sensors_report
    cfg = config_mod.load(write_config(tmp_path, {"job": {"command": ["true"]},
                                                  "gpu": {"sensor": "auto", "sysfs_root": str(tmp_path)},
                                                  "resets": {"sources": ["sensor", "job"]}}))
    text, _ = sensors_report(cfg)
    assert "EPERM on amdgpu reads" not in text
    assert "sensor: not available" in text or "sensor: ok (" in text
    assert "job: ok (the job's dying ROCm/HIP message: \"GPU Hang\" a reset" in text
    # a source left out of [resets] sources is said to be off (issue 26)
    cfg["resets"]["sources"] = ["kmsg"]
    text, _ = sensors_report(cfg)
    assert "sensor: off ([resets] sources)" in text and "job: off ([resets] sources)" in text


def test_dashboard_is_one_file_without_external_assets():
    html = (Path(ROOT) / "daemon" / "web" / "dashboard.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
