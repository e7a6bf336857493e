"""The load-test workflows, and a worker process serving them.

    lt-1     v1: one task (input + 1)
    lt-10    v1: ten sequential tasks (input + 10)
    lt-event v1: a task, a 200 ms durable sleep, a wait for the event "go" (30 s timeout), a task

Every real execution of a task body appends one JSON line {run, task_id, pid, t} to
`<effects>/<pid>.log` (O_APPEND, outside aiki), so the recovery suite can count how often a side
effect really happened and compare it with the server's recorded task calls.

    python -m load_tests.workflows --url URL --effects DIR [--id ID] [--concurrency 50] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

from aiki_client import TaskContext, WorkflowRun, connect, task, worker, workflow

EFFECTS_FD = -1
EVENT_NAME = "go"
EXPECTED_TASKS = {"lt-1": 1, "lt-10": 10, "lt-event": 2}


def effect(ctx: TaskContext) -> None:
    line = json.dumps({"run": ctx.workflow_run_id, "task_id": ctx.task_id, "pid": os.getpid(), "t": time.time()})
    os.write(EFFECTS_FD, (line + "\n").encode())


@task("lt-inc")
async def inc(x: int, ctx: TaskContext) -> int:
    effect(ctx)
    return x + 1


lt_1 = workflow("lt-1")


@lt_1.v("1")
async def lt_1_v1(run: WorkflowRun, inp: int) -> int:
    result: int = await inc.start(run, inp)
    return result


lt_10 = workflow("lt-10")


@lt_10.v("1")
async def lt_10_v1(run: WorkflowRun, inp: int) -> int:
    x = inp
    for _ in range(10):
        x = await inc.start(run, x)
    return x


lt_event = workflow("lt-event")


@lt_event.v("1")
async def lt_event_v1(run: WorkflowRun, inp: int) -> int:
    x: int = await inc.start(run, inp)
    await run.sleep("nap", milliseconds=200)
    ev = await run.wait_for_event(EVENT_NAME, timeout=timedelta(seconds=30))
    if not ev.received:
        raise RuntimeError("the event never came")
    y: int = await inc.start(run, x + int(ev.data))
    return y


WORKFLOWS = [lt_1_v1, lt_10_v1, lt_event_v1]


def expected_output(workflow_name: str, value: int) -> int:
    """lt-event's event carries 100."""
    return {"lt-1": value + 1, "lt-10": value + 10, "lt-event": value + 102}[workflow_name]


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    aiki = await connect(args.url, redis=args.redis)
    try:
        w = worker(
            id=args.id,
            workflows=WORKFLOWS,
            max_concurrent_workflow_runs=args.concurrency,
            heartbeat_interval_ms=args.heartbeat_ms,
            graceful_shutdown_timeout_ms=5_000,
            # With Redis, the default subscriber: Redis Streams.
            subscriber=None if args.redis else {"type": "polling", "max_batch_size": 10},
        )
        handle = await w.spawn(aiki)
        print(f"ready pid={os.getpid()} worker={handle.instance_id}", flush=True)
        await stop.wait()
        await handle.stop()
        print(
            f"stopped after {handle.executions_started} run executions ({handle.runs_finished} ran to their end)",
            flush=True,
        )
    finally:
        await aiki.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A worker process for the aiki load-test workflows.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--effects", required=True, type=Path)
    parser.add_argument("--id", default="lt-worker")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--heartbeat-ms", type=int, default=500)
    parser.add_argument("--redis", default=None, help="connect with redis=URL (Redis Streams subscriber)")
    args = parser.parse_args()
    global EFFECTS_FD
    args.effects.mkdir(parents=True, exist_ok=True)
    EFFECTS_FD = os.open(args.effects / f"{os.getpid()}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
