"""The benchmark workflows, and a worker process serving them.

    bench-1  v1: one trivial async task (input + 1)
    bench-10 v1: ten sequential trivial async tasks (input + 10)

    python -m bench.workflows --url URL [--concurrency 50] [--batch 10]

The worker uses the polling subscriber (claims over HTTP long-poll), stops gracefully on SIGTERM or
SIGINT, and prints one `ready` line once it takes work. It runs on uvloop when uvloop is installed:
this measures the system as deployed; the SDK itself does not need uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiki_client import WorkflowRun, connect, task, worker, workflow

T = TypeVar("T")

BENCH_1_TASKS = 1
BENCH_10_TASKS = 10


@task("bench-inc")
async def inc(x: int) -> int:
    return x + 1


bench_1 = workflow("bench-1")


@bench_1.v("1")
async def bench_1_v1(run: WorkflowRun, inp: int) -> int:
    result: int = await inc.start(run, inp)
    return result


bench_10 = workflow("bench-10")


@bench_10.v("1")
async def bench_10_v1(run: WorkflowRun, inp: int) -> int:
    x = inp
    for _ in range(BENCH_10_TASKS):
        x = await inc.start(run, x)
    return x


WORKFLOWS = [bench_1_v1, bench_10_v1]


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def loop_name() -> str:
    """`uvloop` or `asyncio`: which event loop runs the calling coroutine."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    aiki = await connect(args.url)
    try:
        w = worker(
            id=args.id,
            workflows=WORKFLOWS,
            max_concurrent_workflow_runs=args.concurrency,
            heartbeat_interval_ms=30_000,
            graceful_shutdown_timeout_ms=5_000,
            subscriber={"type": "polling", "max_batch_size": args.batch},
        )
        handle = await w.spawn(aiki)
        print(f"ready pid={os.getpid()} worker={handle.instance_id} loop={loop_name()}", flush=True)
        await stop.wait()
        await handle.stop()
        print(f"stopped after {handle.runs_finished} run executions", flush=True)
    finally:
        await aiki.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A worker process for the aiki benchmark workflows.")
    parser.add_argument("--url", required=True, help="the aiki server, e.g. http://127.0.0.1:9090")
    parser.add_argument("--concurrency", type=int, default=50, help="max_concurrent_workflow_runs (default 50)")
    parser.add_argument("--batch", type=int, default=10, help="polling max_batch_size (default 10, the SDK default)")
    parser.add_argument("--id", default="bench-worker")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_loop(serve(args))


if __name__ == "__main__":
    main()
