"""HTTP calls to the server: JSON in and out, errors mapped to aiki_client exceptions, retries.

Retries: a request that never reached the server (connection refused, connect timeout) is always
retried; one that may have reached it (a kept-alive connection dropped mid-request, no answer in
time) is retried only when it is idempotent. 503 answers are retried. Every write the SDK makes is
idempotent by design (client-chosen run ids, checkpoint sequence numbers), so in practice only
claims are not retried.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any
from urllib.parse import urlencode

from ._http import ConnectionLost, HttpClient, NotSent, Response
from .errors import AikiError, Conflict, InvalidRequest, NotFound, ServerUnavailable, Unauthorized
from .wire import MAX_BODY_BYTES, MAX_WAIT_MS, ErrorCode

_BY_STATUS: dict[int, type[AikiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    405: InvalidRequest,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
}
# Longest a request may go unanswered, beyond the time a long-poll asks the server to hold it.
_RESPONSE_TIMEOUT_S = 30.0


class Transport:
    def __init__(self, url: str, *, api_key: str | None = None, retry_for_s: float = 30.0) -> None:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self.retry_for_s = retry_for_s
        self._http = HttpClient(self.url, headers)

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
        held_ms = max((params or {}).get("wait_ms", 0), body.get("wait_ms", 0) if isinstance(body, dict) else 0)
        timeout = _RESPONSE_TIMEOUT_S + min(held_ms, MAX_WAIT_MS) / 1000
        if content is not None and len(content) > MAX_BODY_BYTES:
            raise InvalidRequest(f"{method} {path}: the request is {len(content)} bytes, over {MAX_BODY_BYTES}")
        if params:
            path = f"{path}?{urlencode(params)}"
        deadline = time.monotonic() + (self.retry_for_s if retry_for_s is None else retry_for_s)
        delay = 0.05
        while True:
            try:
                resp = await self._http.request(method, path, content, timeout)
            except NotSent as exc:
                failure = f"cannot reach the aiki server at {self.url}: {exc}"
            except ConnectionLost as exc:
                if not idempotent:
                    raise ServerUnavailable(f"{method} {path}: connection lost: {exc}") from exc
                failure = f"{method} {path}: connection lost: {exc}"
            else:
                if resp.status < 400:
                    return json.loads(resp.body) if resp.body else None
                if resp.status != 503:
                    raise _error_from(resp)
                failure = f"{method} {path}: server unavailable: {resp.body[:200].decode(errors='replace')}"
            if time.monotonic() + delay > deadline:
                raise ServerUnavailable(failure)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        await self._http.close()


def _error_from(resp: Response) -> AikiError:
    code: str | None = None
    message = resp.body[:500].decode(errors="replace")
    try:
        err = json.loads(resp.body)["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):
        pass
    cls = _BY_STATUS.get(resp.status)
    if cls is None:
        cls = ServerUnavailable if resp.status >= 500 else InvalidRequest
    exc = cls(message)
    exc.code = code or (ErrorCode.INTERNAL if resp.status >= 500 else None)
    return exc
