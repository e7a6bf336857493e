"""Group commit: what arrives while a batch is written goes in the next batch, one request per key."""

from __future__ import annotations

import asyncio

import pytest

from aiki_server.store.group_commit import GroupCommit


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.gate = asyncio.Event()

    async def write(self, requests: list[str]) -> list[str]:
        self.batches.append(list(requests))
        await self.gate.wait()
        if self.fail_on in requests:
            raise RuntimeError(f"cannot write {self.fail_on}")
        return [r.upper() for r in requests]


def run_key(request: str) -> str:
    return request.split(":")[0]


async def test_a_lone_request_goes_at_once_and_later_ones_share_the_next_batch() -> None:
    rec = Recorder()
    gc = GroupCommit(rec.write, key=run_key)
    first = asyncio.create_task(gc.submit("a:1"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert rec.batches == [["a:1"]]  # nothing else was waiting: no wait for company
    rest = [asyncio.create_task(gc.submit(r)) for r in ("b:1", "c:1", "b:2", "a:2")]
    await asyncio.sleep(0)
    rec.gate.set()
    assert await first == "A:1"
    assert await asyncio.gather(*rest) == ["B:1", "C:1", "B:2", "A:2"]
    # Those that arrived during the first write went together, but for b's second request, which
    # waited for the next batch (one request per key in a batch).
    assert rec.batches == [["a:1"], ["b:1", "c:1", "a:2"], ["b:2"]]


async def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_still_goes() -> None:
    rec = Recorder(fail_on="b:1")
    rec.gate.set()
    gc = GroupCommit(rec.write, key=run_key)
    results = await asyncio.gather(gc.submit("a:1"), gc.submit("b:1"), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert await gc.submit("c:1") == "C:1"


async def test_a_cancelled_request_is_not_written() -> None:
    rec = Recorder()
    gc = GroupCommit(rec.write, key=run_key)
    first = asyncio.create_task(gc.submit("a:1"))
    await asyncio.sleep(0)
    gone = asyncio.create_task(gc.submit("b:1"))
    kept = asyncio.create_task(gc.submit("c:1"))
    await asyncio.sleep(0)
    gone.cancel()
    rec.gate.set()
    assert (await first, await kept) == ("A:1", "C:1")
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert rec.batches == [["a:1"], ["c:1"]]


async def test_batches_are_capped() -> None:
    rec = Recorder()
    rec.gate.set()
    gc = GroupCommit(rec.write, key=run_key, max_batch=3)
    results = await asyncio.gather(*(gc.submit(f"r{i}:1") for i in range(8)))
    assert results == [f"R{i}:1" for i in range(8)]
    assert [len(b) for b in rec.batches] == [3, 3, 2]
