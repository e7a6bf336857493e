"""Crash recovery with real processes: workers SIGKILLed or frozen, the server SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from aiki_client import connect

from ..procs import ServerProcess, WorkerProcess
from . import worker_app as app
from .conftest import effects_of

SpawnWorker = Callable[..., WorkerProcess]


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def started_steps(effects_dir: Path, run_id: str) -> list[object]:
    return [e["detail"] for e in effects_of(effects_dir, run_id)]


async def recorded_tasks(url: str, run_id: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as http:
        tasks: list[dict[str, object]] = (await http.get(f"{url}/v1/runs/{run_id}/tasks")).json()["tasks"]
        return tasks


async def test_worker_killed_mid_task_another_finishes(
    server_process: ServerProcess, spawn_worker: SpawnWorker, effects_dir: Path
) -> None:
    victim = spawn_worker(server_process, only="steps@1", slow_steps=True)
    async with await connect(server_process.url) as aiki:
        handle = await app.steps_v1.start(aiki, {"n": 5, "slow_at": 2, "sleep": 60})
        await wait_for(lambda: 2 in started_steps(effects_dir, handle.id), 15, "step 2 to start")
        victim.kill()

        spawn_worker(server_process, only="steps@1")
        assert await handle.wait_for_completion(timeout=20) == [0, 10, 20, 30, 40]

    runs_per_step = Counter(started_steps(effects_dir, handle.id))
    # Steps 0 and 1 were recorded complete before the kill: never run again. Step 2 was in flight.
    assert runs_per_step == {0: 1, 1: 1, 2: 2, 3: 1, 4: 1}
    tasks = await recorded_tasks(server_process.url, handle.id)
    assert [(t["state"], t["output"]) for t in tasks] == [("completed", i * 10) for i in range(5)]
    pids = {e["pid"] for e in effects_of(effects_dir, handle.id)}
    assert victim.proc is not None and victim.proc.pid in pids and len(pids) == 2


async def test_server_killed_and_restarted_runs_in_flight_finish(
    server_process: ServerProcess, spawn_worker: SpawnWorker, effects_dir: Path
) -> None:
    spawn_worker(server_process, only="steps@1", slow_steps=True, concurrency="20")
    async with await connect(server_process.url) as aiki:
        handles = [await app.steps_v1.start(aiki, {"n": 6, "step_sleep": 0.1}) for _ in range(20)]
        await wait_for(lambda: sum(len(started_steps(effects_dir, h.id)) for h in handles) >= 30, 20, "progress")

        server_process.kill()
        await asyncio.sleep(0.5)
        server_process.start()

        outputs = await asyncio.gather(*(h.wait_for_completion(timeout=60) for h in handles))
    assert outputs == [[i * 10 for i in range(6)]] * 20
    for h in handles:
        tasks = await recorded_tasks(server_process.url, h.id)
        assert [(t["state"], t["output"]) for t in tasks] == [("completed", i * 10) for i in range(6)]
        # At-least-once: a step may run twice only when its outcome was not yet recorded.
        assert all(n <= 2 for n in Counter(started_steps(effects_dir, h.id)).values())


async def test_fenced_out_worker_writes_are_rejected(
    server_process: ServerProcess, spawn_worker: SpawnWorker, effects_dir: Path
) -> None:
    stale = spawn_worker(server_process, only="steps@1", slow_steps=True)
    async with await connect(server_process.url) as aiki:
        handle = await app.steps_v1.start(aiki, {"n": 3, "slow_at": 1, "sleep": 3})
        await wait_for(lambda: 1 in started_steps(effects_dir, handle.id), 15, "step 1 to start")
        assert stale.proc is not None
        os.kill(stale.proc.pid, signal.SIGSTOP)  # frozen: no heartbeats, its claim goes idle
        try:
            spawn_worker(server_process, only="steps@1")
            assert await handle.wait_for_completion(timeout=20) == [0, 10, 20]
            finished = await handle.get_status()
        finally:
            os.kill(stale.proc.pid, signal.SIGCONT)

        # The stale worker wakes up, finishes its sleep and tries to record step 1: rejected.
        await wait_for(lambda: "claim lost" in stale.log(), 15, "the stale worker to notice its lost claim")
        after = await handle.get_status()
    assert (after.state, after.output, after.updated_at) == ("completed", [0, 10, 20], finished.updated_at)
    tasks = await recorded_tasks(server_process.url, handle.id)
    assert [(t["state"], t["output"]) for t in tasks] == [("completed", 0), ("completed", 10), ("completed", 20)]
    assert stale.proc.poll() is None, "the fenced worker stops that run, not itself"
