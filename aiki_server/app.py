"""The Sanic application and the embeddable `Server`.

`Server` is how both the command line and embedding code run aiki: one process, one event loop,
no Sanic process manager, so it embeds in tests and notebooks and freezes into one binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import socket
from types import TracebackType
from typing import Any

from sanic import Sanic
from sanic.exceptions import SanicException
from sanic.request import Request
from sanic.response import HTTPResponse

from aiki_client.wire import API_PREFIX, MAX_BODY_BYTES, MAX_WAIT_MS, ErrorCode

from . import errors
from .api import health, listing, openapi, runs, schedules, workers
from .api._respond import json_response
from .config import ServerConfig
from .delivery import RedisDelivery
from .notifier import Notifier
from .services.runs import RunService
from .services.schedules import ScheduleService
from .services.workers import WorkerService
from .store import open_store
from .timers import Timers

log = logging.getLogger("aiki.server")

# Sanic keeps a registry of app names per process: every embedded server needs its own.
_app_numbers = itertools.count(1)

_SANIC_STATUS_CODES = {
    400: ErrorCode.INVALID_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    503: ErrorCode.UNAVAILABLE,
}


def create_app(config: ServerConfig) -> Sanic[Any, Any]:
    app: Sanic[Any, Any] = Sanic(f"aiki_{next(_app_numbers)}", configure_logging=False)
    # Bodies up to 4× the limit are read in full and refused with a JSON 413 (a client that sends
    # its whole body first then reads the answer); beyond that Sanic cuts the connection.
    app.config.REQUEST_MAX_SIZE = 4 * MAX_BODY_BYTES
    app.config.RESPONSE_TIMEOUT = MAX_WAIT_MS / 1000 + 30  # long-polls are held up to MAX_WAIT_MS
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.ACCESS_LOG = False
    app.config.MOTD = False
    app.config.TOUCHUP = False
    app.config.NOISY_EXCEPTIONS = False
    app.ctx.config = config
    for bp in (runs.bp, runs.events_bp, listing.bp, schedules.bp, workers.bp, health.bp, openapi.bp):
        app.blueprint(bp)

    if config.api_key:
        expected = config.api_key.encode()

        @app.on_request
        async def authenticate(request: Request) -> HTTPResponse | None:
            if not request.path.startswith(API_PREFIX):
                return None
            scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected):
                return None
            return json_response(
                errors.ApiError(
                    ErrorCode.UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer <key>)"
                ).body(),
                status=401,
            )

    app.error_handler.add(Exception, _handle_error)

    @app.before_server_start
    async def open_state(app: Sanic[Any, Any]) -> None:
        store = open_store(
            config.database_url,
            pool_min_size=config.db_pool_min_size,
            pool_max_size=config.db_pool_max_size,
            command_timeout_s=config.db_command_timeout_ms / 1000,
        )
        await store.open()
        # On SQLite this process makes every write, so notifications miss nothing and the re-read
        # is only a safety net; with PostgreSQL, other servers write too.
        notifier = Notifier(recheck_s=30.0 if config.database_url.startswith("sqlite") else 1.0)
        timers = Timers(store, notifier, sweep_interval_s=config.sweep_interval_ms / 1000)
        app.ctx.store = store
        app.ctx.timers = timers
        app.ctx.delivery = None
        if config.redis_url:
            app.ctx.delivery = RedisDelivery(
                store, notifier, config.redis_url, republish_after_ms=config.republish_after_ms
            )
        app.ctx.runs = RunService(
            store, notifier, timers, publish=app.ctx.delivery.publish_now if app.ctx.delivery else None
        )
        app.ctx.workers = WorkerService(store, notifier, timers, claim_idle_timeout_ms=config.claim_idle_timeout_ms)
        app.ctx.schedules = ScheduleService(store, notifier, timers)
        timers.due_work.append(app.ctx.schedules.fire_due)
        app.ctx.daemon = asyncio.get_running_loop().create_task(timers.run_forever(), name="aiki-timers")
        if app.ctx.delivery is not None:
            await app.ctx.delivery.start()

    @app.after_server_stop
    async def close_state(app: Sanic[Any, Any]) -> None:
        if app.ctx.delivery is not None:
            await app.ctx.delivery.stop()
        app.ctx.daemon.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app.ctx.daemon
        await app.ctx.store.close()

    return app


async def _handle_error(request: Request, exc: Exception) -> HTTPResponse:
    if isinstance(exc, errors.ApiError):
        return json_response(exc.body(), status=exc.status)
    if isinstance(exc, SanicException) and exc.status_code < 500:
        code = _SANIC_STATUS_CODES.get(exc.status_code, ErrorCode.INVALID_REQUEST)
        message = str(exc) or code.value
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        return json_response(errors.ApiError(code, message).body(), status=exc.status_code)
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return json_response(errors.ApiError(ErrorCode.INTERNAL, "internal server error").body(), status=500)


def _bind(host: str, port: int) -> socket.socket:
    """Bind our own socket: Sanic's create_server turns port 0 into 8000."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Server:
    """An aiki server in this process: `async with Server(...) as srv: ... srv.url`."""

    def __init__(
        self,
        *,
        database_url: str = "sqlite:///./aiki.db",
        host: str = "127.0.0.1",
        port: int = 0,
        redis_url: str | None = None,
        api_key: str | None = None,
        claim_idle_timeout_ms: int = 90_000,
        config: ServerConfig | None = None,
    ) -> None:
        self.config = config or ServerConfig(
            database_url=database_url,
            host=host,
            port=port,
            redis_url=redis_url,
            api_key=api_key,
            claim_idle_timeout_ms=claim_idle_timeout_ms,
        )
        self.app: Sanic[Any, Any] | None = None
        self._server: Any = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not started")
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        sock = _bind(self.config.host, self.config.port)
        self.port = sock.getsockname()[1]
        self.app = create_app(self.config)
        # Accept connections only once the store is open: no request may find the app half started.
        self._server = await self.app.create_server(
            sock=sock, return_asyncio_server=True, access_log=False, asyncio_server_kwargs={"start_serving": False}
        )
        await self._server.startup()
        await self._server.before_start()
        await self._server.start_serving()
        await self._server.after_start()
        log.info("aiki server listening on %s (database %s)", self.url, _redact(self.config.database_url))

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        await server.before_stop()
        await server.close()
        # Keep-alive connections would otherwise go on being served by a stopped server.
        for connection in list(server.connections):
            connection.close_if_idle() or connection.close(timeout=1.0)
        await server.after_stop()
        if self.app is not None:
            Sanic.unregister_app(self.app)

    async def serve_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _redact(url: str) -> str:
    """Hide a password in a database URL before logging it."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url
