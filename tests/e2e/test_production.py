"""Production mode under fault injection: PostgreSQL + Redis Streams, real processes. Each test
checks that every started run reaches its terminal state and that no task recorded complete ran
again: in the sequential `steps` workflow a step starts only once the previous step's outcome is
recorded, so every execution of step i must come before the first execution of step i+1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from aiki_client import RunHandle, connect
from aiki_client.wire import NOTIFY_CHANNEL, queue_key

from ..conftest import fresh_pg_database, server_in_mode
from ..procs import PostgresCluster, RedisProcess, ServerProcess, WorkerProcess
from . import worker_app as app
from .conftest import effects_of

SpawnWorker = Callable[..., WorkerProcess]
STEPS = 5
FAST = {"AIKI_CLAIM_IDLE_TIMEOUT_MS": "1500", "AIKI_SWEEP_INTERVAL_MS": "200", "AIKI_REPUBLISH_AFTER_MS": "1000"}


@pytest.fixture
def production_server(tmp_path: Path, redis_server: RedisProcess) -> Iterator[ServerProcess]:
    with server_in_mode("postgres+redis", tmp_path, redis_server, **FAST) as srv:
        yield srv


async def start_steps(url: str, count: int) -> list[RunHandle]:
    async with await connect(url) as aiki:
        return await asyncio.gather(*(app.steps_v1.start(aiki, {"n": STEPS, "step_sleep": 0.02}) for _ in range(count)))


async def await_all(url: str, ids: list[str], timeout: float = 90) -> list[object]:
    async with await connect(url) as aiki:
        handles = [await aiki.get_run(run_id) for run_id in ids]
        return await asyncio.gather(*(h.wait_for_completion(timeout=timeout) for h in handles))


def check_no_recorded_step_ran_again(effects_dir: Path, run_ids: list[str]) -> int:
    """Returns how many step executions were repeats (allowed: outcome not yet recorded)."""
    repeats = 0
    for run_id in run_ids:
        runs = [(e["detail"], e["t"]) for e in effects_of(effects_dir, run_id)]
        for i in range(STEPS - 1):
            later_first_start = min(t for step, t in runs if step == i + 1)
            assert all(t < later_first_start for step, t in runs if step == i), (run_id, i, runs)
        repeats += len(runs) - STEPS
    return repeats


async def progress(effects_dir: Path, ids: list[str], at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(effects_of(effects_dir, i)) for i in ids) < at_least:
        assert time.monotonic() < deadline, "no progress"
        await asyncio.sleep(0.05)


async def test_redis_flushall_mid_load(
    production_server: ServerProcess, redis_server: RedisProcess, spawn_worker: SpawnWorker, effects_dir: Path
) -> None:
    for _ in range(2):
        spawn_worker(production_server, only="steps@1", slow_steps=True, concurrency="25")
    ids = [h.id for h in await start_steps(production_server.url, 100)]
    await progress(effects_dir, ids, 150)
    redis_server.cli("FLUSHALL")  # every stream, group and pending message is gone
    outputs = await await_all(production_server.url, ids)
    assert outputs == [[i * 10 for i in range(STEPS)]] * 100
    check_no_recorded_step_ran_again(effects_dir, ids)


async def test_redis_restarted_empty_mid_load(tmp_path: Path, spawn_worker: SpawnWorker, effects_dir: Path) -> None:
    redis = RedisProcess(tmp_path).start()
    with fresh_pg_database() as database_url:
        srv = ServerProcess(database_url, log_path=tmp_path / "server.log", redis_url=redis.url, **FAST).start()
        try:
            for _ in range(2):
                spawn_worker(srv, only="steps@1", slow_steps=True, concurrency="25")
            ids = [h.id for h in await start_steps(srv.url, 100)]
            await progress(effects_dir, ids, 100)
            redis.kill()
            async with httpx.AsyncClient() as http:
                ready = (await http.get(f"{srv.url}/readyz")).json()
            # Redis down: the server stays ready and says Redis is degraded; work goes on over HTTP.
            assert ready["status"] == "ok" and ready["redis"].startswith("degraded"), ready
            more = [h.id for h in await start_steps(srv.url, 20)]  # starts are still accepted
            await asyncio.sleep(1.0)
            redis.start()  # same port, empty
            outputs = await await_all(srv.url, ids + more)
            assert outputs == [[i * 10 for i in range(STEPS)]] * 120
            check_no_recorded_step_ran_again(effects_dir, ids + more)
        finally:
            srv.stop()
            redis.stop()


async def test_one_of_two_servers_killed_mid_load(
    tmp_path: Path, redis_server: RedisProcess, spawn_worker: SpawnWorker, effects_dir: Path
) -> None:
    with fresh_pg_database() as database_url:
        redis_url = f"{redis_server.url}/15"
        redis_server.cli("-n", "15", "FLUSHDB")
        a = ServerProcess(database_url, log_path=tmp_path / "a.log", redis_url=redis_url, **FAST).start()
        b = ServerProcess(database_url, log_path=tmp_path / "b.log", redis_url=redis_url, **FAST).start()
        try:
            spawn_worker(a, only="steps@1", slow_steps=True, concurrency="25")
            spawn_worker(b, only="steps@1", slow_steps=True, concurrency="25")
            ids = [h.id for h in await start_steps(a.url, 60)] + [h.id for h in await start_steps(b.url, 60)]
            await progress(effects_dir, ids, 150)
            a.kill()
            outputs = await await_all(b.url, ids)
            assert outputs == [[i * 10 for i in range(STEPS)]] * 120
            check_no_recorded_step_ran_again(effects_dir, ids)
        finally:
            a.stop()
            b.stop()


async def test_postgres_restarted_mid_load(
    tmp_path: Path, redis_server: RedisProcess, spawn_worker: SpawnWorker, effects_dir: Path
) -> None:
    cluster = PostgresCluster().init()
    redis_url = f"{redis_server.url}/14"
    redis_server.cli("-n", "14", "FLUSHDB")
    srv = ServerProcess(cluster.url, log_path=tmp_path / "server.log", redis_url=redis_url, **FAST).start()
    try:
        for _ in range(2):
            spawn_worker(srv, only="steps@1", slow_steps=True, concurrency="25")
        ids = [h.id for h in await start_steps(srv.url, 100)]
        await progress(effects_dir, ids, 150)
        cluster.restart()  # every connection in the pool dies; requests meanwhile get 503s, retried
        outputs = await await_all(srv.url, ids)
        assert outputs == [[i * 10 for i in range(STEPS)]] * 100
        check_no_recorded_step_ran_again(effects_dir, ids)
    finally:
        srv.stop()
        cluster.stop()


async def test_sharded_runs_go_only_to_their_shard(
    server_process: ServerProcess, spawn_worker: SpawnWorker, effects_dir: Path
) -> None:
    shards = ["a", "b", "c", "d"]
    workers = {s: spawn_worker(server_process, only="echo@1", shards=s, concurrency="20") for s in shards}
    async with await connect(server_process.url) as aiki:
        handles = await asyncio.gather(*(app.echo_v1.start(aiki, i, shard_key=shards[i % 4]) for i in range(500)))
        outputs = await asyncio.gather(*(h.wait_for_completion(timeout=120) for h in handles))
    assert outputs == list(range(500))
    pid_shard = {w.proc.pid: s for s, w in workers.items() if w.proc is not None}
    for i, h in enumerate(handles):
        [execution] = effects_of(effects_dir, h.id)
        assert pid_shard[execution["pid"]] == shards[i % 4]
    assert {e["pid"] for h in handles for e in effects_of(effects_dir, h.id)} == set(pid_shard)


async def test_the_bus_tells_other_servers_of_ready_and_finished_runs(
    production_server: ServerProcess, redis_server: RedisProcess, spawn_worker: SpawnWorker
) -> None:
    """A long-poll held by another server hears of these writes through the bus at once."""
    bus = aioredis.from_url(redis_server.url)
    heard: set[str] = set()
    try:
        async with bus.pubsub() as pubsub:
            await pubsub.subscribe(NOTIFY_CHANNEL)
            spawn_worker(production_server, only="steps@1", concurrency="5")
            [run] = await start_steps(production_server.url, 1)
            deadline = time.monotonic() + 30
            while f"run:{run.id}" not in heard:
                assert time.monotonic() < deadline, f"heard only {heard}"
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    heard |= set(orjson.loads(message["data"])["keys"])
    finally:
        await bus.aclose()
    assert queue_key("steps", "1") in heard  # the start: HTTP claimers elsewhere may take it
