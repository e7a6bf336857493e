"""In-process wake-ups: a long-poll waits on keys (a queue, a run id) and writes notify them.

This is only a latency shortcut: every waiter also re-checks the database every `recheck_s`, so a
write made by another server process is seen within that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator


class Notifier:
    def __init__(self, *, recheck_s: float = 1.0) -> None:
        # How long a waiter trusts notifications alone before it reads the database again.
        self.recheck_s = recheck_s
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        # Called with the keys of every local notification, and whether the ready runs it announces
        # are already published (the Redis publisher and bus listen).
        self.listeners: list[Callable[[set[str], bool], None]] = []

    @contextlib.contextmanager
    def listen(self, keys: Iterable[str]) -> Iterator[Callable[[float], Awaitable[None]]]:
        """Listen for `keys` from now on; yields `wait(timeout)`, which returns when any of them is
        notified (even before the wait began) or after `timeout` seconds. Listen first, then look
        at the database, then wait: news that comes while looking is not missed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        keys = list(keys)
        for key in keys:
            self._waiters.setdefault(key, set()).add(future)

        async def wait(timeout: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), timeout)

        try:
            yield wait
        finally:
            for key in keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(future)
                    if not waiters:
                        del self._waiters[key]

    def notify(self, key: str) -> None:
        self.notify_all([key])

    def notify_all(self, keys: Iterable[str], *, published: bool = False) -> None:
        keys = set(keys)
        if keys:
            self.wake_local(keys)
            for listener in self.listeners:
                listener(keys, published)

    def wake_local(self, keys: Iterable[str]) -> None:
        """Wake this process's waiters only (for notifications that came from another server)."""
        for key in keys:
            for future in self._waiters.pop(key, ()):
                if not future.done():
                    future.set_result(None)
