"""The HTTP API: FastAPI served by uvicorn inside the daemon's event loop (docs/api.md).

Handlers only read the daemon's in-memory status and the store; controls are queued to the
daemon's loop (``source.control``), so the supervisor is never blocked by a request. Secrets
never appear in a response or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterator
from importlib import resources
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from daemon import auth, metrics, statusfmt

log = logging.getLogger(__name__)
ACTIONS = ("pause", "resume", "checkpoint", "offload", "stop")


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]: ...
    def history(self, since: float | None) -> list[dict[str, Any]]: ...
    def events(self, limit: int, before_id: int | None, kind: str | None) -> list[dict[str, Any]]: ...
    async def control(self, action: str) -> dict[str, Any]: ...


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the controls beyond this machine without a token."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        raise ValueError(f"refusing to listen on {host} without an API token: non-loopback "
                         "addresses need [api] token_file (it is created on first start)")


def create_app(source: StatusSource, token: str | None) -> FastAPI:
    app = FastAPI(title="nightshiftd", version="1", description="Status and controls of the "
                  "nightshift daemon. Controls need `Authorization: Bearer <token>`.")
    registry = metrics.make_registry(source.status)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/status", response_model=None)
    def status(request: Request, format: str | None = Query(None, pattern="^(json|text)$")) -> Response:
        st = source.status()
        wants_json = format == "json" or (format is None and "application/json" in
                                          request.headers.get("accept", ""))
        if wants_json:
            return JSONResponse(st)
        return PlainTextResponse(statusfmt.render(st))

    @app.get("/events")
    def events(limit: int = Query(50, ge=1, le=1000), before: int | None = Query(None, ge=0),
               kind: str | None = Query(None, max_length=64)) -> list[dict[str, Any]]:
        return source.events(limit, before, kind)

    @app.get("/api/history")
    def history(since: float | None = Query(None, ge=0, le=1e12)) -> list[dict[str, Any]]:
        return source.history(since)

    @app.get("/metrics", response_model=None)
    def prometheus() -> Response:
        return Response(metrics.exposition(registry), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    def dashboard() -> str:
        return resources.files("daemon").joinpath("dashboard.html").read_text()

    @app.post("/control/{action}")
    async def control(action: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        if action not in ACTIONS:
            raise HTTPException(404, f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        if token is None:
            raise HTTPException(403, "controls are disabled: the daemon has no API token")
        if not auth.check(authorization, token):
            raise HTTPException(401, "missing or wrong token: send Authorization: Bearer <token> "
                                "(the token file is in the daemon's state directory)",
                                headers={"WWW-Authenticate": "Bearer"})
        log.info("control %s requested over HTTP", action)
        return await source.control(action)

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
    an immediate kill of the job. The daemon owns the signals (daemon/app.py)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return None


async def serve(app: FastAPI, host: str, port: int) -> tuple[uvicorn.Server, asyncio.Task]:
    """Run uvicorn's Server.serve() as a task on this loop; return once it listens."""
    _check_port(host, port)  # uvicorn sys.exit()s on a bind error: say it clearly first
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off")
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            exc = task.exception()
            raise OSError(f"cannot serve the HTTP API on {host}:{port}: "
                          f"{exc or 'the port is probably in use'}; change [api] port")
        await asyncio.sleep(0.02)
    return server, task
