"""Redis Streams delivery (when AIKI_REDIS_URL is set).

The database stays the single source of truth; Redis only carries news of it:
- the publisher XADDs each ready run to its queue's stream (one stream per workflow name + version
  [+ shard]), marking it published in the same transaction; runs whose message may have been lost
  (Redis flushed or restarted empty) are published again after a delay that doubles each time.
  Streams are trimmed (MAXLEN ~) so Redis memory stays bounded.
- the bus PUBLISHes every local notification (a queue got a ready run, a run finished) to the other
  servers, so a long-poll held by one server hears of a write made by another at once.
If Redis is down, the server keeps serving: workers fall back to HTTP claims, and `/readyz` says
Redis is degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from aiki_client.wire import NOTIFY_CHANNEL, stream_name

from .notifier import Notifier
from .store import Store
from .timers import now_ms

log = logging.getLogger("aiki.server")

_BATCH = 500
_RUN_KEY_PREFIX = "run:"


class RedisDelivery:
    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        redis_url: str,
        *,
        republish_after_ms: int = 10_000,
        stream_max_len: int = 10_000,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._redis: aioredis.Redis = aioredis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
        self._republish_after_ms = republish_after_ms
        self._stream_max_len = stream_max_len
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._outgoing: set[str] = set()  # notification keys for the other servers
        self._broadcaster: asyncio.Task[None] | None = None
        self._direct: list[tuple[str, str]] = []  # started runs to publish now
        self._direct_task: asyncio.Task[None] | None = None
        self._origin = f"{os.getpid()}:{id(self)}"  # to ignore our own bus messages
        self.last_error: str | None = None

    async def start(self) -> None:
        self._notifier.listeners.append(self._on_local_notify)
        self._tasks = [
            asyncio.create_task(self._publish_forever(), name="aiki-redis-publisher"),
            asyncio.create_task(self._listen_forever(), name="aiki-redis-bus"),
        ]

    async def stop(self) -> None:
        if self._direct_task is not None:
            self._tasks.append(self._direct_task)  # what it has not sent is republished later
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose()

    async def ping(self) -> str:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            return f"degraded: {exc}"
        return "ok"

    # -- local notifications → publisher and other servers ------------------------------------------

    def _on_local_notify(self, keys: set[str], published: bool) -> None:
        if not published and any(not k.startswith(_RUN_KEY_PREFIX) for k in keys):
            self._ready.set()  # a queue got a ready run: publish it now
        # Notifications made while one message is on its way go out together in the next.
        self._outgoing |= keys
        if self._broadcaster is None:
            self._broadcaster = asyncio.get_running_loop().create_task(self._broadcast())

    async def _broadcast(self) -> None:
        try:
            while self._outgoing:
                keys, self._outgoing = self._outgoing, set()
                with contextlib.suppress(RedisError, OSError):
                    note = orjson.dumps({"from": self._origin, "keys": sorted(keys)})
                    await self._redis.publish(NOTIFY_CHANNEL, note)
        finally:
            self._broadcaster = None

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(NOTIFY_CHANNEL)
                    delay = 0.1
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        note = orjson.loads(message["data"])
                        if note.get("from") != self._origin:
                            self._notifier.wake_local(note["keys"])
            except (RedisError, OSError) as exc:
                log.warning("Redis notification bus: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- ready runs → streams -------------------------------------------------------------------------

    def publish_now(self, run_id: str, queue: str) -> None:
        """Publish a run that was stored as published (a start): runs arriving together go out in
        one pipeline."""
        self._direct.append((run_id, queue))
        if self._direct_task is None or self._direct_task.done():
            self._direct_task = asyncio.get_running_loop().create_task(self._publish_direct())

    async def _publish_direct(self) -> None:
        while self._direct:
            batch, self._direct = self._direct, []
            try:
                await self._publish(batch)
            except (RedisError, OSError) as exc:
                # Hand them back to the publisher, which retries (or, if the database cannot be
                # told either, republishes them after its delay).
                log.warning("publishing %d started run(s) failed: %s", len(batch), exc)
                try:
                    await self._store.unpublish([run_id for run_id, _ in batch])
                except Exception:
                    log.exception("could not hand %d run(s) back to the publisher", len(batch))
                self._ready.set()

    async def _publish(self, ready: list[tuple[str, str]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for run_id, queue in ready:
                pipe.xadd(stream_name(queue), {"run_id": run_id}, maxlen=self._stream_max_len, approximate=True)
            await pipe.execute()

    async def _publish_forever(self) -> None:
        delay = 0.1
        while True:
            self._ready.clear()  # before publishing: news that arrives meanwhile triggers another pass
            try:
                # A full batch may mean more are waiting; a short one means all ready runs are out.
                while (
                    await self._store.publish_ready(now_ms(), self._republish_after_ms, _BATCH, self._publish) == _BATCH
                ):
                    pass
                if self.last_error is not None:
                    log.info("Redis delivery is back")
                self.last_error = None
                delay = 0.1
            except (RedisError, OSError) as exc:
                # The runs stay ready in the database: workers claim them over HTTP meanwhile.
                if self.last_error is None:
                    log.warning("Redis delivery degraded: %s", exc)
                self.last_error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception:
                log.exception("publishing ready runs failed; retrying")
                await asyncio.sleep(1.0)
                continue
            # Wake for news of ready runs, or to republish runs whose message may be lost.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), self._republish_after_ms / 1000 / 4)
