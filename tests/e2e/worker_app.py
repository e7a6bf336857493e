"""The workflows the end-to-end tests run, and a worker process serving them.

Every real execution of a task body appends one line to `<effects>/<run id>.log`, written outside
aiki, so tests can count how often a side effect really happened.

    python -m tests.e2e.worker_app --url URL --effects DIR [--only echo@1,steps@1] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from aiki_client import TaskContext, TaskFailed, WorkflowRun, connect, retry, task, worker, workflow

EFFECTS = Path(".")
# Only workers started with --slow-steps honour a step's "sleep": a replacement worker then
# finishes quickly what a killed slow worker left behind.
SLOW_STEPS = False


def effect(ctx: TaskContext, name: str, detail: Any = None) -> None:
    line = json.dumps({"task": name, "attempt": ctx.attempt, "detail": detail, "pid": os.getpid(), "t": time.time()})
    line += "\n"
    fd = os.open(EFFECTS / f"{ctx.workflow_run_id}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task("echo-task")
async def echo_task(inp: Any, ctx: TaskContext) -> Any:
    effect(ctx, "echo-task", inp)
    return inp


@task("step")
async def step(inp: dict[str, Any], ctx: TaskContext) -> int:
    effect(ctx, "step", inp["i"])
    if SLOW_STEPS:
        await asyncio.sleep(inp.get("sleep", 0))
    return int(inp["i"]) * 10


@task("flaky", retry=retry.fixed(max_attempts=5, delay_ms=20))
def flaky(inp: dict[str, Any], ctx: TaskContext) -> dict[str, int]:
    effect(ctx, "flaky")
    if ctx.attempt < inp["succeed_on"]:
        raise RuntimeError(f"attempt {ctx.attempt} failed")
    return {"attempt": ctx.attempt}


@task("slow-retry", retry=retry.fixed(max_attempts=2, delay_ms=1_500))
async def slow_retry(inp: dict[str, Any], ctx: TaskContext) -> int:
    effect(ctx, "slow-retry")
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails; the retry is 1.5 s later")
    return ctx.attempt


@task("doomed", retry=retry.exponential(max_attempts=3, base_delay_ms=10, max_delay_ms=40))
async def doomed(inp: Any, ctx: TaskContext) -> None:
    effect(ctx, "doomed")
    raise ValueError("this task never works")


echo = workflow("echo")


@echo.v("1")
async def echo_v1(run: WorkflowRun, inp: Any) -> Any:
    return await echo_task.start(run, inp)


steps = workflow("steps")


@steps.v("1")
async def steps_v1(run: WorkflowRun, inp: dict[str, Any]) -> list[int]:
    """`n` sequential steps; step `slow_at` sleeps `sleep` seconds (a window to kill the worker),
    every other step sleeps `step_sleep` seconds."""
    out = []
    for i in range(inp["n"]):
        sleep = inp.get("sleep", 0) if i == inp.get("slow_at") else inp.get("step_sleep", 0)
        out.append(await step.start(run, {"i": i, "sleep": sleep}))
    return out


fan = workflow("fan")


@fan.v("1")
async def fan_v1(run: WorkflowRun, inp: dict[str, Any]) -> list[int]:
    return list(await asyncio.gather(*(step.start(run, {"i": i}) for i in range(inp["n"]))))


twice = workflow("twice")


@twice.v("1")
async def twice_v1(run: WorkflowRun, inp: Any) -> list[Any]:
    first = await echo_task.start(run, inp)
    second = await echo_task.start(run, inp)
    return [first, second]


retrying = workflow("retrying")


@retrying.v("1")
async def retrying_v1(run: WorkflowRun, inp: dict[str, Any]) -> dict[str, int]:
    result: dict[str, int] = await flaky.start(run, inp)
    return result


@retrying.v("slow")
async def retrying_slow(run: WorkflowRun, inp: Any) -> int:
    result: int = await slow_retry.start(run, inp)
    return result


failing = workflow("failing")


@failing.v("uncaught")
async def failing_uncaught(run: WorkflowRun, inp: Any) -> None:
    await doomed.start(run, inp)


@failing.v("caught")
async def failing_caught(run: WorkflowRun, inp: Any) -> dict[str, Any]:
    try:
        await doomed.start(run, inp)
    except TaskFailed as exc:
        return {"recovered": True, "error": exc.error, "attempts": exc.attempts}
    return {"recovered": False}


@failing.v("whole-run-retry", retry=retry.fixed(max_attempts=2, delay_ms=50))
async def failing_retried(run: WorkflowRun, inp: Any) -> dict[str, Any]:
    before = await echo_task.start(run, "before")
    if run.attempt == 1:
        raise RuntimeError("first attempt of the whole run fails")
    return {"before": before, "attempt": run.attempt}


versioned = workflow("versioned")


@versioned.v("1")
async def versioned_v1(run: WorkflowRun, inp: Any) -> str:
    await echo_task.start(run, inp)
    return "v1"


@versioned.v("2")
async def versioned_v2(run: WorkflowRun, inp: Any) -> str:
    await echo_task.start(run, inp)
    return "v2"


@task("clock")
async def clock(inp: Any, ctx: TaskContext) -> float:
    effect(ctx, "clock", inp)
    return time.time()


sleeper = workflow("sleeper")


@sleeper.v("1")
async def sleeper_v1(run: WorkflowRun, inp: dict[str, Any]) -> dict[str, float]:
    """Reads the clock (in a task), sleeps durably, reads it again."""
    before = await clock.start(run, "before")
    await run.sleep("nap", seconds=inp["seconds"])
    after = await clock.start(run, "after")
    return {"before": before, "after": after}


waiter = workflow("waiter")


@waiter.v("1")
async def waiter_v1(run: WorkflowRun, inp: dict[str, Any]) -> list[Any]:
    """After a task, waits for `count` events called `name` (timeout seconds each, optional)."""
    await echo_task.start(run, "ready")
    results = []
    for _ in range(inp.get("count", 1)):
        ev = await run.wait_for_event(inp["name"], timeout=inp.get("timeout"))
        results.append([ev.received, ev.data])
    return results


@waiter.v("gather")
async def waiter_gather(run: WorkflowRun, inp: dict[str, Any]) -> list[Any]:
    events = await asyncio.gather(*(run.wait_for_event(name) for name in inp["names"]))
    return [ev.data for ev in events]


kid = workflow("kid")


@kid.v("1")
async def kid_v1(run: WorkflowRun, inp: Any) -> Any:
    if inp == "fail":
        raise ValueError("the child failed")
    if inp == "hang":
        await run.wait_for_event("never")
    if isinstance(inp, dict) and "grandchild" in inp:
        child = await kid_v1.start_as_child(run, inp["grandchild"])
        return await child.wait_for_completion()
    return await step.start(run, {"i": inp})


parent = workflow("parent")


@parent.v("1")
async def parent_v1(run: WorkflowRun, inp: dict[str, Any]) -> dict[str, Any]:
    """Fans out to children with the given inputs and reports each child's outcome."""
    children = [await kid_v1.start_as_child(run, x) for x in inp["inputs"]]
    outcomes = await asyncio.gather(*(c.wait_for_completion() for c in children), return_exceptions=True)
    return {
        "children": [c.id for c in children],
        "outcomes": [
            {"error": type(o).__name__, "detail": str(o)} if isinstance(o, Exception) else {"output": o}
            for o in outcomes
        ],
    }


ALL = [
    echo_v1,
    steps_v1,
    fan_v1,
    twice_v1,
    retrying_v1,
    retrying_slow,
    failing_uncaught,
    failing_caught,
    failing_retried,
    versioned_v1,
    versioned_v2,
    sleeper_v1,
    waiter_v1,
    waiter_gather,
    kid_v1,
    parent_v1,
]


async def serve(args: argparse.Namespace) -> None:
    chosen = ALL
    if args.only:
        wanted = set(args.only.split(","))
        chosen = [wv for wv in ALL if f"{wv.name}@{wv.version}" in wanted]
    aiki = await connect(args.url, redis=args.redis or None)
    subscriber: dict[str, Any] = {
        "type": "polling",
        "poll_interval_ms": 50,
        "max_batch_size": 10,
        "max_retry_delay_ms": 500,
    }
    if args.redis:
        subscriber = {"type": "redis_streams", "claim_min_idle_time_ms": 1_000, "block_time_ms": 500}
    w = worker(
        id=args.id,
        workflows=chosen,
        max_concurrent_workflow_runs=args.concurrency,
        heartbeat_interval_ms=args.heartbeat_ms,
        graceful_shutdown_timeout_ms=2_000,
        shard_keys=args.shards.split(",") if args.shards else None,
        subscriber=subscriber,
    )
    handle = await w.spawn(aiki)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"worker {handle.instance_id} ready at {time.time():.3f}", flush=True)
    await stop.wait()
    await handle.stop()
    await aiki.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--effects", required=True)
    parser.add_argument("--only", default="")
    parser.add_argument("--id", default="test-worker")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--heartbeat-ms", type=int, default=300)
    parser.add_argument("--slow-steps", action="store_true")
    parser.add_argument("--redis", default="", help="Redis URL: use the redis_streams subscriber")
    parser.add_argument("--shards", default="", help="comma-separated shard keys this worker serves")
    args = parser.parse_args()
    global EFFECTS, SLOW_STEPS
    EFFECTS = Path(args.effects)
    SLOW_STEPS = args.slow_steps
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
