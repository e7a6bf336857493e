"""The polling subscriber: claim ready runs from the server over HTTP (long-poll).

The server holds each claim request until a run is ready or `long_poll_ms` passes, so idle workers
cost one open request each, and a run started on an idle system is picked up at once. When the
server is unreachable the subscriber backs off from `poll_interval_ms` up to `max_retry_delay_ms`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

from .._transport import Transport
from ..errors import AikiError, Unauthorized
from ..wire import API_PREFIX

log = logging.getLogger("aiki.worker")


@dataclass(frozen=True, slots=True)
class PollingOptions:
    poll_interval_ms: int = 100
    max_batch_size: int = 10
    max_retry_delay_ms: int = 30_000
    long_poll_ms: int = 5_000


class PollingSubscriber:
    def __init__(
        self,
        transport: Transport,
        *,
        worker_id: str,
        workflows: list[dict[str, str]],
        shard_keys: list[str] | None,
        options: PollingOptions,
    ) -> None:
        self._transport = transport
        self._options = options
        self._body: dict[str, Any] = {"worker_id": worker_id, "workflows": workflows}
        if shard_keys is not None:
            self._body["shard_keys"] = shard_keys
        self._backoff_ms = 0

    async def claim(self, max_runs: int) -> list[dict[str, Any]]:
        if self._backoff_ms:
            await asyncio.sleep(self._backoff_ms / 1000 * random.uniform(0.5, 1.0))
        body = {
            **self._body,
            "max_runs": min(max_runs, self._options.max_batch_size),
            "wait_ms": self._options.long_poll_ms,
        }
        try:
            # Not retried inside the transport: a lost answer leaves runs claimed by nobody; the
            # server requeues them when their claim goes idle (or when this worker stops).
            answer = await self._transport.request(
                "POST", f"{API_PREFIX}/claims", body, idempotent=False, retry_for_s=0
            )
        except Unauthorized:
            raise
        except AikiError as exc:
            self._backoff_ms = min(
                max(self._backoff_ms * 2, self._options.poll_interval_ms), self._options.max_retry_delay_ms
            )
            log.warning("claim failed (%s); retrying in ~%d ms", exc, self._backoff_ms)
            return []
        self._backoff_ms = 0
        runs: list[dict[str, Any]] = answer["runs"]
        return runs

    async def done(self, run_id: str) -> None:
        pass

    async def refresh(self, run_ids: list[str]) -> None:
        pass

    async def close(self) -> None:
        pass
