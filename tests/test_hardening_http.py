"""Issue 31, items 2 and 9: a hostile web page against the API on a real uvicorn (loopback).

A ``text/plain`` POST is a CORS simple request any page can send to 127.0.0.1, and a page that
rebinds its DNS name to 127.0.0.1 can read what it likes from it. So: the token of a write is
checked before its body is read, a body is bounded while it streams in (413), a 422 never
echoes the input, and a Host that is not the daemon's is refused (421)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import psutil
import pytest

from daemon.web import api
from tests.helpers import free_port, kill_group, start_daemon, wait_for, write_config
from tests.test_hardening_api import TOKEN, FakeSource, Served


@pytest.fixture
def served():
    src = FakeSource()
    s = Served(src)
    s.source = src  # type: ignore[attr-defined]
    yield s
    s.close()


def _request(port: int, method: str, path: str, host: str | None = None, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            c.putheader("Host", host)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _stream_until_answered(port: int, head: bytes, chunk: bytes, limit: int
                           ) -> tuple[bytes, int, float]:
    """Send ``head`` then ``chunk`` after chunk (up to ``limit`` bytes) while watching for an
    answer; return (the answer's first bytes, body bytes sent by then, seconds it took)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head)
    s.setblocking(False)
    sent, t0, answer = 0, time.monotonic(), b""
    try:
        while sent < limit and time.monotonic() - t0 < 60:
            try:
                answer = s.recv(4096)
                break  # an answer (or b"": closed)
            except BlockingIOError:
                pass
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.005)  # the server stopped reading: it should answer now
            except (BrokenPipeError, ConnectionResetError):
                break
        if not answer:
            s.settimeout(10)
            try:
                answer = s.recv(4096)
            except (ConnectionResetError, TimeoutError):
                pass
        return answer, sent, time.monotonic() - t0
    finally:
        s.close()


def test_a_page_that_rebinds_its_name_to_loopback_reads_nothing(served):
    for path in ("/status", "/status?format=json", "/runs", "/events", "/queue", "/metrics",
                 "/openapi.json", "/"):
        code, body = _request(served.port, "GET", path, host="evil.example")
        assert code == 421, (path, code, body[:200])
        assert b"evil.example" in body and b"allowed_hosts" in body and b"running" not in body
        code, _ = _request(served.port, "GET", path, host=f"evil.example:{served.port}")
        assert code == 421, path
    for host in (f"127.0.0.1:{served.port}", "localhost", f"localhost:{served.port}", "[::1]:80"):
        code, _ = _request(served.port, "GET", "/status?format=json", host=host)
        assert code == 200, host
    code, _ = _request(served.port, "POST", "/control/pause", host="evil.example",
                       headers={"Authorization": f"Bearer {TOKEN}"}, body=b"")
    assert code == 421 and served.source.controls == []


def test_allowed_hosts_for_loopback_wildcard_and_extra_names():
    assert api.allowed_hosts("127.0.0.1") >= {"127.0.0.1", "localhost", "::1"}
    assert "evil.example" not in api.allowed_hosts("127.0.0.1")
    assert api.allowed_hosts("::1") >= {"::1", "localhost", "127.0.0.1"}
    wild = api.allowed_hosts("0.0.0.0", ["box.lan"])
    assert {"localhost", "box.lan", socket.gethostname().lower()} <= wild
    assert "127.0.0.1" in wild and "evil.example" not in wild
    lan = api.allowed_hosts("192.168.7.9")
    assert "192.168.7.9" in lan and "evil.example" not in lan


def test_a_streamed_text_plain_post_without_token_is_refused_before_its_body_is_read(served):
    """The issue's attack: 1 GiB of text/plain to POST /queue, no token. The answer is a 401
    while the body is still being sent, and the server stops reading (it closes)."""
    head = (f"POST /queue HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {2**30}\r\n\r\n").encode()
    answer, sent, took = _stream_until_answered(served.port, head, b"A" * 65536, 2**30)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert sent < 64 * 2**20 and took < 10, (sent, took)  # at once, not after a gigabyte
    assert served.source.edits == []


def test_a_body_over_the_limit_is_413_by_length_or_while_streaming_and_never_echoed(served):
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    big = json.dumps({"command": ["python", "x" * (api.MAX_BODY + 10)]}).encode()
    code, body = _request(served.port, "POST", "/queue", body=big, headers=auth)
    assert code == 413 and b"xxxx" not in body
    # chunked: no Content-Length, the limit is counted as the body arrives
    head = (f"POST /queue HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    piece = b"x" * 16384
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    answer, sent, took = _stream_until_answered(served.port, head, chunk, 2**30)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"xxxx" not in answer and sent < 64 * 2**20
    assert served.source.edits == []
    # within the limit it works
    code, body = _request(served.port, "POST", "/queue", headers=auth,
                          body=json.dumps({"command": ["python", "train.py"]}).encode())
    assert code == 200 and served.source.edits == ["queue_add"]


def test_a_422_names_what_is_wrong_but_never_echoes_the_input(served):
    secret = "hunter2-" + "s" * 5000
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    code, body = _request(served.port, "POST", "/queue", headers=auth,
                          body=json.dumps({"command": secret, "env": {"K": 1}}).encode())
    assert code == 422 and b"hunter2" not in body, body[:300]
    detail = json.loads(body)["detail"]
    assert any(d["loc"][-1] == "command" for d in detail)
    code, body = _request(served.port, "POST", "/queue", headers=auth, body=b"hunter2 not json")
    assert code == 422 and b"hunter2" not in body


def test_every_write_needs_the_token_before_anything_and_no_token_means_403():
    src = FakeSource()
    s = Served(src, token=None)
    try:
        for method, path in (("POST", "/control/pause"), ("POST", "/queue"),
                             ("DELETE", "/queue/3"), ("POST", "/queue/3/move?to=1"),
                             ("POST", "/nowhere"), ("PUT", "/status")):
            code, _ = _request(s.port, method, path, body=b"{}",
                               headers={"Authorization": "Bearer anything"})
            assert code == 403, (method, path, code)
        assert src.controls == [] and src.edits == []
    finally:
        s.close()


def test_no_cdn_docs_and_the_schema_lists_the_refusals(served):
    for path in ("/docs", "/redoc"):
        assert _request(served.port, "GET", path)[0] == 404
    code, body = _request(served.port, "GET", "/openapi.json")
    schema = json.loads(body)
    assert b"cdn" not in body.lower()
    for path, method in (("/control/{action}", "post"), ("/queue", "post"),
                         ("/queue/{entry_id}", "delete"), ("/queue/{entry_id}/move", "post")):
        codes = set(schema["paths"][path][method]["responses"])
        assert {"401", "403", "404", "413", "421"} <= codes, (path, codes)
    assert "421" in schema["paths"]["/status"]["get"]["responses"]


def _rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


@pytest.mark.slow
def test_a_gigabyte_post_without_token_leaves_the_real_daemon_small(tmp_path):
    """The real daemon: 1 GiB of text/plain streamed to POST /queue without a token. It
    answers 401 at once and its RSS stays under 150 MB (it was 6.2 GB)."""
    port = free_port()
    cfg = write_config(tmp_path, {"job": {"command": ["sleep", "600"]},
                                  "api": {"enabled": True, "port": port}})
    d = start_daemon(cfg)
    try:
        wait_for(lambda: _status_ok(port), 60, what="the daemon's API")
        peak = [_rss_mb(d.pid)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(_rss_mb(d.pid))
                time.sleep(0.05)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        head = (f"POST /queue HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {2**30}\r\n\r\n").encode()
        answer, sent, took = _stream_until_answered(port, head, b"A" * 2**20, 2**30)
        # and the same once more without Content-Length (chunked), as a browser's stream would
        chunk = b"100000\r\n" + b"A" * 2**20 + b"\r\n"
        head2 = (f"POST /queue HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/plain\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n").encode()
        answer2, sent2, took2 = _stream_until_answered(port, head2, chunk, 2**30)
        stop.set()
        t.join(5)
        assert answer.startswith(b"HTTP/1.1 401") and took < 10, (answer[:100], sent, took)
        assert answer2.startswith(b"HTTP/1.1 401") and took2 < 10, (answer2[:100], sent2, took2)
        assert max(peak) < 150, f"daemon RSS peaked at {max(peak):.0f} MB"
        assert _status_ok(port), "the daemon stopped answering"
    finally:
        kill_group(d)


def _status_ok(port: int) -> bool:
    try:
        return _request(port, "GET", "/healthz")[0] == 200
    except OSError:
        return False


def test_check_config_accepts_allowed_hosts(tmp_path, capsys):
    from daemon import cli
    cfg = write_config(tmp_path, {"job": {"command": ["true"]},
                                  "api": {"allowed_hosts": ["box.lan"]}})
    assert cli.main(["check-config", "-c", str(cfg)]) == 0
    assert 'allowed_hosts = ["box.lan"]' in capsys.readouterr().out
