"""What a user sees at 3 am, against the real daemon: a real uvicorn on a free loopback port, the
real reference job on a simulated 780M that heats until the daemon pauses it, the real CLI, and
the dashboard in a real headless Chromium at a phone's width.

The tests share one daemon and run in file order: a night's story (it trains and cools, you
pause it, you edit the config, you stop it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.helpers import (
    ROOT,
    chromium_dom,
    chromium_screenshot,
    free_port,
    kill_group,
    needs_chromium,
    nightshift,
    start_daemon,
    wait_for,
    write_config,
)
from tests.test_trainer_resume import SMALL

# One real daemon for the module (a fixture): every test here is end to end.
# One worker runs this file in order: its tests share one module-scoped daemon and read what
# earlier tests did to it (tests/conftest.py's scheduler: a file with a module-scoped
# fixture is one unit of work).
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def night(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phone")
    port = free_port()
    job = [sys.executable, "-m", "trainer.reference", "--steps", "100000", *SMALL,
           "--max-steps-per-s", "20"]
    cfg = write_config(tmp, {
        "job": {"command": job},
        "api": {"enabled": True, "port": port},
        # the demo's chip: settles at 92 C under load, so it crosses 88 C after ~8 s of training
        "gpu": {"sensor": "simulated", "poll_interval_s": 0.5,
                "simulated": {"time_scale": 60.0, "ambient_c": 45.0, "load_c": 47.0,
                              "tau_heat_s": 240.0, "tau_cool_s": 200.0}},
        "thermal": {"pause_at_c": 88.0, "resume_at_c": 74.0, "tctl_pause_at_c": 95.0,
                    "min_cooldown_s": 2.0, "max_cooldown_s": 60.0},
    })
    d = start_daemon(cfg)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: (_status(base) or {}).get("step"), 90, what="a running job")
        yield {"base": base, "cfg": cfg, "tmp": tmp, "proc": d, "port": port}
    finally:
        kill_group(d)


def _get(base, path, accept="application/json"):
    import urllib.error
    import urllib.request
    try:
        req = urllib.request.Request(base + path, headers={"Accept": accept})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def _status(base):
    body = _get(base, "/status?format=json")
    return json.loads(body) if body else None


def _events(night, kind=None):
    con = sqlite3.connect(night["tmp"] / "state" / "nightshift.db")
    try:
        q = "SELECT kind, level, message FROM events" + (" WHERE kind=?" if kind else "") + " ORDER BY id"
        return con.execute(q, (kind,) if kind else ()).fetchall()
    finally:
        con.close()


def test_it_trains_and_cools_and_the_eta_counts_the_pauses(night):
    wait_for(lambda: any(k == "released" for k, _, _ in _events(night)), 120,
             what="a thermal pause and its resume")
    # issue 29: the ETA comes from the run's net progress (pauses included) once 20 s are seen
    st = wait_for(lambda: (lambda s: s if s and s.get("eta_basis") == "progress"
                           and s.get("duty_cycle") is not None else None)(_status(night["base"])),
                  60, what="an ETA from the run's net progress")
    assert st["display_state"] in ("RUNNING", "COOLING")
    assert 0 < st["duty_cycle"] < 1  # it cooled: not all the time was training
    assert st["eta_s"] >= st["eta_steady_s"] > 0
    assert st["eta_low_at"] <= st["eta_at"] <= st["eta_high_at"] and st["eta_text"].startswith("ends ")
    text = _get(night["base"], "/status", "text/plain")
    flat, day = " ".join(text.split()), r"(\w{3} )?"  # a 100000-step run ends days from now
    assert re.search(rf"ETA ends (about {day}\d\d:\d\d, in \S+|{day}\d\d:\d\d-{day}\d\d:\d\d, "
                     r"in about \S+)", flat), text
    assert all(len(line) <= 40 for line in text.splitlines())


def test_a_pause_by_you_reads_paused_by_you_without_rate_or_eta(night):
    r = nightshift("pause", "-c", str(night["cfg"]))
    assert r.returncode == 0 and r.stdout.strip().startswith("Paused")
    # the card's own words ("(and cooling)" when the chip is also cooling at that moment)
    assert "Now: PAUSED by you" in r.stdout.strip().splitlines()[-1], r.stdout
    st = wait_for(lambda: (lambda s: s if s and s["display_state"] == "PAUSED" else None)(_status(night["base"])),
                  30, what="PAUSED")
    assert st["display_detail"].startswith("by you") and st["paused_reason"] == "paused by the user"
    assert st["steps_per_s"] is None and st["eta_s"] is None
    text = _get(night["base"], "/status", "text/plain")
    assert text.splitlines()[0].startswith("nightshift  PAUSED by you")
    assert "ETA" not in text and "why   Paused by the user." in text
    r = nightshift("resume", "-c", str(night["cfg"]))
    assert r.returncode == 0
    wait_for(lambda: _status(night["base"])["display_state"] in ("RUNNING", "COOLING"), 30, what="resumed")


def test_metrics_counters_are_counters(night):
    from prometheus_client.parser import text_string_to_metric_families
    fams = {f.name: f for f in text_string_to_metric_families(_get(night["base"], "/metrics", "text/plain"))}
    for name in ("nightshift_resets", "nightshift_restarts", "nightshift_pauses", "nightshift_steps_lost"):
        assert fams[name].type == "counter"
    assert fams["nightshift_pauses"].samples[0].value >= 2  # the heat's and yours


def test_logs_prints_the_jobs_output_and_follows_it(night):
    r = nightshift("logs", "-c", str(night["cfg"]))
    assert r.returncode == 0 and "reference job:" in r.stdout
    p = subprocess.Popen([sys.executable, "-m", "daemon.cli", "logs", "-f", "-n", "0", "--run", "1",
                          "-c", str(night["cfg"])], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        time.sleep(1.0)
        log = night["tmp"] / "state" / "runs" / "1" / "job.log"
        with open(log, "a") as f:  # as the job would write it
            f.write("a line written while following\n")
        assert p.stdout.readline().strip() == "a line written while following"
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    r = nightshift("logs", "--run", "9", "-c", str(night["cfg"]))
    assert r.returncode == 1 and "there is no run 9" in r.stderr


@pytest.mark.browser
@needs_chromium
def test_dashboard_at_phone_width_has_axes_thresholds_markers_and_whole_reasons(night, tmp_path):
    dom = chromium_dom(night["base"] + "/", tmp_path)
    assert 'data-ready="1"' in dom
    tchart = dom[dom.index('id="tchart"'):dom.index('id="lchart"')]
    assert "°C</text>" in tchart and re.search(r">\d\d:\d\d(:\d\d)?</text>", tchart)  # y unit, time axis
    assert tchart.count('class="threshold"') == 2 and "pause 88 °C" in tchart and "resume 74 °C" in tchart
    assert "marker marker-pause" in tchart and "marker marker-resume" in tchart
    lchart = dom[dom.index('id="lchart"'):]
    assert "marker marker-pause" in lchart  # the same markers on the loss chart's timeline
    hot = [m for k, _, m in _events(night, "paused_hot")][0]
    assert f"paused_hot: {hot}" in dom.replace("&gt;", ">")  # the whole reason, not cut
    shot = tmp_path / "dashboard.png"
    chromium_screenshot(night["base"] + "/", shot, tmp_path)
    assert shot.stat().st_size > 10000
    art = ROOT / "tests" / "artifacts"
    art.mkdir(exist_ok=True)
    shutil.copy(shot, art / "dashboard-phone.png")


def test_config_edits_are_said_once_and_the_cli_finds_the_serving_port(night):
    cfg, port = night["cfg"], night["port"]
    good = cfg.read_text()
    before = len(_events(night, "config"))
    bad = good.replace("pause_at_c = 88.0", 'pause_at_c = "hot"')
    cfg.write_text(bad)
    wait_for(lambda: len(_events(night, "config")) > before, 20, what="the rejection")
    cfg.write_text(bad)  # saved again: not news
    time.sleep(1.5)
    rejected = [m for k, lvl, m in _events(night, "config")[before:] if "rejected" in m]
    assert len(rejected) == 1 and "pause_at_c" in rejected[0]
    moved = good.replace(f"port = {port}", f"port = {port + 1}")
    cfg.write_text(moved)
    wait_for(lambda: any("wait for a daemon restart" in m for _, _, m in _events(night, "config")), 20,
             what="the restart warning")
    r = nightshift("status", "-c", str(cfg))  # the file says port+1; the daemon serves port
    assert r.returncode == 0 and "nightshift" in r.stdout and "not running" not in r.stdout
    n = len(_events(night, "config"))
    cfg.write_text(good)  # reverted
    wait_for(lambda: len(_events(night, "config")) > n, 20, what="the revert")
    time.sleep(1.0)
    after = [m for _, _, m in _events(night, "config")[n:]]
    assert after == ["Config reloaded: api.port edited back to the value the daemon runs with, so "
                     "nothing was applied and no restart is needed."]  # not "now in force"
    waits = [m for _, _, m in _events(night, "config") if "wait for a daemon restart" in m]
    assert len(waits) == 1


def test_stop_then_pause_reads_stopped_once_and_nothing_stale(night):
    r = nightshift("stop", "-c", str(night["cfg"]), timeout=120)
    assert r.returncode == 0
    st = _status(night["base"])
    assert st["display_state"] == "STOPPED"
    assert st["steps_per_s"] is None and st["eta_s"] is None and st["paused_reason"] is None
    text = _get(night["base"], "/status", "text/plain")
    assert text.startswith("nightshift  STOPPED") and "ETA" not in text and "rate" not in text
    r = nightshift("pause", "-c", str(night["cfg"]))
    assert r.returncode == 1
    assert r.stdout.strip() == "Nothing to pause: the run is stopped."
    assert r.stdout.count("stopped") == 1


def test_the_log_says_each_config_thing_once(night):
    kill_group(night["proc"])
    out = night["proc"].stdout.read()
    assert out.count("Config edit rejected") == 1, out
    assert out.count("wait for a daemon restart") == 1
