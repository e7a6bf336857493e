"""Deadlines → requeue. Runs that wait (delayed start, retry backoff, sleeps, event timeouts) carry
their deadline in the database (`wake_at`, indexed). This daemon sleeps until the earliest one,
queues what is due, and also requeues runs whose worker stopped heartbeating.

Precision comes from an in-memory deadline: any write that sets an earlier deadline pokes the
daemon. A periodic pass (every `sweep_interval_s`) repairs everything else, including deadlines
that passed while the server was down, which therefore fire right after start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .notifier import Notifier
from .store import Store

log = logging.getLogger("aiki.server")


def now_ms() -> int:
    return int(time.time() * 1000)


class Timers:
    def __init__(self, store: Store, notifier: Notifier, *, sweep_interval_s: float = 1.0) -> None:
        self._store = store
        # More deadline-driven work (schedules): each is called with now and returns its next deadline.
        self.due_work: list[Callable[[int], Awaitable[int | None]]] = []
        self._notifier = notifier
        self._sweep_interval_s = sweep_interval_s
        self._next_wake_ms: int | None = None
        self._poked_during_pass: int | None = None
        self._poked = asyncio.Event()

    def poke(self, wake_at_ms: int | None) -> None:
        """A deadline was stored; wake the daemon early if it is the nearest."""
        if wake_at_ms is None:
            return
        # Remembered apart as well: a pass in progress computes the nearest deadline from reads
        # that may predate this poke, and must not forget it.
        self._poked_during_pass = min(wake_at_ms, self._poked_during_pass or wake_at_ms)
        if self._next_wake_ms is None or wake_at_ms < self._next_wake_ms:
            self._next_wake_ms = wake_at_ms
            self._poked.set()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer pass failed; retrying")
                await asyncio.sleep(self._sweep_interval_s)
                continue
            await self._sleep_until_due()

    async def tick(self) -> None:
        self._poked_during_pass = None
        now = now_ms()
        self._notifier.notify_all(await self._store.promote_due(now))
        self._notifier.notify_all(await self._store.release_expired_claims(now))
        deadlines = [await self._store.next_wake_at()]
        for work in self.due_work:
            deadlines.append(await work(now))
        deadlines.append(self._poked_during_pass)
        self._next_wake_ms = min((d for d in deadlines if d is not None), default=None)

    async def _sleep_until_due(self) -> None:
        """Sleep until the nearest deadline or the next sweep, whichever is first; a poke with an
        earlier deadline shortens the sleep."""
        sweep_at = time.monotonic() + self._sweep_interval_s
        while True:
            timeout = sweep_at - time.monotonic()
            if self._next_wake_ms is not None:
                timeout = min(timeout, (self._next_wake_ms - now_ms()) / 1000)
            if timeout <= 0:
                return
            self._poked.clear()
            try:
                await asyncio.wait_for(self._poked.wait(), timeout)
            except TimeoutError:
                return
