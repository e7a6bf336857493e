"""Group commit: requests that arrive while a batch is being written go out together in the next
one — one statement, one round trip and one commit for many — and a request that finds nothing in
flight goes out at once, so batching never adds a wait of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


class GroupCommit(Generic[Request, Result]):
    def __init__(
        self,
        write: Callable[[list[Request]], Awaitable[list[Result]]],
        key: Callable[[Request], Hashable],
        *,
        max_batch: int = 256,
    ) -> None:
        """`write` writes a batch and returns one result per request, in order. Requests with the
        same `key` (the same run) never share a batch: the later one waits for the next."""
        self._write = write
        self._key = key
        self._max_batch = max_batch
        self._pending: list[tuple[Request, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, request: Request) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_all())
        return await future

    async def _write_all(self) -> None:
        try:
            while self._pending:
                batch: list[tuple[Request, asyncio.Future[Result]]] = []
                later: list[tuple[Request, asyncio.Future[Result]]] = []
                keys: set[Hashable] = set()
                for request, future in self._pending:
                    key = self._key(request)
                    if future.done():
                        continue  # its caller is gone (cancelled)
                    if key in keys or len(batch) >= self._max_batch:
                        later.append((request, future))
                    else:
                        keys.add(key)
                        batch.append((request, future))
                self._pending = later
                if not batch:
                    continue
                try:
                    results = await self._write([request for request, _ in batch])
                except Exception as exc:  # every caller of the batch hears of it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._writer = None
