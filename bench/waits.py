"""The durable-wait sections of the benchmark: timer precision and the cost of waiting.

Timer precision: start `runs` runs of bench-sleep at once (`start_concurrency` start calls in
flight); each reads the clock in a task, sleeps `sleep_ms` durably and reads the clock again in a
task. Lateness = after − before − sleep, as the workflow sees it. Every run must complete, none may
wake early. Each run's server history then splits the lateness in three: deadline → queued (the
server's timer), queued → running (delivery and claim), running → the second clock reading (the
claim's answer reaching the worker, replay, the task starting).

Cost of waiting: read the server's CPU over an idle window, its RSS (/proc/<pid>/status VmRSS) and
the database size; start `runs` runs of bench-wait that sleep ten minutes; once the server counts
all of them `sleeping`, read RSS and size again and the CPU of every process involved over a
window while they wait. The runs are checked: all sleeping, none due, none held by a worker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from aiki_client import Client
from aiki_client.workflow import WorkflowVersion

from .harness import Deployment, Ledger, cpu_between, cpu_snapshot, latency_summary, server_counts
from .workflows import bench_sleep_v1, bench_wait_v1

# A woken run's second clock reading may precede its deadline by the deadline's rounding to whole
# milliseconds; anything earlier is an early wake, a failure.
EARLY_TOLERANCE_S = 0.002


async def start_many(
    client: Client,
    ledger: Ledger,
    version: WorkflowVersion,
    inputs: list[Any],
    *,
    concurrency: int,
    executions_each: int,
) -> tuple[list[Any], float]:
    """Start one run per input, `concurrency` start calls in flight. Returns the handles (None
    where the start failed) in input order, and the seconds it took."""
    handles: list[Any] = [None] * len(inputs)
    todo = iter(range(len(inputs)))

    async def starter() -> None:
        for i in todo:
            try:
                handles[i] = await version.start(client, inputs[i])
            except Exception as exc:
                ledger.fail(f"{version.name}: start failed: {type(exc).__name__}: {exc}")
                continue
            ledger.start(version.name, executions_each)

    t0 = time.perf_counter()
    await asyncio.gather(*(starter() for _ in range(concurrency)))
    return handles, time.perf_counter() - t0


# -- timer precision -----------------------------------------------------------------------------


async def timer_precision(
    client: Client,
    ledger: Ledger,
    dep: Deployment,
    *,
    runs: int,
    sleep_ms: int,
    start_concurrency: int,
    run_timeout_s: float,
    pace_s: float | None = None,
) -> dict[str, Any]:
    """`runs` runs of bench-sleep: all at once (`start_concurrency` start calls in flight), or one
    every `pace_s` seconds (a light load: each run mostly sleeps and wakes on its own)."""
    name = bench_sleep_v1.name
    failed_before = len(ledger.failures)
    inputs = [{"ms": sleep_ms, "i": i, "paced": pace_s is not None} for i in range(runs)]
    snap0 = await asyncio.to_thread(cpu_snapshot, dep.cpu_groups())
    if pace_s is None:
        handles, start_s = await start_many(
            client, ledger, bench_sleep_v1, inputs, concurrency=start_concurrency, executions_each=2
        )
    else:
        handles = []
        t0 = time.perf_counter()
        for i, inp in enumerate(inputs):
            await asyncio.sleep(max(0.0, t0 + i * pace_s - time.perf_counter()))
            try:
                handles.append(await bench_sleep_v1.start(client, inp))
            except Exception as exc:
                ledger.fail(f"{name}: start failed: {type(exc).__name__}: {exc}")
                continue
            ledger.start(name, 2)
        start_s = time.perf_counter() - t0

    # Wait for them in start order, a few long-polls at a time (a thousand held long-polls would
    # each re-read the database every second and load the server we are measuring).
    outputs: dict[str, dict[str, float]] = {}
    todo = iter([h for h in handles if h is not None])

    async def waiter() -> None:
        for h in todo:
            try:
                out = await h.wait_for_completion(timeout=run_timeout_s + sleep_ms / 1000)
            except Exception as exc:
                ledger.fail(f"{name} run {h.id}: {type(exc).__name__}: {exc}")
                continue
            if not (
                isinstance(out, dict) and isinstance(out.get("before"), float) and isinstance(out.get("after"), float)
            ):
                ledger.fail(f"{name} run {h.id}: unexpected output {out!r}")
                continue
            outputs[h.id] = out

    await asyncio.gather(*(waiter() for _ in range(50)))
    snap1 = await asyncio.to_thread(cpu_snapshot, dep.cpu_groups())
    total_s = snap1.at - snap0.at

    lateness: list[float] = []
    for run_id, out in outputs.items():
        late = out["after"] - out["before"] - sleep_ms / 1000
        if late < -EARLY_TOLERANCE_S:
            ledger.fail(f"{name} run {run_id}: woke {-late * 1000:.1f} ms before its deadline")
            continue
        lateness.append(max(late, 0.0))
        ledger.ok(name)

    # Where the lateness goes, from each run's server history and recorded deadline.
    parts: dict[str, list[float]] = {"timer": [], "delivery": [], "resume": []}
    deadlines: list[int] = []
    ids = list(outputs)
    todo_ids = iter(ids)
    async with httpx.AsyncClient(base_url=dep.url, timeout=30) as http:

        async def reader() -> None:
            for run_id in todo_ids:
                waits = (await http.get(f"/v1/runs/{run_id}/waits")).json()["waits"]
                history = (await http.get(f"/v1/runs/{run_id}/history")).json()["history"]
                naps = [w for w in waits if w["kind"] == "sleep" and w["name"] == "nap"]
                if len(naps) != 1 or naps[0]["state"] != "done" or naps[0]["deadline_ms"] is None:
                    ledger.fail(f"{name} run {run_id}: its sleep is recorded as {naps}")
                    continue
                deadline = naps[0]["deadline_ms"]
                states = [(h["state"], h["at_ms"]) for h in history]
                try:
                    slept = [s for s, _ in states].index("sleeping")
                    queued_at = next(at for s, at in states[slept:] if s == "queued")
                    running_at = next(at for s, at in states[slept:] if s == "running")
                except (ValueError, StopIteration):
                    ledger.fail(f"{name} run {run_id}: history {states} has no sleep → queued → running")
                    continue
                deadlines.append(deadline)
                parts["timer"].append((queued_at - deadline) / 1000)
                parts["delivery"].append((running_at - queued_at) / 1000)
                parts["resume"].append(outputs[run_id]["after"] - running_at / 1000)

        await asyncio.gather(*(reader() for _ in range(20)))

    counts = (await asyncio.to_thread(server_counts, dep.url)).get(name, {})
    started = ledger.started.get(name, 0)
    if counts != {"completed": started}:
        ledger.fail(f"{name}: the server counts {counts}, the driver started {started} (all should be completed)")
    cpu = cpu_between(snap0, snap1)
    return {
        "workflow": name,
        "runs": runs,
        "sleep_ms": sleep_ms,
        "start_concurrency": 1 if pace_s is not None else start_concurrency,
        "pace_s": pace_s,
        "start_s": start_s,
        "starts_per_s": runs / start_s if start_s else float("nan"),
        "deadline_spread_s": (max(deadlines) - min(deadlines)) / 1000 if deadlines else float("nan"),
        "total_s": total_s,
        "completed": len(lateness),
        "lateness": latency_summary(lateness),
        "lateness_parts": {k: latency_summary(v) for k, v in parts.items()},
        "server_counts": counts,
        "cpu_s": cpu,
        "failures": len(ledger.failures) - failed_before,
    }


# -- the cost of waiting --------------------------------------------------------------------------


async def cpu_window(dep: Deployment, seconds: float) -> dict[str, Any]:
    """CPU seconds of each process group over `seconds`, and per second of wall time."""
    a = await asyncio.to_thread(cpu_snapshot, dep.cpu_groups())
    await asyncio.sleep(seconds)
    b = await asyncio.to_thread(cpu_snapshot, dep.cpu_groups())
    cpu = cpu_between(a, b)
    window = b.at - a.at
    return {"window_s": window, "cpu_s": cpu, "cpu_ms_per_s": {k: v * 1000 / window for k, v in cpu.items()}}


async def cost_of_waiting(
    client: Client,
    ledger: Ledger,
    dep: Deployment,
    *,
    runs: int,
    sleep_ms: int,
    start_concurrency: int,
    idle_window_s: float,
    window_s: float,
) -> dict[str, Any]:
    name = bench_wait_v1.name
    failed_before = len(ledger.failures)
    await asyncio.sleep(1.0)  # whatever the previous section left in flight settles
    rss_before = dep.server_memory_kb()
    db_before = await asyncio.to_thread(dep.db_size_bytes)
    idle = await cpu_window(dep, idle_window_s)

    inputs = [{"ms": sleep_ms, "n": i} for i in range(runs)]
    _, start_s = await start_many(
        client, ledger, bench_wait_v1, inputs, concurrency=start_concurrency, executions_each=1
    )
    started = ledger.started.get(name, 0)
    t0 = time.perf_counter() - start_s
    # All asleep? Ask the server (GET /v1/workflows) until it counts every run sleeping.
    deadline = time.perf_counter() + max(120.0, runs / 50)
    counts: dict[str, int] = {}
    while time.perf_counter() < deadline:
        dep.check_alive()
        counts = (await asyncio.to_thread(server_counts, dep.url)).get(name, {})
        if counts.get("sleeping", 0) >= started:
            break
        await asyncio.sleep(0.5)
    asleep_s = time.perf_counter() - t0
    if counts != {"sleeping": started}:
        ledger.fail(f"{name}: after {asleep_s:.0f} s the server counts {counts}, expected {started} sleeping")
    rss_asleep = dep.server_memory_kb()
    db_asleep = await asyncio.to_thread(dep.db_size_bytes)
    await asyncio.sleep(2.0)  # the last checkpoints' answers, acks and the like settle
    waiting = await cpu_window(dep, window_s)
    rss_end = dep.server_memory_kb()

    # Checked again after the window: still all sleeping (none woke, none is held by a worker), and
    # (one page of them) due about ten minutes after they started.
    counts_end = (await asyncio.to_thread(server_counts, dep.url)).get(name, {})
    if counts_end != {"sleeping": started}:
        ledger.fail(f"{name}: after the window the server counts {counts_end}, expected {started} sleeping")
    async with httpx.AsyncClient(base_url=dep.url, timeout=30) as http:
        page = (await http.get("/v1/runs", params={"workflow": name, "state": "sleeping", "limit": 500})).json()
    now_ms = time.time() * 1000
    early = [r["id"] for r in page["runs"] if r["wake_at_ms"] is None or r["wake_at_ms"] < now_ms + sleep_ms / 2]
    if len(page["runs"]) != min(500, started) or early:
        ledger.fail(f"{name}: listed {len(page['runs'])} sleeping runs, {len(early)} of them due too soon")
    for _ in range(counts_end.get("sleeping", 0) if counts_end == {"sleeping": started} else 0):
        ledger.ok(name)
    return {
        "workflow": name,
        "runs": runs,
        "sleep_ms": sleep_ms,
        "start_concurrency": start_concurrency,
        "start_s": start_s,
        "asleep_s": asleep_s,
        "runs_put_to_sleep_per_s": started / asleep_s if asleep_s else float("nan"),
        "server_counts": counts_end,
        "rss_kb": {"before": rss_before, "all_asleep": rss_asleep, "after_window": rss_end},
        "db_bytes": {"before": db_before, "all_asleep": db_asleep},
        "idle": idle,
        "waiting": waiting,
        "failures": len(ledger.failures) - failed_before,
    }
