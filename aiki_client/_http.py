"""A small HTTP/1.1 client on asyncio streams, with keep-alive connections.

Why not a general-purpose client: every workflow step is a round trip to the server, and a
general client's per-request overhead (≈1.4 ms for httpx on the benchmark machine, against
≈0.25 ms for this one) would dominate a step's cost. The server is ours, so the subset of HTTP we
need is small: JSON bodies, Content-Length or chunked responses, keep-alive.

Errors say whether the request can have reached the server: `NotSent` (connecting failed) or
`ConnectionLost` (it may have been processed), so the caller decides what is safe to retry.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

_MAX_IDLE = 64  # idle connections kept per client


class HttpError(Exception):
    pass


class NotSent(HttpError):
    """The connection could not be made: the request never reached the server."""


class ConnectionLost(HttpError):
    """The connection failed after the request may have been sent."""


class ResponseTimeout(ConnectionLost):
    pass


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def close(self) -> None:
        self.writer.close()


class HttpClient:
    def __init__(self, base_url: str, headers: dict[str, str], *, connect_timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the server URL must look like http://host:port, got {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in {"host": host_header, **headers}.items())
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(self, method: str, path: str, body: bytes | None, timeout: float) -> Response:
        conn = await self._connection()
        try:
            response, keep_alive = await asyncio.wait_for(self._exchange(conn, method, path, body), timeout)
        except TimeoutError:
            conn.close()
            raise ResponseTimeout(f"{method} {path}: no answer within {timeout:.0f} s") from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            if conn.reused and isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
                # A kept-alive connection the server had already closed (idle timeout, restart).
                raise ConnectionLost(f"{method} {path}: stale connection") from exc
            raise ConnectionLost(f"{method} {path}: {exc!r}") from exc
        except BaseException:
            conn.close()  # cancelled mid-exchange: the connection's state is unknown
            raise
        if keep_alive and not self._closed and len(self._idle) < _MAX_IDLE:
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, ssl=self._ssl), self._connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise NotSent(f"cannot connect to {self._host}:{self._port}: {exc!r}") from exc
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, method: str, path: str, body: bytes | None) -> tuple[Response, bool]:
        body_length = "" if body is None else f"content-length: {len(body)}\r\n"
        head = f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._headers}{body_length}\r\n"
        conn.writer.write(head.encode() + (body or b""))
        await conn.writer.drain()
        status_line = await conn.reader.readuntil(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = False
        keep_alive = parts[0] == b"HTTP/1.1"
        while (line := await conn.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                keep_alive = value == b"keep-alive" or (keep_alive and value != b"close")
        if chunked:
            data = await _read_chunked(conn.reader)
        elif length is not None:
            data = await conn.reader.readexactly(length)
        else:
            data = await conn.reader.read()  # delimited by the server closing the connection
            keep_alive = False
        return Response(status, data), keep_alive

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
