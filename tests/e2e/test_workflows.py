"""Workflows through a real server process and a real worker process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from aiki_client import Client, Conflict, RunFailed, connect

from ..procs import ServerProcess, WorkerProcess
from . import worker_app as app
from .conftest import effects_of


@pytest.fixture
async def aiki(shared_server: ServerProcess, shared_worker: WorkerProcess) -> AsyncIterator[Client]:
    async with await connect(shared_server.url) as client:
        yield client


async def tasks_of(url: str, run_id: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as http:
        tasks: list[dict[str, object]] = (await http.get(f"{url}/v1/runs/{run_id}/tasks")).json()["tasks"]
        return tasks


async def test_echo(aiki: Client, shared_effects: Path) -> None:
    handle = await app.echo_v1.start(aiki, {"hello": ["world", 1, None]})
    assert await handle.wait_for_completion(timeout=10) == {"hello": ["world", 1, None]}
    status = await handle.get_status()
    assert (status.state, status.attempts, status.error) == ("completed", 1, None)
    assert [e["task"] for e in effects_of(shared_effects, handle.id)] == ["echo-task"]


async def test_sequential_steps_record_each_task_once(aiki: Client, shared_server: ServerProcess) -> None:
    handle = await app.steps_v1.start(aiki, {"n": 10})
    assert await handle.wait_for_completion(timeout=10) == [i * 10 for i in range(10)]
    tasks = await tasks_of(shared_server.url, handle.id)
    assert [t["state"] for t in tasks] == ["completed"] * 10
    assert [t["output"] for t in tasks] == [i * 10 for i in range(10)]


async def test_retries_until_success(aiki: Client, shared_effects: Path, shared_server: ServerProcess) -> None:
    handle = await app.retrying_v1.start(aiki, {"succeed_on": 3})
    assert await handle.wait_for_completion(timeout=10) == {"attempt": 3}
    assert [e["attempt"] for e in effects_of(shared_effects, handle.id)] == [1, 2, 3]
    [record] = await tasks_of(shared_server.url, handle.id)
    assert (record["state"], record["attempts"]) == ("completed", 3)


async def test_retries_exhausted_fail_the_run(aiki: Client, shared_effects: Path) -> None:
    handle = await app.failing_uncaught.start(aiki, None)
    with pytest.raises(RunFailed) as failed:
        await handle.wait_for_completion(timeout=10)
    assert failed.value.error["type"] == "TaskFailed"
    assert "this task never works" in failed.value.error["message"]
    assert "TaskFailed" in str(failed.value) and "this task never works" in str(failed.value)
    assert len(effects_of(shared_effects, handle.id)) == 3  # max_attempts=3


async def test_task_failed_is_catchable(aiki: Client) -> None:
    handle = await app.failing_caught.start(aiki, None)
    out = await handle.wait_for_completion(timeout=10)
    assert out == {
        "recovered": True,
        "error": {"type": "ValueError", "message": "this task never works"},
        "attempts": 3,
    }


async def test_long_retry_delay_suspends_the_run(
    aiki: Client, shared_effects: Path, shared_server: ServerProcess
) -> None:
    handle = await app.retrying_slow.start(aiki, None)
    # The 1.5 s backoff is durable: the run waits in the server, not in a worker slot.
    for _ in range(100):
        if (await handle.get_status()).state == "awaiting_retry":
            break
        await asyncio.sleep(0.02)
    assert (await handle.get_status()).state == "awaiting_retry"
    [record] = await tasks_of(shared_server.url, handle.id)
    assert record["state"] == "retrying" and record["retry_at_ms"] is not None
    assert await handle.wait_for_completion(timeout=10) == 2
    [record] = await tasks_of(shared_server.url, handle.id)
    assert (record["state"], record["attempts"]) == ("completed", 2)
    assert [e["attempt"] for e in effects_of(shared_effects, handle.id)] == [1, 2]


async def test_whole_run_retry_keeps_completed_tasks(aiki: Client, shared_effects: Path) -> None:
    handle = await app.failing_retried.start(aiki, None)
    assert await handle.wait_for_completion(timeout=10) == {"before": "before", "attempt": 2}
    assert (await handle.get_status()).attempts == 2
    # The task completed in attempt 1 is replayed from its record, not run again.
    assert [e["task"] for e in effects_of(shared_effects, handle.id)] == ["echo-task"]


async def test_concurrent_tasks_with_gather(aiki: Client, shared_effects: Path) -> None:
    handle = await app.fan_v1.start(aiki, {"n": 20})
    assert await handle.wait_for_completion(timeout=10) == [i * 10 for i in range(20)]
    assert sorted(e["detail"] for e in effects_of(shared_effects, handle.id)) == list(range(20))


async def test_same_task_same_input_twice_is_two_calls(
    aiki: Client, shared_effects: Path, shared_server: ServerProcess
) -> None:
    handle = await app.twice_v1.start(aiki, "same")
    assert await handle.wait_for_completion(timeout=10) == ["same", "same"]
    assert len(effects_of(shared_effects, handle.id)) == 2
    tasks = await tasks_of(shared_server.url, handle.id)
    assert len(tasks) == 2 and tasks[0]["address"] == tasks[1]["address"]


async def test_idempotent_start(aiki: Client, shared_effects: Path) -> None:
    first = await app.echo_v1.start(aiki, {"order": 42}, reference_id="order-42")
    again = await app.echo_v1.start(aiki, {"order": 42}, reference_id="order-42")
    assert first.id == again.id
    with pytest.raises(Conflict):
        await app.echo_v1.start(aiki, {"order": 43}, reference_id="order-42")
    assert await again.wait_for_completion(timeout=10) == {"order": 42}
    assert len(effects_of(shared_effects, first.id)) == 1


async def test_versions_side_by_side(
    aiki: Client, shared_server: ServerProcess, spawn_worker: object, effects_dir: Path
) -> None:
    v1 = await app.versioned_v1.start(aiki, "a")
    v2 = await app.versioned_v2.start(aiki, "b")
    assert await v1.wait_for_completion(timeout=10) == "v1"
    # The shared worker registered only v1: v2 waits for a worker that knows it.
    await asyncio.sleep(0.5)
    assert (await v2.get_status()).state == "queued"
    spawn_worker(shared_server, only="versioned@2")  # type: ignore[operator]
    assert await v2.wait_for_completion(timeout=15) == "v2"
