"""The HTTP API on a real uvicorn inside the real daemon, on a free loopback port."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.web.api import check_bind
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


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    port = free_port()
    job = [sys.executable, "-m", "trainer.reference", "--steps", "100000", *SMALL, "--max-steps-per-s", "20"]
    cfg = write_config(tmp, {"job": {"command": job}, "api": {"enabled": True, "port": port},
                             "gpu": {"sensor": "simulated", "poll_interval_s": 0.5,
                                     "simulated": {"load_c": 10.0}}})
    d = start_daemon(cfg)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(base, "/status?format=json")[1].get("step"), 60, what="a running job")
        yield {"base": base, "cfg": cfg, "tmp": tmp, "proc": d,
               "token": (tmp / "state" / "token").read_text().strip()}
    finally:
        kill_group(d)


def _get(base, path, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers or {}), timeout=10) as r:
            body = r.read()
            ct = r.headers.get("content-type", "")
            return r.status, (json.loads(body) if "json" in ct else body.decode())
    except urllib.error.URLError:
        return 0, {}


def _post(base, path, token=None):
    h = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(base + path, data=b"", method="POST", headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.slow
def test_status_text_fits_a_phone_and_json_has_the_documented_fields(daemon):
    code, text = _get(daemon["base"], "/status")
    assert code == 200 and "RUNNING" in text and "step" in text and "temp  edge" in text
    assert max(len(line) for line in text.splitlines()) <= 42
    code, st = _get(daemon["base"], "/status", {"Accept": "application/json"})
    for key in ("state", "step", "total_steps", "progress_pct", "loss", "loss_trend", "steps_per_s",
                "eta_s", "temps", "resets", "backend", "cloud", "checkpoint", "last_event"):
        assert key in st
    assert st["state"] == "running" and st["temps"]["edge_c"] is not None


@pytest.mark.slow
def test_metrics_parse_with_the_prometheus_parser(daemon):
    code, text = _get(daemon["base"], "/metrics")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert "nightshift_step" in fams and fams["nightshift_step"].samples[0].value > 0
    states = {s.labels["state"]: s.value for s in fams["nightshift_state"].samples}
    assert states["running"] == 1.0 and sum(states.values()) == 1.0
    assert any(s.labels["sensor"] == "edge" for s in fams["nightshift_temperature_celsius"].samples)


@pytest.mark.slow
def test_events_paged_newest_first_and_filtered(daemon):
    code, evs = _get(daemon["base"], "/events?limit=2")
    assert code == 200 and len(evs) == 2 and evs[0]["id"] > evs[1]["id"]
    code, older = _get(daemon["base"], f"/events?limit=50&before={evs[1]['id']}")
    assert all(e["id"] < evs[1]["id"] for e in older)
    code, only = _get(daemon["base"], "/events?kind=state")
    assert only and all(e["kind"] == "state" for e in only)


@pytest.mark.slow
def test_controls_need_the_token_and_change_the_job_end_to_end(daemon):
    base, token = daemon["base"], daemon["token"]
    assert _post(base, "/control/pause")[0] == 401
    assert _post(base, "/control/pause", "wrong")[0] == 401
    assert _post(base, "/control/nonsense", token)[0] == 404
    code, res = _post(base, "/control/pause", token)
    assert code == 200 and res["ok"]
    def recs():
        p = daemon["tmp"] / "state" / "runs" / "1" / "progress.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()]
    wait_for(lambda: any(r["kind"] == "held" for r in recs()), 30, what="held")
    code, res = _post(base, "/control/checkpoint", token)
    code, res = _post(base, "/control/resume", token)
    assert code == 200 and res["ok"]
    wait_for(lambda: any(r["kind"] == "released" for r in recs()), 30, what="released")
    # the CLI client does the same with the token file
    r = nightshift("pause", "-c", str(daemon["cfg"]))
    assert r.returncode == 0 and r.stdout.startswith("Paused")  # a sentence (issue 19)
    r = nightshift("resume", "-c", str(daemon["cfg"]))
    assert r.returncode == 0
    r = nightshift("status", "-c", str(daemon["cfg"]))
    assert r.returncode == 0 and "nightshift" in r.stdout


@pytest.mark.slow
def test_no_secret_in_responses_or_logs(daemon):
    token = daemon["token"]
    for path in ("/status", "/status?format=json", "/events?limit=1000", "/metrics", "/"):
        code, body = _get(daemon["base"], path)
        assert token not in (body if isinstance(body, str) else json.dumps(body))
    log = (daemon["tmp"] / "state" / "nightshift.db").read_bytes()
    assert token.encode() not in log
    mode = os.stat(daemon["tmp"] / "state" / "token").st_mode & 0o777
    assert mode == 0o600


def test_non_loopback_bind_without_token_is_refused():
    with pytest.raises(ValueError, match="without an API token"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")


@pytest.mark.slow
def test_cli_says_clearly_when_the_daemon_is_not_running(tmp_path):
    cfg = write_config(tmp_path, {"job": {"command": ["true"]}, "api": {"port": free_port()}})
    r = nightshift("status", "-c", str(cfg))
    assert r.returncode == 1 and "not running" in r.stdout and "nightshift run" in r.stdout


@pytest.mark.slow
def test_openapi_schema_fuzzed_without_5xx(daemon):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, settings
    schema = schemathesis.openapi.from_url(daemon["base"] + "/openapi.json")
    failures = []
    def fuzz(operation, auth):
        post = operation.method.upper() == "POST"

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @schemathesis_given(operation)
        def check(case):
            headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
            if auth:
                headers["Authorization"] = auth
            case.headers = headers
            resp = case.call(base_url=daemon["base"])
            if resp.status_code >= 500 or (post and resp.status_code < 400):
                failures.append((operation.method, case.path, resp.status_code))
        check()

    for op in schema.get_all_operations():
        operation = op.ok()
        # POST controls: with no and a wrong token only (the right one would stop this job;
        # tests/test_hardening_api.py fuzzes all three against a faked status source)
        for auth in ((None, "Bearer wrong") if operation.method.upper() == "POST" else (None,)):
            fuzz(operation, auth)
    assert not failures, failures
    assert daemon["proc"].poll() is None  # the daemon (and its job) is still there


def schemathesis_given(operation):
    from hypothesis import given
    return given(case=operation.as_strategy())


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_dashboard_renders_its_charts_in_headless_chromium(daemon, tmp_path):
    art = ROOT / "tests" / "artifacts"
    art.mkdir(exist_ok=True)
    dom = chromium_dom(daemon["base"] + "/", tmp_path, width=412, height=915)
    assert 'data-ready="1"' in dom
    assert "<polyline" in dom and 'id="tchart"' in dom and 'data-points="' in dom
    assert 'id="runs" data-rows="1"' in dom  # the comparison table is filled from GET /runs
    chromium_screenshot(daemon["base"] + "/", art / "dashboard.png", tmp_path, width=412, height=915)
    assert (art / "dashboard.png").stat().st_size > 5000
