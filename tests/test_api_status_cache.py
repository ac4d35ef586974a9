"""/status under load (issue 18): its bodies are rendered once per published snapshot, and a
plain GET /status is answered without FastAPI's per-request work, with the same bytes, types
and negotiation as the FastAPI route, which still validates everything else."""

from __future__ import annotations

import math
import urllib.error
import urllib.request

import pytest

from daemon.web import api, statusfmt
from tests.test_hardening_api import TOKEN, FakeSource, Served


class Snapshots:
    """A status source like the Supervisor: one dict per tick, the same object between ticks."""

    def __init__(self, st):
        self.st = st

    def status(self):
        return self.st


def test_json_is_rendered_once_per_snapshot_and_again_for_the_next_one():
    src = Snapshots({"state": "running", "loss": math.nan})
    cache = api.StatusCache(src)
    first = cache.json()
    assert cache.json() is first and first == b'{"state":"running","loss":null}'
    src.st = {"state": "paused", "loss": 1.5}
    assert cache.json() == b'{"state":"paused","loss":1.5}'


def test_text_is_rendered_once_per_snapshot_but_its_ago_keeps_counting():
    """Within a second the same bytes; a snapshot older than a second (a stuck supervisor)
    is re-rendered so "N s ago" does not freeze; a clock going backwards re-renders too."""
    now = [1000.0]
    st = {"state": "running", "last_event": {"t": 990.0, "kind": "x", "message": "resumed"}}
    cache = api.StatusCache(Snapshots(st), clock=lambda: now[0])
    first = cache.text()
    assert b"10s ago" in first and first == statusfmt.render(st, now=1000.0).encode()
    now[0] = 1000.9
    assert cache.text() is first
    now[0] = 1001.0
    assert b"11s ago" in cache.text()
    now[0] = 999.0
    assert b"9s ago" in cache.text()


@pytest.fixture(scope="module")
def served():
    s = Served(FakeSource())
    yield s
    s.close()


def _get(base, path, accept=None):
    req = urllib.request.Request(base + path, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read()


@pytest.mark.parametrize("query,accept,kind", [
    ("", None, "text"), ("", "text/plain", "text"), ("", "application/json", "json"),
    ("", "text/html, application/json;q=0.9", "json"), ("?format=json", None, "json"),
    ("?format=text", "application/json", "text"), ("?format=json", "text/plain", "json"),
])
def test_fast_path_and_fastapi_route_negotiate_alike_with_the_same_bytes(served, query, accept, kind):
    """The fast path answers the plain query; an extra parameter (ignored by the route) sends
    the same request through FastAPI: status, content type and body are identical."""
    fast = _get(served.base, "/status" + query, accept)
    routed = _get(served.base, "/status" + (query + "&" if query else "?") + "via=fastapi", accept)
    assert fast == routed
    code, ctype, body = fast
    assert code == 200
    if kind == "json":
        assert ctype == "application/json" and body.startswith(b"{") and b"NaN" not in body
    else:
        assert ctype == "text/plain; charset=utf-8" and body.endswith(b"\n") and b"{" not in body


def test_an_invalid_format_is_still_a_422_and_other_methods_are_not_answered_by_the_fast_path(served):
    assert _get(served.base, "/status?format=xml")[0] == 422
    # with the token (a write without one is refused before routing: 401), the route says 405
    req = urllib.request.Request(served.base + "/status", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        urllib.request.urlopen(req, timeout=5)
        code = 200
    except urllib.error.HTTPError as e:
        code = e.code
    assert code == 405
