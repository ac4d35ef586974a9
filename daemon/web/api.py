"""The HTTP API: FastAPI served by uvicorn inside the daemon's event loop (docs/api.md).

Handlers only read the daemon's in-memory status and the store; controls are queued to the
daemon's loop (``controls.control``), so the supervisor is never blocked by a request. Secrets
never appear in a response or a log line.

Hostile local clients (issue 13): anyone on the machine can connect without a token, so
- idle connections are bounded: a connection that sends no complete request header within
  ``HEADER_TIMEOUT_S`` is closed, and at ``MAX_CONNECTIONS`` the oldest idle one is closed to
  admit a new one, so a flood of half-open sockets never locks /status out; keep-alive is
  short and h11's buffer for an incomplete request is bounded;
- concurrency is bounded (uvicorn's ``limit_concurrency``: 503 beyond it);
- RLIMIT_NOFILE is raised to its hard limit when serving (the units set ``LimitNOFILE=``);
- every JSON response is strict JSON (a NaN from a job becomes null);
- no client input produces a traceback: a handler's exception becomes one log line and a 500.

Hostile web pages (issue 31): ``_Guard``, the outermost layer, answers before any handler or
body read. A request whose ``Host`` is not one of the daemon's names (``allowed_hosts``) gets
421: a page that rebinds its DNS name to 127.0.0.1 cannot read /status, /runs or /events. A
write (any method but GET/HEAD/OPTIONS) is authorized from its headers alone (401/403) before
one byte of its body is read: a ``text/plain`` POST is a CORS "simple" request any page can
send, and FastAPI reads and validates the whole body before a route's own token check. A body
over ``MAX_BODY`` is refused with 413, from Content-Length at once or while it streams in. Each
of these answers closes the connection, so the rest of a large body is never read. A 422 never
echoes the input (it could be a megabyte of it). /docs and /redoc are off: they load Swagger's
JavaScript from a CDN; /openapi.json stays and lists the 401/403/404/413/421 answers.

/status is what phones and dashboards poll, so it has a fast path (``_StatusFastPath``): the
daemon publishes one immutable status snapshot per tick, its JSON and text bytes are rendered
once per snapshot (``StatusCache``), and a plain ``GET /status`` (no query, or exactly
``format=json``/``format=text``) is answered from them without FastAPI's routing, parameter
validation and response building. Every other /status request (an invalid ``format``, other
parameters) takes the FastAPI route, which serves the same cached bytes, so validation errors
and the OpenAPI schema are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import resource
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Annotated, Protocol, cast

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from daemon.policy.records import Answer, QueueItem, RunTableRow, Status
from daemon.state.store import EventRow, ReadingRow
from daemon.web import auth, metrics, statusfmt

log = logging.getLogger(__name__)
ACTIONS = ("pause", "resume", "checkpoint", "offload", "stop")
MAX_CONNECTIONS = 256  # open connections; beyond it the oldest idle one is closed
LIMIT_CONCURRENCY = MAX_CONNECTIONS + 64  # connections + running requests; 503 beyond
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_INCOMPLETE_EVENT = 16 * 1024  # bytes of an unfinished request line + headers
MAX_EVENT_ID = 2**63 - 1  # SQLite's INTEGER
MAX_BODY = 64 * 1024  # the largest request body accepted (a queue entry is a few KB at most)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # everything else needs the token
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (old soft, new soft)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return soft, hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, e)
    return soft, soft


def _finite(v: object) -> object:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def strict_json(content: object) -> bytes:
    """Strict JSON whatever the content: NaN and +-Infinity become null (JSON has neither,
    and a client's parser rejects the whole document over one of them)."""
    return json.dumps(_finite(content), ensure_ascii=False, allow_nan=False, default=str,
                      separators=(",", ":")).encode("utf-8")


class SafeJSONResponse(JSONResponse):
    """Every JSON response of the API: strict_json."""

    def render(self, content: object) -> bytes:
        return strict_json(content)


class StatusCache:
    """The /status bodies of one snapshot, rendered once. The source publishes a new dict each
    tick and never mutates a published one, so the dict's identity is the key; the cache holds
    the dict itself, so its id cannot be recycled while cached. The text view says "N s ago",
    so it is also re-rendered once it is a second old (a snapshot outlives its tick only when
    the supervisor is stuck, and then the "ago" must keep counting)."""

    TEXT_MAX_AGE_S = 1.0

    def __init__(self, source: StatusSource, clock: Callable[[], float] | None = None):
        self.source = source
        self.clock = clock or time.time
        self._json: tuple[Status, bytes] | None = None
        self._text: tuple[Status, float, bytes] | None = None

    def json(self) -> bytes:
        st = self.source.status()
        if self._json is None or self._json[0] is not st:
            self._json = (st, strict_json(st))
        return self._json[1]

    def text(self) -> bytes:
        st, now = self.source.status(), self.clock()
        c = self._text
        if c is None or c[0] is not st or not 0 <= now - c[1] < self.TEXT_MAX_AGE_S:
            # a NaN reads as unknown; _finite keeps the document's shape (every number of a
            # Status may be None), so it is a Status still
            body = statusfmt.render(cast(Status, _finite(st)), now=now).encode("utf-8")
            self._text = c = (st, now, body)
        return c[2]


JSON_TYPE = b"application/json"
TEXT_TYPE = b"text/plain; charset=utf-8"


def wants_json(format: str | None, accept: str) -> bool:
    """``?format=`` wins; without it, an Accept naming application/json gets JSON, else text."""
    return format == "json" or (format is None and "application/json" in accept)


class _StatusFastPath:
    """ASGI middleware: answers a plain ``GET /status`` from the StatusCache (two sends, no
    routing or validation); everything else goes on to FastAPI unchanged."""

    QUERIES = {b"": None, b"format=json": "json", b"format=text": "text"}

    def __init__(self, app: ASGIApp, cache: StatusCache):
        self.app = app
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != "/status" or scope["method"] != "GET"
                or scope["query_string"] not in self.QUERIES or scope.get("root_path")):
            return await self.app(scope, receive, send)
        fmt = self.QUERIES[scope["query_string"]]
        accept = ""
        if fmt is None:
            for k, v in scope["headers"]:
                if k == b"accept":
                    accept = v.decode("latin-1")
                    break
        if wants_json(fmt, accept):
            body, ctype = self.cache.json(), JSON_TYPE
        else:
            body, ctype = self.cache.text(), TEXT_TYPE
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": body})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header timeout and eviction of idle connections."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened = self.loop.time()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._header_timeout)
        if len(self.connections) > MAX_CONNECTIONS:
            idle = [c for c in self.connections if c is not self and _idle(c)]
            if idle:
                oldest = min(idle, key=lambda c: getattr(c, "_opened", 0.0))
                oldest.transport.close()
                self.connections.discard(oldest)

    def _header_timeout(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()  # never sent a whole request: a half-open or slow client

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_timer.cancel()
        super().connection_lost(exc)


def _idle(conn: object) -> bool:  # a uvicorn protocol, read by getattr
    cycle = getattr(conn, "cycle", None)
    return cycle is None or bool(getattr(cycle, "response_complete", False))


class _NoTraceback:
    """ASGI middleware: an exception in a handler becomes one log line and a 500, never a
    traceback in the journal (a client could otherwise write 75 lines there per request)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # noqa: BLE001 - the edge: log one line, answer 500
            log.warning("HTTP %s %s failed: %s: %.200s", scope.get("method"), scope.get("path"),
                        type(e).__name__, e)
            if scope.get("type") == "http" and not started:
                body = b'{"detail":"internal error; see the daemon log"}'
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def allowed_hosts(host: str, extra: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """The names a client may put in ``Host`` for a daemon bound to ``host`` (lowercase, no
    port, IPv6 without brackets): the address itself and ``extra`` ([api] allowed_hosts); for a
    loopback address the loopback names; for a wildcard bind also this machine's host names
    and interface addresses (what another machine on the network would use)."""
    names = {host.strip("[]").lower(), *(h.strip("[]").lower() for h in extra)}
    if _is_loopback(host) or host in ("0.0.0.0", "::", ""):
        names |= LOOPBACK_NAMES
    if host in ("0.0.0.0", "::", "") or not _is_loopback(host):
        import socket
        with contextlib.suppress(OSError):
            hn = socket.gethostname()
            names |= {hn.lower(), socket.getfqdn().lower(), f"{hn.lower()}.local"}
        if host in ("0.0.0.0", "::", ""):
            import psutil
            with contextlib.suppress(OSError):
                for addrs in psutil.net_if_addrs().values():
                    names |= {a.address.split("%")[0].lower() for a in addrs
                              if a.family in (socket.AF_INET, socket.AF_INET6)}
    names.discard("")
    return frozenset(names)


def _host_name(value: str) -> str:
    """``Host`` without its port: "127.0.0.1:8742" -> "127.0.0.1", "[::1]:80" -> "::1"."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class _BodyTooLarge(Exception):
    pass


class _Guard:
    """ASGI middleware, outermost: the Host check, the token of a write before its body is
    read, the body limit (see the module's docstring). Its refusals close the connection."""

    def __init__(self, app: ASGIApp, token: str | None, hosts: frozenset[str] | None,
                 max_body: int = MAX_BODY):
        self.app = app
        self.token = token
        self.hosts = hosts  # None: any Host (a test app served on an unknown address)
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers: dict[bytes, bytes] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k, v)
        host = headers.get(b"host")
        if self.hosts is not None and host is not None and \
                _host_name(host.decode("latin-1")) not in self.hosts:
            return await _refuse(send, 421, "this daemon does not answer to the host name "
                                 f"{_host_name(host.decode('latin-1'))[:100]!r} (a DNS rebinding "
                                 "page?); use its address, or add the name to [api] allowed_hosts")
        if scope["method"] not in READ_METHODS:
            auth_header = headers.get(b"authorization")
            if self.token is None:
                return await _refuse(send, 403, "controls are disabled: the daemon has no API token")
            if not auth.check(auth_header.decode("latin-1") if auth_header else None, self.token):
                return await _refuse(send, 401, "missing or wrong token: send Authorization: Bearer "
                                     "<token> (the token file is in the daemon's state directory)",
                                     [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _refuse(send, 413, f"request body larger than {self.max_body} bytes")
        seen = 0
        started = refused = False

        async def limited_receive() -> Message:
            # FastAPI turns an exception raised while it reads the body into a 400, so the 413
            # is sent from here and whatever the app answers after it is dropped
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body and not refused:
                    refused = True
                    if not started:
                        await _refuse(send, 413, f"request body larger than {self.max_body} bytes")
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, tracked_send)


async def _refuse(send: Send, status: int, detail: str,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """An error answer that also closes the connection: the rest of the body stays unread."""
    body = strict_json({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"description": "missing or wrong token (Authorization: Bearer <token>)"},
    403: {"description": "controls are disabled: the daemon has no API token"},
    404: {"description": "no such action or queue entry"},
    413: {"description": f"request body larger than {MAX_BODY} bytes"},
    421: {"description": "the Host header is not one of the daemon's names"},
}
READ_RESPONSES: dict[int | str, dict[str, object]] = {k: ERROR_RESPONSES[k] for k in (413, 421)}


class QueueEntry(BaseModel):
    name: str | None = Field(None, max_length=200)
    command: list[Annotated[str, Field(max_length=4096)]] = Field(min_length=1, max_length=1000)
    env: dict[str, Annotated[str, Field(max_length=4096)]] = Field(default_factory=dict, max_length=200)
    total_steps: int | None = Field(None, ge=1, le=2**53)


# What a route returns as its response model: FastAPI builds the OpenAPI schema from the
# annotation, and pydantic takes no typing.TypedDict before Python 3.12, so a route says "JSON
# objects" and the source's methods say which (EventRow, ReadingRow, ...).
JSONRows = Sequence[Mapping[str, object]]
JSONBody = Mapping[str, object]


class StatusSource(Protocol):
    """What the reads answer from (the daemon's status face, daemon/core/statusface.py)."""
    def status(self) -> Status:
        """The published snapshot: the same object until the next one, never mutated."""
        ...
    def history(self, since: float | None) -> list[ReadingRow]: ...
    def events(self, limit: int, before_id: int | None, kind: str | None) -> list[EventRow]: ...
    def runs(self, against: int | None = None) -> list[RunTableRow]: ...
    def queue(self) -> list[QueueItem]: ...


class Controls(Protocol):
    """Where the writes are queued for the daemon's tick (the Supervisor)."""
    async def control(self, action: str) -> Answer: ...
    def submit(self, action: str, arg: JSONBody | None = None) -> Awaitable[Answer]: ...


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the controls beyond this machine without a token."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        raise ValueError(f"refusing to listen on {host} without an API token: non-loopback "
                         "addresses need [api] token_file (it is created on first start)")


def create_app(source: StatusSource, controls: Controls, token: str | None,
               hosts: frozenset[str] | None = allowed_hosts("127.0.0.1")) -> FastAPI:
    """The API app: reads from ``source``, writes queued to ``controls``. ``hosts``: the names
    accepted in ``Host`` (``allowed_hosts``; the default fits a daemon on 127.0.0.1); None
    accepts any."""
    # no /docs or /redoc: FastAPI's pages load Swagger's JavaScript from a CDN
    app = FastAPI(title="nightshiftd", version="1", description="Status and controls of the "
                  "nightshift daemon. Controls need `Authorization: Bearer <token>`.",
                  default_response_class=SafeJSONResponse, docs_url=None, redoc_url=None,
                  responses=READ_RESPONSES)
    cache = StatusCache(source)
    app.add_middleware(_StatusFastPath, cache=cache)  # innermost: errors still pass _NoTraceback
    app.add_middleware(_NoTraceback)
    app.add_middleware(_Guard, token=token, hosts=hosts)  # outermost: before any body is read

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # what was wrong and where, never the input itself (it may be large, or a secret)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                  for e in exc.errors()[:20]]
        return SafeJSONResponse({"detail": errors}, status_code=422)
    registry = metrics.make_registry(source.status)

    # async: these only read the status snapshot, so they run on the loop, not in a thread
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/status", response_model=None)
    async def status(request: Request,
                     format: str | None = Query(None, pattern="^(json|text)$")) -> Response:
        # a plain GET /status is answered by _StatusFastPath; this route serves the rest
        if wants_json(format, request.headers.get("accept", "")):
            return Response(cache.json(), media_type="application/json")
        return PlainTextResponse(cache.text())

    # the store is read on the loop too (short indexed queries): nothing runs in a thread pool
    @app.get("/events")
    async def events(limit: int = Query(50, ge=1, le=1000),
               before: int | None = Query(None, ge=0, le=MAX_EVENT_ID),
               kind: str | None = Query(None, max_length=64)) -> JSONRows:
        return source.events(limit, before, kind)

    @app.get("/api/history")
    async def history(since: float | None = Query(None, ge=0, le=1e12)) -> JSONRows:
        return source.history(since)

    @app.get("/metrics", response_model=None)
    async def prometheus() -> Response:
        return Response(metrics.exposition(registry), media_type="text/plain; version=0.0.4")

    dashboard_html = resources.files("daemon.web").joinpath("dashboard.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def dashboard() -> str:
        return dashboard_html

    def authorize(authorization: str | None) -> None:
        if token is None:
            raise HTTPException(403, "controls are disabled: the daemon has no API token")
        if not auth.check(authorization, token):
            raise HTTPException(401, "missing or wrong token: send Authorization: Bearer <token> "
                                "(the token file is in the daemon's state directory)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.post("/control/cancel", responses=ERROR_RESPONSES)
    async def cancel(run: int | None = Query(None, ge=1, le=MAX_EVENT_ID),
                     queued: int | None = Query(None, ge=1, le=MAX_EVENT_ID),
                     authorization: str | None = Header(None)) -> JSONBody:
        """End the current run (or ``run``) as cancelled after a durable checkpoint, the queue
        moving on; ``queued``: remove that waiting queue entry."""
        authorize(authorization)
        log.info("control cancel requested over HTTP")
        return await controls.submit("cancel", {"run": run, "queued": queued})

    @app.post("/control/{action}", responses=ERROR_RESPONSES)
    async def control(action: str, authorization: str | None = Header(None)) -> JSONBody:
        if action not in ACTIONS:
            raise HTTPException(404, f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        authorize(authorization)
        log.info("control %s requested over HTTP", action)
        return await controls.control(action)

    @app.get("/runs", response_model=None)
    async def runs(against: int | None = Query(None, ge=1, le=MAX_EVENT_ID),
                   format: str | None = Query(None, pattern="^(json|text)$")) -> Response | JSONBody:
        """Every run, oldest first: the night's comparison table; ``changes`` against run
        ``against`` (default: the night's first run). ``format=text``: the seeds' table in 40
        columns for a phone (what changed, best loss, where the climb began, a sparkline)."""
        try:
            rows = source.runs(against)
        except KeyError as e:
            raise HTTPException(404, str(e.args[0])) from None
        if format == "text":
            from daemon.web.queuecli import seeds_table
            return PlainTextResponse(seeds_table(rows) + "\n")
        return {"runs": rows}

    @app.get("/queue")
    async def queue() -> JSONBody:
        return {"queue": source.queue()}

    @app.post("/queue", responses=ERROR_RESPONSES)
    async def queue_add(entry: QueueEntry, authorization: str | None = Header(None)) -> JSONBody:
        authorize(authorization)
        return await controls.submit("queue_add", entry.model_dump())

    @app.delete("/queue/{entry_id}", responses=ERROR_RESPONSES)
    async def queue_remove(entry_id: int = Path(ge=1, le=MAX_EVENT_ID),
                           authorization: str | None = Header(None)) -> JSONBody:
        authorize(authorization)
        return await controls.submit("queue_remove", {"id": entry_id})

    @app.post("/queue/{entry_id}/move", responses=ERROR_RESPONSES)
    async def queue_move(entry_id: int = Path(ge=1, le=MAX_EVENT_ID), to: int = Query(ge=1, le=10000),
                         authorization: str | None = Header(None)) -> JSONBody:
        authorize(authorization)
        return await controls.submit("queue_move", {"id": entry_id, "to": to})

    return app


def _check_port(host: str, port: int) -> None:
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot serve the HTTP API on {host}:{port}: {e.strerror}; "
                          "another daemon running? change [api] port") from None


class _Server(uvicorn.Server):
    """uvicorn's Server with its signal capture off. Since uvicorn 0.29, ``serve()`` captures
    SIGINT/SIGTERM itself and re-raises them when it exits, ignoring
    ``install_signal_handlers``: inside the daemon that turned one SIGTERM into a second one and
    an immediate kill of the job. The daemon owns the signals (daemon/service/app.py)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return None

    async def main_loop(self) -> None:
        """uvicorn's housekeeping loop once a second instead of ten times (issue 30: each wake-up
        of the daemon's loop costs CPU all night). It refreshes the Date header, whose resolution
        is a second, and sees ``should_exit`` within a second (the daemon waits up to 5 s)."""
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # on_tick refreshes the headers when % 10 == 0
            await asyncio.sleep(1.0)


async def serve(app: FastAPI, host: str, port: int) -> tuple[uvicorn.Server, asyncio.Task]:
    """Run uvicorn's Server.serve() as a task on this loop; return once it listens."""
    raise_nofile_limit()
    _check_port(host, port)  # uvicorn sys.exit()s on a bind error: say it clearly first
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off", http=GuardedH11Protocol,
                            limit_concurrency=LIMIT_CONCURRENCY, timeout_keep_alive=KEEP_ALIVE_S,
                            h11_max_incomplete_event_size=MAX_INCOMPLETE_EVENT, backlog=512)
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            exc = task.exception()
            raise OSError(f"cannot serve the HTTP API on {host}:{port}: "
                          f"{exc or 'the port is probably in use'}; change [api] port")
        await asyncio.sleep(0.02)
    return server, task
