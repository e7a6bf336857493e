"""The workloads every engine in the peer benchmark runs, and the closed-loop load that measures
them. Standard library only: the drivers of the peers import it from their own virtualenv.

A driver gives `measure` one coroutine function, `run_one(kind, value)`, that starts one workflow of
`kind` with input `value`, waits for its result and returns it; `measure` checks every result and
keeps `concurrency` workflows in flight (each slot starts the next as soon as its last one ended),
counting only what ends inside the measurement window. The same matrix runs for every engine:

    1-step    one step (input + 1), at 1, 10, 30 and 100 in flight
    10-step   ten sequential steps (input + 10), at 1, 10, 30 and 100 in flight
    sleep-1s  step, durable sleep of 1 s, step (returns input) at 100 in flight

"1 in flight" is the idle latency; "100 in flight" is the 100-workflows-in-flight workload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

STEPS = {"1-step": 1, "10-step": 10, "sleep-1s": 0}
SLEEP_S = 1.0


@dataclass(frozen=True)
class Cell:
    kind: str
    concurrency: int
    seconds: float  # measurement window (after the warm-up)


def matrix(seconds: float) -> list[Cell]:
    cells = [Cell(kind, c, seconds) for kind in ("1-step", "10-step") for c in (1, 10, 30, 100)]
    # Each sleeping slot finishes about one workflow a second: a longer window for enough samples.
    cells.append(Cell("sleep-1s", 100, max(seconds, 5.0)))
    return cells


def expected(kind: str, value: int) -> int:
    return value + STEPS[kind]


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


RunOne = Callable[[str, int], Awaitable[Any]]


async def measure(
    run_one: RunOne, cell: Cell, *, warmup_s: float = 1.0, max_warmup_s: float = 60.0, drain_s: float = 60.0
) -> dict[str, Any]:
    """Closed loop: `cell.concurrency` slots, each starting a workflow as soon as its last one
    ended. The window opens once the load is steady — `warmup_s` passed and every slot has seen a
    workflow through (a slow engine's first wave would otherwise fall outside a short window) — and
    lasts `cell.seconds`; workflows that end inside it are counted. Workflows still in flight when
    it closes are waited for and checked, not counted."""
    started = time.perf_counter()
    window: list[float] = []  # [start, end] once the load is steady
    every_slot_done = asyncio.Event()
    slots_done = 0
    finished: list[tuple[float, float]] = []  # (end time, latency) of every correct workflow
    errors: list[str] = []

    def open_window() -> bool:
        return bool(window) and time.perf_counter() < window[1]

    async def slot(k: int) -> None:
        nonlocal slots_done
        value = k * 10_000_000
        first = True
        while not window or open_window():
            value += 100
            t0 = time.perf_counter()
            try:
                result = await run_one(cell.kind, value)
            except Exception as exc:  # every failure is reported, none stops the load
                errors.append(f"{type(exc).__name__}: {exc}")
                if len(errors) > 1000:
                    return
                continue
            t1 = time.perf_counter()
            if result != expected(cell.kind, value):
                errors.append(f"{cell.kind}({value}) returned {result!r}, expected {expected(cell.kind, value)}")
                continue
            finished.append((t1, t1 - t0))
            if first:
                first = False
                slots_done += 1
                if slots_done == cell.concurrency:
                    every_slot_done.set()

    slots = [asyncio.create_task(slot(k)) for k in range(cell.concurrency)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(every_slot_done.wait(), max_warmup_s)
    await asyncio.sleep(max(0.0, started + warmup_s - time.perf_counter()))
    window[:] = [time.perf_counter(), time.perf_counter() + cell.seconds]
    done, pending = await asyncio.wait(slots, timeout=cell.seconds + drain_s)
    for t in pending:
        t.cancel()
        errors.append(f"a slot's workflow did not end within {drain_s} s of the window's end")
    for t in done:
        if t.exception() is not None:
            errors.append(f"slot crashed: {t.exception()!r}")
    latencies = [lat for end, lat in finished if window[0] <= end <= window[1]]
    ms = sorted(s * 1000 for s in latencies)
    return {
        "kind": cell.kind,
        "steps": STEPS[cell.kind],
        "concurrency": cell.concurrency,
        "window_s": cell.seconds,
        "completed": len(ms),
        "completed_total": len(finished),
        "warmup_s": window[0] - started,
        "workflows_per_s": len(ms) / cell.seconds,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "errors": len(errors),
        "first_errors": errors[:5],
    }


async def run_matrix(name: str, run_one: RunOne, seconds: float, only: str | None = None) -> list[dict[str, Any]]:
    """Every cell of the matrix (or those whose kind is `only`), one after another, each line
    printed as it is measured."""
    rows = []
    for cell in matrix(seconds):
        if only and cell.kind != only:
            continue
        row = await measure(run_one, cell)
        print(
            f"  [{name}] {cell.kind:8} x{cell.concurrency:<3} {row['workflows_per_s']:8.1f} wf/s  "
            f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  errors {row['errors']}",
            flush=True,
        )
        rows.append(row)
    return rows


class SetupError(Exception):
    """The engine could not be brought up: the run stops before measuring anything."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def guarded(measure: Callable[[], list[dict[str, Any]]]) -> int:
    """A driver's exit status around `measure` (which cleans up after itself, writes the result and
    returns its rows): 2 when the engine could not be brought up, 130 when interrupted — SIGTERM
    counts as Ctrl-C, so the driver's own clean-up still runs —, 1 if a workflow failed, else 0."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        rows = measure()
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1 if any(r["errors"] for r in rows) else 0


def driver_args(description: str) -> argparse.ArgumentParser:
    """The arguments every driver takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="write the result (JSON) here")
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per cell (default 5)")
    parser.add_argument("--only", choices=sorted(STEPS), help="run only the cells of this kind")
    return parser


def write_result(path: str, engine: str, mode: str, version: str, rows: list[dict[str, Any]], **extra: Any) -> None:
    """The driver's result: what was measured, and on what."""

    def finite(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    result = {
        "engine": engine,
        "mode": mode,
        "version": version,
        "rows": [{k: finite(v) for k, v in r.items()} for r in rows],
        **extra,
    }
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
