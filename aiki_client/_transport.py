"""HTTP calls to the server: JSON in and out, errors mapped to aiki_client exceptions, retries.

Retries: a request that never reached the server (connection refused, DNS, connect timeout) is
always retried; one that may have reached it (a stale pooled connection dropped mid-request, a read
timeout) is retried only when it is idempotent. 503 answers are retried. Every server write the SDK
makes is idempotent by design (client-chosen run ids, checkpoint sequence numbers), so in practice
only claims are not retried.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx

from .errors import AikiError, Conflict, InvalidRequest, NotFound, ServerUnavailable, Unauthorized
from .wire import ErrorCode

_BY_STATUS: dict[int, type[AikiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    405: InvalidRequest,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
}
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout)


class Transport:
    def __init__(self, url: str, *, api_key: str | None = None, retry_for_s: float = 30.0) -> None:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self.retry_for_s = retry_for_s
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(10.0, read=60.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
        )

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        idempotent: bool = True,
        retry_for_s: float | None = None,
    ) -> Any:
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        deadline = time.monotonic() + (self.retry_for_s if retry_for_s is None else retry_for_s)
        delay = 0.05
        while True:
            try:
                resp = await self._http.request(method, path, content=content, params=params)
            except _NOT_SENT as exc:
                failure: str = f"cannot reach the aiki server at {self.url}: {exc!r}"
            except _MAYBE_SENT as exc:
                if not idempotent:
                    raise ServerUnavailable(f"{method} {path}: connection lost: {exc!r}") from exc
                failure = f"{method} {path}: connection lost: {exc!r}"
            else:
                if resp.status_code < 400:
                    return json.loads(resp.content) if resp.content else None
                if resp.status_code != 503:
                    raise _error_from(resp)
                failure = f"{method} {path}: server unavailable: {resp.text[:200]}"
            if time.monotonic() + delay > deadline:
                raise ServerUnavailable(failure)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        await self._http.aclose()


def _error_from(resp: httpx.Response) -> AikiError:
    code: str | None = None
    message = resp.text[:500]
    try:
        err = json.loads(resp.content)["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):
        pass
    cls = _BY_STATUS.get(resp.status_code)
    if cls is None:
        cls = ServerUnavailable if resp.status_code >= 500 else InvalidRequest
    exc = cls(message)
    exc.code = code or (ErrorCode.INTERNAL if resp.status_code >= 500 else None)
    return exc
