"""The aiki benchmark: real server and worker processes, driven and measured from this process.

    python -m bench.core [--mode sqlite|postgres-redis|all] [--core] [--timers] [--waiting]
                         [--seconds 10] [--concurrency 50] [--batch 10] [--json PATH]

`make bench` runs everything: both modes (see bench/harness.py for how each is deployed), each with
every section. `--core`, `--timers`, `--waiting` run only the sections named.

core     1. idle latency: sequential runs of bench-1, from before `start()` until
            `wait_for_completion()` returns (after warm-up runs);
         2. throughput of bench-1: `--concurrency` runs kept in flight for `--seconds` after a
            warm-up; 3. the same for bench-10 (ten sequential tasks per run).
timers   timer precision: 1,000 runs of bench-sleep started at once, each sleeping 1 s durably
         between two clock readings; lateness p50/p99/max and where it goes (bench/waits.py).
waiting  the cost of waiting: 10,000 runs of bench-wait sleeping ten minutes; the server's RSS
         before and once all sleep, the database's growth, and CPU per second of every process
         while they wait, next to the same reading with nothing waiting.

During each measured window it reads the CPU time (utime + stime from /proc/<pid>/stat) of the
server, the workers, this driver and — in postgres-redis mode — the PostgreSQL backends of the
benchmark's database and the Redis server, which shows where the time goes: all share the machine.
It also reads the machine's total (/proc/stat), so CPU taken by other processes and idle CPU show:
numbers taken on a busy machine are not comparable with numbers taken on a quiet one.

Every run started is checked: it must end as expected (completed with the right output, or
sleeping), the server's own counts (GET /v1/workflows) must agree, the workers must report exactly
one execution per claim the runs needed, the processes must stop cleanly on SIGTERM and log no
warning or error. Any failure is reported and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from aiki_client import Client, connect
from aiki_client.workflow import WorkflowVersion

from .harness import (
    DEFAULT_PG_ADMIN_URL,
    DEFAULT_REDIS_URL,
    MODES,
    Deployment,
    Ledger,
    cpu_between,
    cpu_snapshot,
    finite,
    latency_summary,
    psql,
    server_counts,
)
from .waits import cost_of_waiting, timer_precision
from .workflows import BENCH_1_TASKS, BENCH_10_TASKS, RequestCounter, bench_1_v1, bench_10_v1, loop_name, run_loop

LATENCY_WARMUP_RUNS = 30
LATENCY_RUNS = 300
THROUGHPUT_WARMUP_S = 2.0
RUN_TIMEOUT_S = 30.0  # a single run taking longer than this counts as a failure
DRAIN_TIMEOUT_S = 45.0  # after a throughput window, in-flight runs must finish within this

TIMER_RUNS = 1_000
TIMER_SLEEP_MS = 1_000
TIMER_PACED_RUNS = 20
TIMER_PACE_S = 0.05
WAIT_RUNS = 10_000
WAIT_SLEEP_MS = 10 * 60 * 1000
WAIT_IDLE_WINDOW_S = 5.0
WAIT_WINDOW_S = 10.0
START_CONCURRENCY = 50

SECTIONS = ("core", "timers", "waiting")


# -- core: latency and throughput -------------------------------------------------------------


async def one_run(client: Client, ledger: Ledger, version: WorkflowVersion, tasks: int, value: int) -> bool:
    """Start one run, wait for it, check its output. True if it completed correctly."""
    name = version.name
    try:
        handle = await version.start(client, value)
    except Exception as exc:
        ledger.fail(f"{name}: start failed: {type(exc).__name__}: {exc}")
        return False
    ledger.start(name)
    try:
        output = await handle.wait_for_completion(timeout=RUN_TIMEOUT_S)
    except Exception as exc:  # RunFailed, RunCancelled, TimeoutError, transport errors
        ledger.fail(f"{name} run {handle.id}: {type(exc).__name__}: {exc}")
        return False
    if output != value + tasks:
        ledger.fail(f"{name} run {handle.id}: output {output!r}, expected {value + tasks}")
        return False
    ledger.ok(name)
    return True


async def idle_latency(client: Client, ledger: Ledger, url: str) -> dict[str, Any]:
    value = 0
    for _ in range(LATENCY_WARMUP_RUNS):
        value += 1
        await one_run(client, ledger, bench_1_v1, BENCH_1_TASKS, value)
    totals: list[float] = []
    starts: list[float] = []
    timed: list[tuple[str, float, float]] = []  # (run id, wall clock at start(), at wait's return)
    for _ in range(LATENCY_RUNS):
        value += 1
        wall0 = time.time()
        t0 = time.perf_counter()
        try:
            handle = await bench_1_v1.start(client, value)
        except Exception as exc:
            ledger.fail(f"bench-1: start failed: {type(exc).__name__}: {exc}")
            continue
        t1 = time.perf_counter()
        ledger.start(bench_1_v1.name)
        try:
            output = await handle.wait_for_completion(timeout=RUN_TIMEOUT_S)
        except Exception as exc:
            ledger.fail(f"bench-1 run {handle.id}: {type(exc).__name__}: {exc}")
            continue
        t2 = time.perf_counter()
        if output != value + 1:
            ledger.fail(f"bench-1 run {handle.id}: output {output!r}, expected {value + 1}")
            continue
        ledger.ok(bench_1_v1.name)
        totals.append(t2 - t0)
        starts.append(t1 - t0)
        timed.append((handle.id, wall0, wall0 + (t2 - t0)))
    return {
        "workflow": "bench-1",
        "warmup_runs": LATENCY_WARMUP_RUNS,
        "runs": LATENCY_RUNS,
        "completed": len(totals),
        "total": latency_summary(totals),
        "start_call": latency_summary(starts),
        "parts": await latency_parts(url, ledger, timed),
    }


async def latency_parts(url: str, ledger: Ledger, timed: list[tuple[str, float, float]]) -> dict[str, Any]:
    """Split each idle run's latency at the server's history time stamps (taken when the
    transaction that records the state begins, in whole milliseconds): start() called → run
    created, created → claimed by a worker, claimed → completion being written, → wait returns."""
    parts: dict[str, list[float]] = {"to_created": [], "delivery": [], "execution": [], "to_caller": []}
    todo = iter(timed)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        async def reader() -> None:
            for run_id, wall0, wall2 in todo:
                history = (await http.get(f"/v1/runs/{run_id}/history")).json()["history"]
                at = {h["state"]: h["at_ms"] / 1000 for h in history}
                if [h["state"] for h in history] != ["queued", "running", "completed"]:
                    ledger.fail(f"bench-1 run {run_id}: history {history} is not queued → running → completed")
                    continue
                parts["to_created"].append(at["queued"] - wall0)
                parts["delivery"].append(at["running"] - at["queued"])
                parts["execution"].append(at["completed"] - at["running"])
                parts["to_caller"].append(wall2 - at["completed"])

        await asyncio.gather(*(reader() for _ in range(10)))
    return {k: latency_summary([max(v, 0.0) for v in vs]) for k, vs in parts.items()}


async def throughput(
    client: Client,
    ledger: Ledger,
    dep: Deployment,
    version: WorkflowVersion,
    tasks: int,
    *,
    seconds: float,
    concurrency: int,
    value_base: int,
    driver_http: RequestCounter,
) -> dict[str, Any]:
    """Keep `concurrency` runs in flight; count runs completed inside the measurement window."""
    loop_start = time.perf_counter()
    stop_at = loop_start + THROUGHPUT_WARMUP_S + seconds
    finished: list[tuple[float, float]] = []  # (completion time, latency) of correct runs
    failed_before = len(ledger.failures)
    groups = dep.cpu_groups()

    async def slot(k: int) -> None:
        value = value_base + k * 10_000_000
        while time.perf_counter() < stop_at:
            value += 100
            t0 = time.perf_counter()
            if await one_run(client, ledger, version, tasks, value):
                t1 = time.perf_counter()
                finished.append((t1, t1 - t0))

    def snapshot() -> tuple[Any, dict[str, dict[str, int]]]:
        # Counters first: the CPU snapshot's time stamp then marks the window's edge.
        counts = dep.counters()
        counts["driver_http"] = dict(driver_http.counts)
        return cpu_snapshot(groups), counts

    async def sample() -> tuple[Any, Any]:
        await asyncio.sleep(THROUGHPUT_WARMUP_S)
        first = await asyncio.to_thread(snapshot)
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        second = await asyncio.to_thread(snapshot)
        return first, second

    sampler = asyncio.create_task(sample())
    slots = [asyncio.create_task(slot(k)) for k in range(concurrency)]
    (snap0, counts0), (snap1, counts1) = await sampler
    # Runs still in flight when the window closes must finish too (they are checked, not counted).
    done, pending = await asyncio.wait(slots, timeout=DRAIN_TIMEOUT_S)
    for t in pending:
        t.cancel()
        ledger.fail(f"{version.name}: a slot's run did not finish within {DRAIN_TIMEOUT_S} s of the window's end")
    for t in done:
        if t.exception() is not None:
            ledger.fail(f"{version.name}: slot crashed: {t.exception()!r}")
    drain_s = time.perf_counter() - snap1.at

    w0, w1 = snap0.at, snap1.at
    window = w1 - w0
    in_window = [lat for t, lat in finished if w0 <= t <= w1]
    cpu = cpu_between(snap0, snap1)
    n = len(in_window)
    per_workflow = {
        group: {
            key: (value - counts0[group].get(key, 0)) / n
            for key, value in sorted(counts1[group].items())
            if n and value != counts0[group].get(key, 0)
        }
        for group in counts1
    }
    return {
        "workflow": version.name,
        "tasks_per_workflow": tasks,
        "concurrency": concurrency,
        "window_s": window,
        "completed_in_window": n,
        "workflows_per_s": n / window,
        "task_steps_per_s": n * tasks / window,
        "latency_under_load": latency_summary(in_window),
        "cpu_s": cpu,
        "cpu_cores": {name: s / window for name, s in cpu.items()},
        "cpu_ms_per_workflow": {name: (cpu[name] * 1000 / n if n else math.nan) for name in groups},
        "per_workflow": per_workflow,
        "runs_completed_total": len(finished),
        "failures": len(ledger.failures) - failed_before,
        "drain_s": drain_s,
    }


# -- one mode ---------------------------------------------------------------------------------------


EXPECTED_STATE = {"bench-1": "completed", "bench-10": "completed", "bench-sleep": "completed", "bench-wait": "sleeping"}


async def drive(dep: Deployment, ledger: Ledger, sections: list[str], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"driver_loop": loop_name()}
    client = await connect(dep.url)
    driver_http = RequestCounter()
    driver_http.install(client)
    tag = f"[{dep.mode}]"
    try:
        if "core" in sections:
            print(f"{tag} idle latency: {LATENCY_WARMUP_RUNS} + {LATENCY_RUNS} sequential runs ...", flush=True)
            out["idle_latency"] = await idle_latency(client, ledger, dep.url)
            out["throughput"] = []
            for i, (version, tasks) in enumerate(((bench_1_v1, BENCH_1_TASKS), (bench_10_v1, BENCH_10_TASKS))):
                print(
                    f"{tag} throughput {version.name}: {args.concurrency} in flight, {THROUGHPUT_WARMUP_S:g} s "
                    f"warm-up + {args.seconds:g} s ...",
                    flush=True,
                )
                out["throughput"].append(
                    await throughput(
                        client,
                        ledger,
                        dep,
                        version,
                        tasks,
                        seconds=args.seconds,
                        concurrency=args.concurrency,
                        value_base=(i + 1) * 1_000_000_000,
                        driver_http=driver_http,
                    )
                )
        if "timers" in sections:
            print(
                f"{tag} timer precision: {TIMER_PACED_RUNS} runs started {TIMER_PACE_S * 1000:g} ms apart, then "
                f"{args.timer_runs} at once, each sleeping {TIMER_SLEEP_MS} ms ...",
                flush=True,
            )
            out["timers_paced"] = await timer_precision(
                client,
                ledger,
                dep,
                runs=TIMER_PACED_RUNS,
                sleep_ms=TIMER_SLEEP_MS,
                start_concurrency=1,
                run_timeout_s=RUN_TIMEOUT_S,
                pace_s=TIMER_PACE_S,
            )
            out["timers"] = await timer_precision(
                client,
                ledger,
                dep,
                runs=args.timer_runs,
                sleep_ms=TIMER_SLEEP_MS,
                start_concurrency=START_CONCURRENCY,
                run_timeout_s=RUN_TIMEOUT_S * 2,
            )
        if "waiting" in sections:
            print(
                f"{tag} cost of waiting: {args.wait_runs} runs sleeping {WAIT_SLEEP_MS // 60_000} min; "
                f"{WAIT_IDLE_WINDOW_S:g} s idle window, then {WAIT_WINDOW_S:g} s while they wait ...",
                flush=True,
            )
            out["waiting"] = await cost_of_waiting(
                client,
                ledger,
                dep,
                runs=args.wait_runs,
                sleep_ms=WAIT_SLEEP_MS,
                start_concurrency=START_CONCURRENCY,
                idle_window_s=WAIT_IDLE_WINDOW_S,
                window_s=WAIT_WINDOW_S,
            )
    finally:
        await client.close()
    counts = await asyncio.to_thread(server_counts, dep.url)
    for name, started in ledger.started.items():
        expected = {EXPECTED_STATE[name]: started}
        if ledger.completed.get(name, 0) != started:
            ledger.fail(f"{name}: {started} runs started, {ledger.completed.get(name, 0)} ended as expected")
        if counts.get(name, {}) != expected:
            ledger.fail(f"{name}: the server counts {counts.get(name, {})}, expected {expected}")
    out["server_counts"] = counts
    return out


def run_mode(mode: str, sections: list[str], args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    dep = Deployment(
        mode,
        concurrency=args.concurrency,
        batch=args.batch,
        pg_admin_url=args.pg_url,
        redis_url=args.redis_url,
        server_env=dict(kv.split("=", 1) for kv in args.server_env),
    )
    ledger = Ledger()
    result: dict[str, Any] = {"mode": mode, "loadavg_before": loadavg()}
    ok = False
    try:
        dep.start()
        result["label"] = dep.label
        result["worker_loop"] = dep.worker_loop
        result["worker_slots"] = dep.worker_slots
        result.update(run_loop(drive(dep, ledger, sections, args)))
        dep.check_alive()
        codes, executions, problems = dep.stop()
        for p in problems:
            ledger.fail(p)
        if executions != ledger.executions:
            ledger.fail(
                f"the workers finished {executions} run executions; the runs started needed {ledger.executions}"
            )
        result["exit_codes"] = codes
        result["worker_executions"] = executions
        ok = not ledger.failures
    except Exception as exc:
        ledger.fail(f"{type(exc).__name__}: {exc}")
    except BaseException:
        dep.cleanup(show_logs=True)
        raise
    finally:
        result["runs"] = {
            "started": ledger.started,
            "as_expected": ledger.completed,
            "needed_executions": ledger.executions,
        }
        result["failures"] = ledger.failures
        result["wall_s"] = time.perf_counter() - began
        result["loadavg_after"] = loadavg()
    dep.cleanup(show_logs=not ok)
    return result


def loadavg() -> str:
    """The machine's 1/5/15-minute load averages (other people's work shows here too)."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# -- report -----------------------------------------------------------------------------------------


def _cell(cpu_s: float, window: float) -> str:
    return f"{cpu_s:.2f} ({cpu_s / window:.2f})"


def print_mode(r: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(
        f"=== {r['mode']}: {r.get('label', '(did not start)')}; driver/worker loop: "
        f"{r.get('driver_loop', '?')}/{r.get('worker_loop', '?')}"
    )
    if "idle_latency" in r:
        lat = r["idle_latency"]
        t, s = lat["total"], lat["start_call"]
        print()
        print(
            f"Idle latency, bench-1 ({lat['runs']} sequential runs after {lat['warmup_runs']} warm-up; "
            "start() → wait_for_completion() returns)"
        )
        print(f"  {'':<24}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'mean':>9}")
        parts = lat["parts"]
        for label, row in (
            ("start → completed, ms", t),
            ("start() call alone, ms", s),
            ("split at the server's history (whole ms):", None),
            ("  start() → created", parts["to_created"]),
            ("  created → claimed", parts["delivery"]),
            ("  claimed → completing", parts["execution"]),
            ("  completing → returned", parts["to_caller"]),
        ):
            if row is None:
                print(f"  {label}")
                continue
            print(
                f"  {label:<24}{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}"
                f"{row['max_ms']:>9.2f}{row['mean_ms']:>9.2f}"
            )
    if r.get("throughput"):
        print()
        print(
            f"Throughput ({args.concurrency} runs in flight, {args.seconds:g} s window after "
            f"{THROUGHPUT_WARMUP_S:g} s warm-up)"
        )
        print(f"  {'workflow':<10}{'runs':>7}{'workflows/s':>13}{'steps/s':>10}{'latency p50':>13}{'p99':>11}")
        for t in r["throughput"]:
            lu = t["latency_under_load"]
            print(
                f"  {t['workflow']:<10}{t['completed_in_window']:>7}{t['workflows_per_s']:>13.1f}"
                f"{t['task_steps_per_s']:>10.1f}{lu['p50_ms']:>10.1f} ms{lu['p99_ms']:>8.1f} ms"
            )
        columns = [c for c in r["throughput"][0]["cpu_s"] if c not in ("other", "idle")] + ["other", "idle"]
        own = [c for c in columns if c not in ("other", "idle")]
        print()
        print(f"CPU during each throughput window: CPU seconds (cores = CPU s / window s), {os.cpu_count()} cores")
        print(f"  {'workflow':<10}" + "".join(f"{c if c != 'other' else 'other procs':>15}" for c in columns))
        for t in r["throughput"]:
            print(f"  {t['workflow']:<10}" + "".join(f"{_cell(t['cpu_s'][c], t['window_s']):>15}" for c in columns))
        print("CPU ms per completed workflow (and per task step)")
        print(f"  {'workflow':<10}" + "".join(f"{c:>15}" for c in own))
        for t in r["throughput"]:
            per, k = t["cpu_ms_per_workflow"], t["tasks_per_workflow"]
            print(f"  {t['workflow']:<10}" + "".join(f"{f'{per[c]:.2f} ({per[c] / k:.2f})':>15}" for c in own))
        print("Per completed workflow, counted in the window (HTTP exchanges by route; PostgreSQL transactions")
        print("committed in our database, read-only ones included; Redis commands, the whole Redis server)")
        for t in r["throughput"]:
            for group, counts in t["per_workflow"].items():
                if counts:
                    cells = ", ".join(f"{key} {v:.2f}" for key, v in counts.items())
                    print(f"  {t['workflow']:<10}{group:<13}{cells}")
    for key in ("timers_paced", "timers"):
        if key not in r:
            continue
        tm = r[key]
        print()
        if tm["pace_s"] is not None:
            how = f"started one every {tm['pace_s'] * 1000:g} ms (a light load)"
        else:
            how = (
                f"started at once ({tm['start_concurrency']} start calls in flight: {tm['start_s']:.2f} s, "
                f"{tm['starts_per_s']:.0f}/s)"
            )
        print(
            f"Timer precision: {tm['runs']} runs of bench-sleep {how}, each sleeping {tm['sleep_ms']} ms; "
            f"deadlines spread over {tm['deadline_spread_s']:.2f} s; all done in {tm['total_s']:.1f} s"
        )
        print(f"  {'ms':<40}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'mean':>9}")
        rows = [("lateness (after − before − sleep)", tm["lateness"])]
        rows += [
            ("  deadline → queued (server timer)", tm["lateness_parts"]["timer"]),
            ("  queued → running (delivery + claim)", tm["lateness_parts"]["delivery"]),
            ("  running → 2nd clock (replay, task)", tm["lateness_parts"]["resume"]),
        ]
        for label, row in rows:
            print(
                f"  {label:<40}{row['p50_ms']:>9.1f}{row['p90_ms']:>9.1f}{row['p99_ms']:>9.1f}"
                f"{row['max_ms']:>9.1f}{row['mean_ms']:>9.1f}"
            )
    if "waiting" in r:
        w = r["waiting"]
        rss = w["rss_kb"]
        print()
        print(
            f"Cost of waiting: {w['runs']} runs of bench-wait sleeping {w['sleep_ms'] // 60_000} min; started in "
            f"{w['start_s']:.1f} s, all asleep after {w['asleep_s']:.1f} s ({w['runs_put_to_sleep_per_s']:.0f} runs/s); "
            f"server counts {w['server_counts']}"
        )
        growth_kb = rss["all_asleep"]["VmRSS"] - rss["before"]["VmRSS"]
        print(
            f"  server RSS: {rss['before']['VmRSS'] / 1024:.1f} MiB before, {rss['all_asleep']['VmRSS'] / 1024:.1f} MiB "
            f"once all asleep ({growth_kb / 1024:+.1f} MiB, {growth_kb * 1024 / w['runs']:+.0f} B per run), "
            f"{rss['after_window']['VmRSS'] / 1024:.1f} MiB after the window (peak {rss['after_window']['VmHWM'] / 1024:.1f} MiB)"
        )
        db = w["db_bytes"]
        print(
            f"  database: {db['before'] / 2**20:.1f} MiB before, {db['all_asleep'] / 2**20:.1f} MiB once all asleep "
            f"({(db['all_asleep'] - db['before']) / w['runs']:+.0f} B per sleeping run)"
        )
        columns = [c for c in w["waiting"]["cpu_s"] if c not in ("other", "idle")] + ["other", "idle"]
        print("  CPU, ms per second of wall time (1000 = one core busy)")
        print(f"  {'':<34}" + "".join(f"{c if c != 'other' else 'other procs':>12}" for c in columns))
        for label, win in (
            (f"idle, nothing waiting ({w['idle']['window_s']:.0f} s)", w["idle"]),
            (f"{w['runs']} runs asleep ({w['waiting']['window_s']:.0f} s)", w["waiting"]),
        ):
            print(f"  {label:<34}" + "".join(f"{win['cpu_ms_per_s'][c]:>12.1f}" for c in columns))
    print()
    runs = r.get("runs", {})
    print(
        "Runs checked: "
        + ", ".join(f"{n} {runs['as_expected'].get(n, 0)}/{s} as expected" for n, s in runs.get("started", {}).items())
        + f"; server counts: {r.get('server_counts', '?')}"
    )
    print(
        f"Processes: exit codes {r.get('exit_codes', '?')}; worker run executions {r.get('worker_executions', '?')} "
        f"(needed {runs.get('needed_executions', '?')}); mode wall time {r['wall_s']:.1f} s; "
        f"load average {r['loadavg_before']} before, {r['loadavg_after']} after"
    )
    if r["failures"]:
        print(f"FAILED: {len(r['failures'])} problem(s); first: {r['failures'][0]}")
    else:
        print("OK: every run ended as expected")


def print_summary(results: list[dict[str, Any]]) -> None:
    print()
    print("=== summary")
    print(
        f"  {'mode':<16}{'idle p50':>10}{'idle p99':>10}{'1-task wf/s':>13}{'10-task wf/s':>14}{'steps/s':>9}"
        f"{'timer p50':>11}{'timer p99':>11}{'RSS Δ/10k':>11}{'srv CPU idle→asleep':>21}"
    )
    for r in results:
        lat = r.get("idle_latency", {}).get("total", {})
        tp = {t["workflow"]: t for t in r.get("throughput", [])}
        tm = r.get("timers", {}).get("lateness", {})
        w = r.get("waiting")

        def f(value: Any, fmt: str) -> str:
            return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

        rss = "-"
        cpu = "-"
        if w:
            rss = f"{(w['rss_kb']['all_asleep']['VmRSS'] - w['rss_kb']['before']['VmRSS']) / 1024:+.1f} MiB"
            cpu = f"{w['idle']['cpu_ms_per_s']['server']:.1f}→{w['waiting']['cpu_ms_per_s']['server']:.1f} ms/s"
        steps = max((t["task_steps_per_s"] for t in tp.values()), default=None)
        print(
            f"  {r['mode']:<16}{f(lat.get('p50_ms'), '.2f'):>10}{f(lat.get('p99_ms'), '.2f'):>10}"
            f"{f(tp.get('bench-1', {}).get('workflows_per_s'), '.1f'):>13}"
            f"{f(tp.get('bench-10', {}).get('workflows_per_s'), '.1f'):>14}{f(steps, '.0f'):>9}"
            f"{f(tm.get('p50_ms'), '.1f'):>11}{f(tm.get('p99_ms'), '.1f'):>11}{rss:>11}{cpu:>21}"
        )


# -- main -------------------------------------------------------------------------------------------


def versions(modes: list[str], args: argparse.Namespace) -> dict[str, str]:
    out = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "cpus": str(os.cpu_count())}
    if "postgres-redis" in modes:
        try:
            out["postgresql"] = psql(args.pg_url, "SHOW server_version")
        except (RuntimeError, FileNotFoundError) as exc:
            out["postgresql"] = f"unreachable: {exc}"
        try:
            import redis

            with redis.Redis.from_url(args.redis_url, socket_timeout=5) as r:
                out["redis"] = str(r.info("server")["redis_version"])
        except Exception as exc:
            out["redis"] = f"unreachable: {exc}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mode", choices=[*MODES, "all"], default="all", help="which deployment(s) (default all)")
    parser.add_argument("--core", action="store_true", help="run the core section (latency, throughput)")
    parser.add_argument("--timers", action="store_true", help="run the timer-precision section")
    parser.add_argument("--waiting", action="store_true", help="run the cost-of-waiting section")
    parser.add_argument("--seconds", type=float, default=10.0, help="each throughput window (default 10)")
    parser.add_argument("--concurrency", type=int, default=50, help="runs in flight and worker slots (default 50)")
    parser.add_argument("--batch", type=int, default=10, help="the polling worker's max_batch_size (default 10)")
    parser.add_argument("--timer-runs", type=int, default=TIMER_RUNS, help=f"(default {TIMER_RUNS})")
    parser.add_argument("--wait-runs", type=int, default=WAIT_RUNS, help=f"(default {WAIT_RUNS})")
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL, help="PostgreSQL admin URL (CREATE/DROP DATABASE)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis URL with a database number of our own")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="AIKI_X=VALUE",
        help="another setting for the server process (repeatable), e.g. AIKI_DB_POOL_MAX_SIZE=40",
    )
    parser.add_argument("--json", type=Path, help="also write the summary as JSON to this path")
    args = parser.parse_args(argv)
    for kv in args.server_env:
        if not kv.startswith("AIKI_") or "=" not in kv:
            parser.error(f"--server-env takes AIKI_NAME=VALUE, got {kv!r}")
    sections = [s for s in SECTIONS if getattr(args, s)] or list(SECTIONS)
    modes = list(MODES) if args.mode == "all" else [args.mode]
    began = time.perf_counter()
    env = versions(modes, args)
    print(
        f"aiki benchmark: modes {', '.join(modes)}; sections {', '.join(sections)}; "
        + ", ".join(f"{k} {v}" for k, v in env.items()),
        flush=True,
    )
    results = []
    for mode in modes:
        r = run_mode(mode, sections, args)
        results.append(r)
        print_mode(r, args)
    wall = time.perf_counter() - began
    if len(results) > 1:
        print_summary(results)
    failures = [f"{r['mode']}: {f}" for r in results for f in r["failures"]]
    print()
    print(f"total wall time {wall:.1f} s")
    if failures:
        print(f"FAILED: {len(failures)} problem(s); first: {failures[0]}")
    else:
        print("OK: every section of every mode checked out")
    if args.json:
        summary = {
            "versions": env,
            "sections": sections,
            "args": vars(args) | {"json": str(args.json)},
            "results": results,
            "wall_s": wall,
            "failures": failures,
        }
        args.json.write_text(json.dumps(finite(summary), indent=2, allow_nan=False, default=str) + "\n")
        print(f"JSON summary written to {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
