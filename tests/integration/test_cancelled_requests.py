"""A request whose client goes away mid-write (the server cancels its handler) still announces a
write that committed: otherwise a long-poll waiting on that run or queue would hear of it only at
its next re-read of the database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiki_server.notifier import Notifier
from aiki_server.services.runs import RunService, StartRequest
from aiki_server.store import NewRun, Run, Store
from aiki_server.timers import Timers


class SlowStore:
    """The real store; its inserts wait for a go-ahead after they committed."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.committed = asyncio.Event()
        self.go_on = asyncio.Event()

    async def insert_run(self, new: NewRun, now_ms: int, **kwargs: Any) -> tuple[Run, bool]:
        result = await self._store.insert_run(new, now_ms, **kwargs)
        self.committed.set()
        await self.go_on.wait()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_start_cancelled_after_its_commit_still_wakes_the_claimers(sqlite_store: Store) -> None:
    slow = SlowStore(sqlite_store)
    notifier = Notifier()
    runs = RunService(slow, notifier, Timers(slow, notifier))  # type: ignore[arg-type]
    with notifier.listen(["wf\x1f1"]) as news:
        claimer = asyncio.create_task(news(30))
        request = asyncio.create_task(runs.start(StartRequest("r1", "wf", "1", "null", "h", None, None, None, None)))
        await slow.committed.wait()
        request.cancel()  # the client went away: the handler is cancelled mid-request
        with pytest.raises(asyncio.CancelledError):
            await request
        assert not claimer.done()
        slow.go_on.set()
        await asyncio.wait_for(claimer, timeout=5)  # woken by the notification, not by its 30 s timeout
    assert (await sqlite_store.get_run("r1")) is not None
