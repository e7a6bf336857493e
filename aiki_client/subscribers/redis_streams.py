"""The Redis Streams subscriber: the server publishes each ready run to its workflow version's
stream; workers read them in one consumer group (XREADGROUP, blocking up to `block_time_ms`), claim
the runs on the server, acknowledge (XACK) when done, and take over messages that a dead worker
left unacknowledged for `claim_min_idle_time_ms` (XAUTOCLAIM).

A message only says "this run may be ready": the claim on the server decides. So duplicates and
stale messages are harmless, and a lost message (Redis flushed or restarted) is made good by the
server publishing the run again. While Redis is unreachable, the subscriber claims over HTTP.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from .._transport import Transport
from ..wire import API_PREFIX, CONSUMER_GROUP, stream_name
from .polling import PollingSubscriber

log = logging.getLogger("aiki.worker")

# After a Redis failure, claim over HTTP for this long before trying Redis again.
_FALLBACK_S = 5.0


@dataclass(frozen=True, slots=True)
class RedisStreamsOptions:
    claim_min_idle_time_ms: int = 180_000
    block_time_ms: int = 1_000


class RedisStreamsSubscriber:
    def __init__(
        self,
        transport: Transport,
        redis_url: str,
        *,
        worker_id: str,
        workflows: list[dict[str, str]],
        shard_keys: list[str] | None,
        queues: list[str],
        options: RedisStreamsOptions,
        fallback: PollingSubscriber,
    ) -> None:
        self._transport = transport
        self._redis: aioredis.Redis = aioredis.from_url(redis_url, socket_connect_timeout=2)
        self._worker_id = worker_id
        self._claim_body: dict[str, Any] = {"worker_id": worker_id, "workflows": workflows}
        if shard_keys is not None:
            self._claim_body["shard_keys"] = shard_keys
        self._streams = [stream_name(q) for q in queues]
        self._options = options
        self._fallback = fallback
        self._groups_ready = False
        self._fallback_until = 0.0
        self._next_autoclaim = 0.0
        # Messages read but not yet handed out (more arrived than there were free slots).
        self._backlog: deque[tuple[str, str, str]] = deque()  # (stream, message id, run id)
        self._held: dict[str, list[tuple[str, str]]] = {}  # run id -> its messages, acked when done

    async def claim(self, max_runs: int) -> list[dict[str, Any]]:
        if time.monotonic() < self._fallback_until:
            return await self._fallback.claim(max_runs)
        try:
            entries = await self._read(max_runs)
        except ResponseError as exc:
            # NOGROUP / "UNBLOCKED the stream key no longer exists": the streams were deleted (a
            # FLUSHALL, a Redis restarted empty). Recreate the group; the server republishes.
            log.info("Redis streams reset (%s): recreating the consumer group", exc)
            self._groups_ready = False
            return []
        except (RedisError, OSError) as exc:
            log.warning("Redis unavailable (%s): claiming over HTTP for %.0f s", exc, _FALLBACK_S)
            self._fallback_until = time.monotonic() + _FALLBACK_S
            self._groups_ready = False
            return await self._fallback.claim(max_runs)
        if not entries:
            return []
        by_run: dict[str, list[tuple[str, str]]] = {}
        for stream, message_id, run_id in entries:
            by_run.setdefault(run_id, []).append((stream, message_id))
        answer = await self._transport.request(
            "POST",
            f"{API_PREFIX}/claims",
            {**self._claim_body, "run_ids": list(by_run)},
            idempotent=False,
            retry_for_s=5.0,
        )
        claimed: list[dict[str, Any]] = answer["runs"]
        for run in claimed:
            # Added to, not replaced: an older execution of the run here may still hold its message.
            self._held.setdefault(run["id"], []).extend(by_run.pop(run["id"]))
        # The rest are stale (claimed elsewhere, finished, duplicates): nothing to do for them.
        await self._ack([m for messages in by_run.values() for m in messages])
        return claimed

    async def _read(self, max_runs: int) -> list[tuple[str, str, str]]:
        await self._ensure_groups()
        if not self._backlog:
            self._backlog.extend(await self._autoclaim(max_runs))
        if not self._backlog:
            response: Any = await self._redis.xreadgroup(
                CONSUMER_GROUP,
                self._worker_id,
                {s: ">" for s in self._streams},
                count=max_runs,
                block=self._options.block_time_ms,
            )
            for stream, messages in response or []:
                for message_id, fields in messages:
                    self._backlog.append((_text(stream), _text(message_id), _text(fields[b"run_id"])))
        return [self._backlog.popleft() for _ in range(min(max_runs, len(self._backlog)))]

    async def _autoclaim(self, max_runs: int) -> list[tuple[str, str, str]]:
        """Messages another consumer read and never acknowledged (it died): take them over."""
        if time.monotonic() < self._next_autoclaim:
            return []
        self._next_autoclaim = time.monotonic() + self._options.claim_min_idle_time_ms / 1000 / 2
        taken = []
        for stream in self._streams:
            _, messages, *_ = await self._redis.xautoclaim(
                stream, CONSUMER_GROUP, self._worker_id, self._options.claim_min_idle_time_ms, "0-0", count=max_runs
            )
            taken += [(stream, _text(mid), _text(fields[b"run_id"])) for mid, fields in messages if fields]
        return taken

    async def _ensure_groups(self) -> None:
        if self._groups_ready:
            return
        for stream in self._streams:
            try:
                # From the start of the stream: runs published before any worker existed count too.
                await self._redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    async def _ack(self, messages: list[tuple[str, str]]) -> None:
        if not messages:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for stream, message_id in messages:
                    pipe.xack(stream, CONSUMER_GROUP, message_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("XACK failed (%s); the messages go stale, which is harmless", exc)

    async def done(self, run_id: str) -> None:
        await self._ack(self._held.pop(run_id, []))

    async def refresh(self, run_ids: list[str]) -> None:
        """Heartbeat: reset the idle time of the messages of runs still running here, so no other
        worker takes them over."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in run_ids:
                    for stream, message_id in self._held.get(run_id, []):
                        pipe.xclaim(stream, CONSUMER_GROUP, self._worker_id, 0, [message_id], justid=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("refreshing stream messages failed: %s", exc)

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
