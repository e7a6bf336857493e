"""The benchmark workflows, and a worker process serving them.

    bench-1     v1: one trivial async task (input + 1)
    bench-10    v1: ten sequential trivial async tasks (input + 10)
    bench-sleep v1: reads the clock in a task, sleeps durably `ms`, reads the clock again in a task
    bench-wait  v1: sleeps durably `ms` (ten minutes in the benchmark), then returns `n`
    bench-nap   v1: a task, a durable sleep of 1 s, a task; returns its input (the peer benchmark's sleep-1s)

    python -m bench.workflows --url URL [--concurrency 50] [--batch 10] [--redis URL] [--id ID]

Without `--redis` the worker uses the polling subscriber (claims over HTTP long-poll, at most
`--batch` runs per claim); with `--redis` the client is connected with `redis=URL`, so the worker
takes the default subscriber, Redis Streams. It stops gracefully on SIGTERM or SIGINT, prints one
`ready` line once it takes work and one `stopped after N run executions` line when it stops. It runs
on uvloop when uvloop is installed: this measures the system as deployed; the SDK itself does not
need uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import re
import signal
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiki_client import Client, WorkflowRun, connect, task, worker, workflow

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


@task("bench-clock")
async def clock(label: str) -> float:
    """The worker's wall clock (seconds since the epoch): recorded, so a replay returns the first reading."""
    return time.time()


bench_sleep = workflow("bench-sleep")


@bench_sleep.v("1")
async def bench_sleep_v1(run: WorkflowRun, inp: dict[str, Any]) -> dict[str, float]:
    before = await clock.start(run, "before")
    await run.sleep("nap", milliseconds=inp["ms"])
    after = await clock.start(run, "after")
    return {"before": before, "after": after}


bench_wait = workflow("bench-wait")


@bench_wait.v("1")
async def bench_wait_v1(run: WorkflowRun, inp: dict[str, Any]) -> int:
    await run.sleep("long", milliseconds=inp["ms"])
    n: int = inp["n"]
    return n


bench_nap = workflow("bench-nap")


@bench_nap.v("1")
async def bench_nap_v1(run: WorkflowRun, inp: int) -> int:
    await clock.start(run, "before")
    await run.sleep("nap", seconds=1)
    await clock.start(run, "after")
    return inp


WORKFLOWS = [bench_1_v1, bench_10_v1, bench_sleep_v1, bench_wait_v1, bench_nap_v1]


_ID_SEGMENT = re.compile(r"^[0-9a-fA-F-]{16,}$")


class RequestCounter:
    """Counts the HTTP exchanges a client makes (retries included), by method and route, so the
    benchmark can report round trips per workflow as measured rather than as believed."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def install(self, client: Client) -> None:
        http = client._transport._http
        original = http.request

        async def counted(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            route = "/".join("{id}" if _ID_SEGMENT.match(seg) else seg for seg in path.split("?", 1)[0].split("/"))
            self.counts[f"{method} {route}"] += 1
            return await original(method, path, *args, **kwargs)

        http.request = counted  # type: ignore[method-assign]


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
    aiki = await connect(args.url, redis=args.redis)
    counter = RequestCounter()
    counter.install(aiki)
    # SIGUSR1: print the HTTP requests made so far (the benchmark reads them at window edges).
    dumps = 0

    def dump_counts() -> None:
        nonlocal dumps
        dumps += 1
        print(f"counts {dumps} {json.dumps(dict(counter.counts), sort_keys=True)}", flush=True)

    loop.add_signal_handler(signal.SIGUSR1, dump_counts)
    try:
        w = worker(
            id=args.id,
            workflows=WORKFLOWS,
            max_concurrent_workflow_runs=args.concurrency,
            heartbeat_interval_ms=30_000,
            graceful_shutdown_timeout_ms=5_000,
            # With Redis the default subscriber (redis_streams) is the one measured.
            subscriber=None if args.redis else {"type": "polling", "max_batch_size": args.batch},
        )
        handle = await w.spawn(aiki)
        kind = "redis_streams" if args.redis else "polling"
        print(f"ready pid={os.getpid()} worker={handle.instance_id} subscriber={kind} loop={loop_name()}", flush=True)
        await stop.wait()
        await handle.stop()
        print(
            f"stopped after {handle.executions_started} run executions ({handle.runs_finished} ran to their end)",
            flush=True,
        )
    finally:
        await aiki.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A worker process for the aiki benchmark workflows.")
    parser.add_argument("--url", required=True, help="the aiki server, e.g. http://127.0.0.1:9090")
    parser.add_argument("--concurrency", type=int, default=50, help="max_concurrent_workflow_runs (default 50)")
    parser.add_argument("--batch", type=int, default=10, help="polling max_batch_size (default 10, the SDK default)")
    parser.add_argument("--redis", default=None, help="connect the client with redis=URL (Redis Streams subscriber)")
    parser.add_argument("--id", default="bench-worker")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_loop(serve(args))


if __name__ == "__main__":
    main()
