"""The core benchmark: latency and throughput of a real server process and a real worker process.

    python -m bench.core [--seconds 10] [--json PATH] [--concurrency 50] [--batch 10]

Starts `python -m aiki_server` on a fresh SQLite file (a temp dir) and a free port, one worker
process (`python -m bench.workflows`, polling subscriber), then measures from this process:

1. idle latency: sequential runs of bench-1, from before `start()` until `wait_for_completion()`
   returns (after warm-up runs);
2. throughput of bench-1: `--concurrency` runs kept in flight for `--seconds` after a warm-up;
3. throughput of bench-10 (ten sequential tasks per run), the same way.

During each throughput window it reads the CPU time (utime + stime from /proc/<pid>/stat) of the
server, the worker and this driver, which shows where the time goes: all three share the machine.
It also reads the machine's total (/proc/stat), so CPU taken by other processes and idle CPU show:
numbers taken on a busy machine are not comparable with numbers taken on a quiet one.

Every run started is checked: it must complete with the expected output, and at the end the
server's own counts (GET /v1/workflows) must agree. Any failure is reported and the exit status is
non-zero. The server and the worker are stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiki_client import Client, connect
from aiki_client.workflow import WorkflowVersion

from .workflows import BENCH_1_TASKS, BENCH_10_TASKS, bench_1_v1, bench_10_v1, loop_name, run_loop

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

LATENCY_WARMUP_RUNS = 30
LATENCY_RUNS = 300
THROUGHPUT_WARMUP_S = 2.0
RUN_TIMEOUT_S = 30.0  # a single run taking longer than this counts as a failure
DRAIN_TIMEOUT_S = 45.0  # after a throughput window, in-flight runs must finish within this


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIKI_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # Fields after the command name (which may hold spaces, hence the last ')'): state is field 3,
    # utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, summed over all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, (idle + iowait) / CLK_TCK


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    snap = {name: cpu_seconds(pid) for name, pid in pids.items()}
    snap["machine_busy"], snap["machine_idle"] = machine_cpu_seconds()
    return snap


@dataclass
class Process:
    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, env=child_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the {self.name} process exited with {self.proc.returncode}\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait; returns the exit status (SIGKILL and -9 if it does not stop in time)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def problem_lines(self) -> list[str]:
        """Lines of the log at WARNING level or worse, and tracebacks (both run at WARNING)."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in text if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))]

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    [{self.name}] {line}" for line in text[-lines:])


def wait_ready(server: Process, url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the server at {url} was not ready after {timeout} s\n{server.log_tail()}")


def find_line(process: Process, prefix: str) -> str | None:
    for line in process.log_path.read_text(errors="replace").splitlines():
        if line.startswith(prefix):
            return line
    return None


def wait_for_line(process: Process, prefix: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = find_line(process, prefix)
        if line is not None:
            return line
        process.check_alive()
        time.sleep(0.05)
    raise TimeoutError(f"the {process.name} did not print {prefix!r} within {timeout} s\n{process.log_tail()}")


# -- measurements -----------------------------------------------------------------------------


@dataclass
class Ledger:
    """Every run the driver started, and how each ended."""

    started: dict[str, int] = field(default_factory=dict)  # workflow name -> runs started
    completed: dict[str, int] = field(default_factory=dict)  # ... -> completed with the right output
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        if len(self.failures) <= 10:
            print(f"  FAILURE: {what}", file=sys.stderr, flush=True)


async def one_run(client: Client, ledger: Ledger, version: WorkflowVersion, tasks: int, value: int) -> bool:
    """Start one run, wait for it, check its output. True if it completed correctly."""
    name = version.name
    try:
        handle = await version.start(client, value)
    except Exception as exc:
        ledger.fail(f"{name}: start failed: {type(exc).__name__}: {exc}")
        return False
    ledger.started[name] = ledger.started.get(name, 0) + 1
    try:
        output = await handle.wait_for_completion(timeout=RUN_TIMEOUT_S)
    except Exception as exc:  # RunFailed, RunCancelled, TimeoutError, transport errors
        ledger.fail(f"{name} run {handle.id}: {type(exc).__name__}: {exc}")
        return False
    if output != value + tasks:
        ledger.fail(f"{name} run {handle.id}: output {output!r}, expected {value + tasks}")
        return False
    ledger.completed[name] = ledger.completed.get(name, 0) + 1
    return True


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else math.nan,
        "mean_ms": sum(ms) / len(ms) if ms else math.nan,
    }


async def idle_latency(client: Client, ledger: Ledger) -> dict[str, Any]:
    value = 0
    for _ in range(LATENCY_WARMUP_RUNS):
        value += 1
        await one_run(client, ledger, bench_1_v1, BENCH_1_TASKS, value)
    totals: list[float] = []
    starts: list[float] = []
    ok = 0
    for _ in range(LATENCY_RUNS):
        value += 1
        t0 = time.perf_counter()
        handle = await bench_1_v1.start(client, value)
        t1 = time.perf_counter()
        ledger.started[bench_1_v1.name] = ledger.started.get(bench_1_v1.name, 0) + 1
        try:
            output = await handle.wait_for_completion(timeout=RUN_TIMEOUT_S)
        except Exception as exc:
            ledger.fail(f"bench-1 run {handle.id}: {type(exc).__name__}: {exc}")
            continue
        t2 = time.perf_counter()
        if output != value + 1:
            ledger.fail(f"bench-1 run {handle.id}: output {output!r}, expected {value + 1}")
            continue
        ledger.completed[bench_1_v1.name] = ledger.completed.get(bench_1_v1.name, 0) + 1
        ok += 1
        totals.append(t2 - t0)
        starts.append(t1 - t0)
    return {
        "workflow": "bench-1",
        "warmup_runs": LATENCY_WARMUP_RUNS,
        "runs": LATENCY_RUNS,
        "completed": ok,
        "total": latency_summary(totals),
        "start_call": latency_summary(starts),
    }


async def throughput(
    client: Client,
    ledger: Ledger,
    version: WorkflowVersion,
    tasks: int,
    *,
    seconds: float,
    concurrency: int,
    pids: dict[str, int],
    value_base: int,
) -> dict[str, Any]:
    """Keep `concurrency` runs in flight; count runs completed inside the measurement window."""
    loop_start = time.perf_counter()
    stop_at = loop_start + THROUGHPUT_WARMUP_S + seconds
    finished: list[tuple[float, float]] = []  # (completion time, latency) of correct runs
    failed_before = len(ledger.failures)

    async def slot(k: int) -> None:
        value = value_base + k * 10_000_000
        while time.perf_counter() < stop_at:
            value += 100
            t0 = time.perf_counter()
            if await one_run(client, ledger, version, tasks, value):
                t1 = time.perf_counter()
                finished.append((t1, t1 - t0))

    async def sample_cpu() -> tuple[tuple[float, dict[str, float]], tuple[float, dict[str, float]]]:
        await asyncio.sleep(THROUGHPUT_WARMUP_S)
        first = (time.perf_counter(), cpu_snapshot(pids))
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        second = (time.perf_counter(), cpu_snapshot(pids))
        return first, second

    sampler = asyncio.create_task(sample_cpu())
    slots = [asyncio.create_task(slot(k)) for k in range(concurrency)]
    (w0, cpu0), (w1, cpu1) = await sampler
    # Runs still in flight when the window closes must finish too (they are checked, not counted).
    done, pending = await asyncio.wait(slots, timeout=DRAIN_TIMEOUT_S)
    for t in pending:
        t.cancel()
        ledger.fail(f"{version.name}: a slot's run did not finish within {DRAIN_TIMEOUT_S} s of the window's end")
    for t in done:
        if t.exception() is not None:
            ledger.fail(f"{version.name}: slot crashed: {t.exception()!r}")
    drain_s = time.perf_counter() - w1

    window = w1 - w0
    in_window = [lat for t, lat in finished if w0 <= t <= w1]
    cpu = {name: cpu1[name] - cpu0[name] for name in cpu0}
    # Whatever else ran on the machine meanwhile (other processes compete for the same cores).
    cpu["other"] = max(0.0, cpu.pop("machine_busy") - sum(cpu[name] for name in pids))
    cpu["idle"] = cpu.pop("machine_idle")
    n = len(in_window)
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
        "cpu_cores": {name: seconds / window for name, seconds in cpu.items()},
        "cpu_ms_per_workflow": {name: (cpu[name] * 1000 / n if n else math.nan) for name in pids},
        "runs_completed_total": len(finished),
        "failures": len(ledger.failures) - failed_before,
        "drain_s": drain_s,
    }


def server_counts(url: str) -> dict[str, dict[str, int]]:
    """The server's own run counts by state, per workflow name."""
    with urllib.request.urlopen(f"{url}/v1/workflows", timeout=10) as resp:
        answer = json.loads(resp.read())
    return {wf["name"]: dict(wf["counts"]) for wf in answer["workflows"]}


async def drive(url: str, *, seconds: float, concurrency: int, pids: dict[str, int]) -> dict[str, Any]:
    ledger = Ledger()
    client = await connect(url)
    try:
        print(f"driver on {loop_name()}; idle latency: {LATENCY_WARMUP_RUNS} + {LATENCY_RUNS} runs ...", flush=True)
        latency = await idle_latency(client, ledger)
        results = []
        for i, (version, tasks) in enumerate(((bench_1_v1, BENCH_1_TASKS), (bench_10_v1, BENCH_10_TASKS))):
            print(
                f"throughput {version.name}: {concurrency} in flight, {THROUGHPUT_WARMUP_S:g} s warm-up + "
                f"{seconds:g} s ...",
                flush=True,
            )
            results.append(
                await throughput(
                    client,
                    ledger,
                    version,
                    tasks,
                    seconds=seconds,
                    concurrency=concurrency,
                    pids=pids,
                    value_base=(i + 1) * 1_000_000_000,
                )
            )
    finally:
        await client.close()
    counts = await asyncio.to_thread(server_counts, url)
    for name in (bench_1_v1.name, bench_10_v1.name):
        started = ledger.started.get(name, 0)
        completed = ledger.completed.get(name, 0)
        on_server = counts.get(name, {})
        if completed != started:
            ledger.fail(f"{name}: {started} runs started, {completed} completed correctly")
        if on_server != {"completed": started}:
            ledger.fail(
                f"{name}: the server counts {on_server}, the driver started {started} (all should be completed)"
            )
    return {
        "driver_loop": loop_name(),
        "idle_latency": latency,
        "throughput": results,
        "runs": {
            "started": ledger.started,
            "completed": ledger.completed,
            "server_counts": counts,
            "failures": ledger.failures,
        },
    }


# -- report -----------------------------------------------------------------------------------


def print_report(summary: dict[str, Any]) -> None:
    cfg = summary["config"]
    print()
    print(
        f"aiki benchmark — SQLite (one file), 1 server + 1 worker process "
        f"(polling, max_concurrent_workflow_runs={cfg['concurrency']}, max_batch_size={cfg['batch']}), "
        f"{cfg['cpus']} CPUs, Python {cfg['python']}, driver/worker loop: {summary['driver_loop']}/"
        f"{cfg['worker_loop']}"
    )
    lat = summary["idle_latency"]
    t, s = lat["total"], lat["start_call"]
    print()
    print(
        f"Idle latency, bench-1 ({lat['runs']} sequential runs after {lat['warmup_runs']} warm-up; "
        "start() → wait_for_completion() returns)"
    )
    print(f"  {'':<22}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'mean':>9}")
    for label, row in (("start → completed, ms", t), ("start() call alone, ms", s)):
        print(
            f"  {label:<22}{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['max_ms']:>9.2f}{row['mean_ms']:>9.2f}"
        )
    print()
    print(
        f"Throughput ({cfg['concurrency']} runs in flight, {cfg['seconds']:g} s window after "
        f"{THROUGHPUT_WARMUP_S:g} s warm-up)"
    )
    print(f"  {'workflow':<10}{'runs':>7}{'workflows/s':>13}{'steps/s':>10}{'latency p50':>13}{'p99':>11}")
    for r in summary["throughput"]:
        lu = r["latency_under_load"]
        print(
            f"  {r['workflow']:<10}{r['completed_in_window']:>7}{r['workflows_per_s']:>13.1f}"
            f"{r['task_steps_per_s']:>10.1f}{lu['p50_ms']:>10.1f} ms{lu['p99_ms']:>8.1f} ms"
        )
    print()
    columns = ("server", "worker", "driver", "other", "idle")
    print(f"CPU during each throughput window: CPU seconds (cores = CPU s / window s), {cfg['cpus']} cores in all")
    print(f"  {'workflow':<10}" + "".join(f"{name if name != 'other' else 'other procs':>15}" for name in columns))
    for r in summary["throughput"]:
        cpu, w = r["cpu_s"], r["window_s"]
        print(f"  {r['workflow']:<10}" + "".join(f"{f'{cpu[n]:.2f} ({cpu[n] / w:.2f})':>15}" for n in columns))
    print("CPU ms per completed workflow (and per task step)")
    print(f"  {'workflow':<10}" + "".join(f"{name:>15}" for name in columns[:3]))
    for r in summary["throughput"]:
        per, k = r["cpu_ms_per_workflow"], r["tasks_per_workflow"]
        print(f"  {r['workflow']:<10}" + "".join(f"{f'{per[n]:.2f} ({per[n] / k:.2f})':>15}" for n in columns[:3]))
    runs = summary["runs"]
    print()
    print(
        "Runs checked: "
        + ", ".join(
            f"{name} {runs['completed'].get(name, 0)}/{runs['started'].get(name, 0)} completed correctly "
            f"(server: {runs['server_counts'].get(name, {})})"
            for name in ("bench-1", "bench-10")
        )
    )
    print(
        f"Processes: worker exit {summary['exit_codes']['worker']}, server exit {summary['exit_codes']['server']}; "
        f"worker run executions {summary['worker_executions']}; warning/error log lines: "
        + ", ".join(f"{name} {len(lines)}" for name, lines in summary["log_problems"].items())
        + f"; total wall time {summary['wall_s']:.1f} s"
    )
    if summary["failures"]:
        print(f"FAILED: {len(summary['failures'])} problem(s); first: {summary['failures'][0]}")
    else:
        print("OK: every run completed with the expected output")


def _finite(value: Any) -> Any:
    """NaN (a statistic of nothing) as JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each throughput window (default 10)")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON to this path")
    parser.add_argument("--concurrency", type=int, default=50, help="runs in flight and worker slots (default 50)")
    parser.add_argument("--batch", type=int, default=10, help="the worker's polling max_batch_size (default 10)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="aiki-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db_url = f"sqlite:///{tmp / 'bench.db'}"
    server_args = [sys.executable, "-m", "aiki_server", "--host", "127.0.0.1", "--port", str(port)]
    server_args += ["--database-url", db_url, "--log-level", "WARNING"]
    server = Process("server", server_args, tmp / "server.log")
    worker_args = [sys.executable, "-m", "bench.workflows", "--url", url]
    worker_args += ["--concurrency", str(args.concurrency), "--batch", str(args.batch)]
    worker = Process("worker", worker_args, tmp / "worker.log")
    failures: list[str] = []
    summary: dict[str, Any] = {}
    keep_logs = False
    try:
        print(f"starting aiki-server on {url} (SQLite in {tmp}) and a worker ...", flush=True)
        server.start()
        wait_ready(server, url)
        worker.start()
        ready = wait_for_line(worker, "ready ")
        worker_loop = ready.rsplit("loop=", 1)[-1]
        result = run_loop(
            drive(
                url,
                seconds=args.seconds,
                concurrency=args.concurrency,
                pids={"server": server.pid, "worker": worker.pid, "driver": os.getpid()},
            )
        )
        failures.extend(result["runs"]["failures"])
        worker.check_alive()
        server.check_alive()
        exit_codes = {"worker": worker.stop(), "server": server.stop()}
        for name, code in exit_codes.items():
            if code != 0:
                failures.append(f"the {name} exited with {code} after SIGTERM")
        # The worker reports how many run executions it finished: one per run unless some run
        # was executed again (abandoned, fenced, re-claimed), which a clean benchmark never needs.
        stopped = find_line(worker, "stopped after ")
        executions = int(stopped.split()[2]) if stopped else -1
        runs_total = sum(result["runs"]["started"].values())
        if executions != runs_total:
            failures.append(f"the worker finished {executions} run executions for {runs_total} runs")
        log_problems = {p.name: p.problem_lines() for p in (server, worker)}
        for name, lines in log_problems.items():
            if lines:
                failures.append(f"the {name} logged {len(lines)} warning/error line(s), first: {lines[0]}")
        summary = {
            "config": {
                "seconds": args.seconds,
                "concurrency": args.concurrency,
                "batch": args.batch,
                "latency_runs": LATENCY_RUNS,
                "latency_warmup_runs": LATENCY_WARMUP_RUNS,
                "throughput_warmup_s": THROUGHPUT_WARMUP_S,
                "database": "sqlite",
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "worker_loop": worker_loop,
            },
            **result,
            "exit_codes": exit_codes,
            "worker_executions": executions,
            "log_problems": log_problems,
            "failures": failures,
            "wall_s": time.perf_counter() - began,
        }
        print_report(summary)
        if args.json:
            args.json.write_text(json.dumps(_finite(summary), indent=2, allow_nan=False) + "\n")
            print(f"JSON summary written to {args.json}")
    except Exception as exc:
        keep_logs = True
        failures.append(f"{type(exc).__name__}: {exc}")
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    except BaseException:
        keep_logs = True
        raise
    finally:
        worker.kill()
        server.kill()
        if failures or keep_logs:
            for process in (server, worker):
                tail = process.log_tail()
                if tail:
                    print(f"--- last lines of the {process.name} log ---\n{tail}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
