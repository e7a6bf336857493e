"""Run one load-test suite headless and check what it did.

    python -m load_tests.run throughput|recovery [--mode sqlite|postgres-redis] [--url URL] [--users N]
                                                 [--seconds S] [--workers W]

Without --url it starts `python -m aiki_server` on a free port (and stops it after): on a temp SQLite
file, or with `--mode postgres-redis` on a fresh PostgreSQL database (created, dropped after) and a
Redis database number of its own (flushed before and after), with the workers on Redis Streams. Locust runs as a subprocess (`locust -f load_tests/<suite>.py --headless ...`) for a bounded
time with bounded users; the locustfile starts the worker processes. Afterwards, from the server:
every run started must be `completed` with the expected output, and every recorded task call must
match the side effects the workers wrote outside aiki — a task recorded complete that ran more than
once fails the check, unless every earlier execution was in a worker process that was then SIGKILLed
(it died before its outcome was recorded: at-least-once, as documented). Writes
load_tests/results/<suite>-<time>.json and .csv (plus locust's own CSVs) and exits non-zero on any
failure.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

from bench.harness import DEFAULT_PG_ADMIN_URL, ROOT, Process, child_env, free_port, percentile, psql, wait_ready
from load_tests.workflows import EXPECTED_TASKS, expected_output

RESULTS = ROOT / "load_tests" / "results"
ALLOWED_HOSTS = {"127.0.0.1", "localhost"}
LOAD_REDIS_URL = "redis://127.0.0.1:6379/12"  # a database number of the load tests' own


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=40) as resp:
        return json.loads(resp.read())


def check_run(url: str, run: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    status = get_json(f"{url}/v1/runs/{run['run']}?wait_ms=20000")
    tasks = get_json(f"{url}/v1/runs/{run['run']}/tasks")["tasks"]
    return status, tasks


def ms_stats(values_s: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values_s)
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else math.nan,
    }


def analyse(url: str, work: Path, seconds: float) -> tuple[dict[str, Any], list[str]]:
    failures: list[str] = []
    records = read_jsonl(work / "runs.jsonl")
    starts = {r["run"]: r for r in records if r["kind"] == "start"}
    dones = {r["run"]: r for r in records if r["kind"] == "done"}
    kills = [k for k in read_jsonl(work / "kills.jsonl") if "pid" in k]
    killed_pids = {k["pid"] for k in kills}

    # Side effects, outside aiki: (run, task_id) -> [(t, pid)] in time order.
    effects: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for path in (work / "effects").glob("*.log"):
        for e in read_jsonl(path):
            effects[(e["run"], e["task_id"])].append((e["t"], e["pid"]))
    for execs in effects.values():
        execs.sort()

    # From the server: each run's final state and its recorded task calls.
    with ThreadPoolExecutor(8) as pool:
        checked = list(pool.map(lambda r: (r, *check_run(url, r)), starts.values()))
    completed = 0
    reexecuted_after_kill = 0
    server_task_calls = 0
    for run, status, tasks in checked:
        rid, wf = run["run"], run["wf"]
        if status["state"] != "completed":
            failures.append(f"run {rid} ({wf}) is {status['state']}: {status.get('error')}")
            continue
        if status["output"] != expected_output(wf, run["value"]):
            failures.append(
                f"run {rid} ({wf}): output {status['output']!r}, expected {expected_output(wf, run['value'])}"
            )
            continue
        completed += 1
        if len(tasks) != EXPECTED_TASKS[wf]:
            failures.append(f"run {rid} ({wf}): {len(tasks)} task calls recorded, expected {EXPECTED_TASKS[wf]}")
        seen: dict[str, int] = defaultdict(int)
        recorded: set[str] = set()
        for t in tasks:
            server_task_calls += 1
            task_id = f"{t['address']}#{seen[t['address']]}"
            seen[t["address"]] += 1
            recorded.add(task_id)
            execs = effects.get((rid, task_id), [])
            if t["state"] != "completed":
                failures.append(f"run {rid}: task {task_id} is {t['state']}")
            if not execs:
                failures.append(f"run {rid}: task {task_id} recorded {t['state']} but never ran")
            elif len(execs) > 1:
                earlier = {pid for _, pid in execs[:-1]}
                if earlier <= killed_pids:
                    reexecuted_after_kill += 1
                else:
                    failures.append(f"run {rid}: task {task_id} recorded complete ran {len(execs)} times {execs}")
        for r, task_id in effects:
            if r == rid and task_id not in recorded:
                failures.append(f"run {rid}: task {task_id} ran but the server has no such call")

    durations = [dones[r]["t"] - s["t"] for r, s in starts.items() if r in dones and dones[r]["state"] == "completed"]
    by_wf: dict[str, list[float]] = defaultdict(list)
    for r, s in starts.items():
        if r in dones and dones[r]["state"] == "completed":
            by_wf[s["wf"]].append(dones[r]["t"] - s["t"])
    t_first = min((s["t"] for s in starts.values()), default=0.0)
    window = [s for s in starts.values() if s["t"] - t_first <= seconds]
    done_in_window = [d for d in dones.values() if d["state"] == "completed" and d["t"] - t_first <= seconds]

    # Recovery: for each kill, the runs the killed worker had touched and that completed more than
    # 0.2 s after the kill (held by the dead worker, not merely finishing in flight); time from the
    # kill to the first of them (resumed progress) and to the last.
    recoveries = []
    for k in kills:
        stranded = {r for (r, _), execs in effects.items() if any(pid == k["pid"] for _, pid in execs)}
        resumed = sorted(
            (dones[r]["t"] - k["t"], r)
            for r in stranded
            if r in dones and dones[r]["state"] == "completed" and dones[r]["t"] > k["t"] + 0.2
        )
        after = [t for t, _ in resumed]
        recoveries.append(
            {
                "pid": k["pid"],
                "stranded_runs": len(after),
                "last_run": resumed[-1][1] if resumed else None,
                "first_resumed_s": after[0] if after else None,
                "all_resumed_s": after[-1] if after else None,
            }
        )
    firsts = [r["first_resumed_s"] for r in recoveries if r["first_resumed_s"] is not None]
    alls = [r["all_resumed_s"] for r in recoveries if r["all_resumed_s"] is not None]
    summary = {
        "runs_started": len(starts),
        "runs_completed_verified": completed,
        "runs_seen_done_by_users": len(dones),
        "user_errors": sum(1 for d in dones.values() if d["state"] != "completed"),
        "starts_per_s": len(window) / seconds,
        "completions_per_s": len(done_in_window) / seconds,
        "start_to_completion": ms_stats(durations),
        "start_to_completion_by_workflow": {wf: ms_stats(v) for wf, v in sorted(by_wf.items())},
        "server_task_calls": server_task_calls,
        "task_executions": sum(len(v) for v in effects.values()),
        "reexecuted_after_kill": reexecuted_after_kill,
        "kills": len(kills),
        "recovery": recoveries,
        "kill_to_first_resumed_s_max": max(firsts) if firsts else None,
        "kill_to_all_resumed_s_max": max(alls) if alls else None,
        "worker_exit_codes": [w["exit_codes"] for w in read_jsonl(work / "workers.jsonl")],
    }
    if not starts:
        failures.append("no run was started")
    return summary, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.run", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("suite", choices=("throughput", "recovery"))
    parser.add_argument("--url", help="an aiki server on 127.0.0.1 (default: start one, see --mode)")
    parser.add_argument(
        "--mode",
        choices=("sqlite", "postgres-redis"),
        default="sqlite",
        help="the server started without --url: SQLite, or PostgreSQL + Redis Streams (default sqlite)",
    )
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL, help="to CREATE/DROP a database of our own")
    parser.add_argument("--redis-url", default=LOAD_REDIS_URL, help="a Redis database number of our own")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--claim-timeout-ms",
        type=int,
        default=3000,
        help="the started server's AIKI_CLAIM_IDLE_TIMEOUT_MS: when a dead worker's claims expire (default 3000)",
    )
    parser.add_argument("--kill-every", type=float, default=5.0, help="recovery: seconds between SIGKILLs")
    args = parser.parse_args(argv)
    if args.url and urllib.parse.urlsplit(args.url).hostname not in ALLOWED_HOSTS:
        parser.error("only a server on 127.0.0.1 may be targeted")

    work = Path(tempfile.mkdtemp(prefix=f"aiki-load-{args.suite}-"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = RESULTS / f"{args.suite}-{stamp}"
    server: Process | None = None
    db_name: str | None = None
    failures: list[str] = []
    try:
        url = args.url
        env = child_env()
        if url is None:
            url = f"http://127.0.0.1:{free_port()}"
            server_env = {"AIKI_CLAIM_IDLE_TIMEOUT_MS": str(args.claim_timeout_ms)}
            if args.mode == "sqlite":
                server_env["AIKI_DATABASE_URL"] = f"sqlite:///{work / 'aiki.db'}"
            else:
                db_name = f"aiki_load_{uuid.uuid4().hex[:12]}"
                psql(args.pg_admin_url, f"CREATE DATABASE {db_name}")
                redis.Redis.from_url(args.redis_url).flushdb()
                server_env["AIKI_DATABASE_URL"] = f"{args.pg_admin_url.rsplit('/', 1)[0]}/{db_name}"
                server_env["AIKI_REDIS_URL"] = env["LT_REDIS_URL"] = args.redis_url
            server_args = [sys.executable, "-m", "aiki_server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
            server_args += ["--log-level", "WARNING"]
            server = Process("server", server_args, work / "server.log", env=server_env).start()
        wait_ready(server, url) if server else get_json(f"{url}/readyz")
        env.update(
            LT_WORKDIR=str(work),
            LT_WORKERS=str(args.workers),
            LT_SECONDS=str(args.seconds),
            LT_KILL_EVERY=str(args.kill_every),
        )
        cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "load_tests" / f"{args.suite}.py"), "--headless"]
        cmd += ["-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s", "--stop-timeout", "70"]
        cmd += ["--host", url, "--csv", str(prefix) + "-locust", "--only-summary", "--loglevel", "WARNING"]
        where = args.mode if args.url is None else "given"
        print(
            f"{args.suite}: {args.users} users, {args.seconds} s, {args.workers} workers, server {url} ({where})",
            flush=True,
        )
        locust = subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.seconds + 180)
        if locust.returncode != 0:
            failures.append(f"locust exited with {locust.returncode} (some request or run failed)")
        print("checking every run on the server ...", flush=True)
        summary, problems = analyse(url, work, args.seconds)
        failures.extend(problems)
        for codes in summary["worker_exit_codes"]:
            failures.extend(f"{name} exited {code} after SIGTERM" for name, code in codes.items() if code != 0)
        if server is not None:
            server.check_alive()
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        summary = {}
    finally:
        if server is not None:
            code = server.stop()
            if code != 0:
                failures.append(f"the server exited with {code}")
        if db_name is not None:
            psql(args.pg_admin_url, f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
            redis.Redis.from_url(args.redis_url).flushdb()
    summary = {
        "suite": args.suite,
        "mode": args.mode if args.url is None else "given",
        "users": args.users,
        "seconds": args.seconds,
        "workers": args.workers,
        **summary,
    }
    summary["failures"] = failures
    (prefix.with_suffix(".json")).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with open(prefix.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "value"])
        for key, value in summary.items():
            if not isinstance(value, dict | list):
                w.writerow([key, value])
        for key, value in summary.get("start_to_completion", {}).items():
            w.writerow([f"start_to_completion_{key}", value])
    print_summary(summary, prefix)
    if failures:
        for line in failures[:20]:
            print(f"  FAILURE: {line}", file=sys.stderr)
        print(f"scratch directory kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def print_summary(s: dict[str, Any], prefix: Path) -> None:
    print()
    if "runs_started" in s:
        lat = s["start_to_completion"]
        print(
            f"{s['suite']}: {s['runs_started']} runs started, {s['runs_completed_verified']} completed (server-verified), "
            f"{s['user_errors']} user-side errors"
        )
        print(
            f"  starts/s {s['starts_per_s']:.1f}, completions/s {s['completions_per_s']:.1f} (first {s['seconds']} s)"
        )
        print(f"  start→completion: p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms")
        for wf, st in s["start_to_completion_by_workflow"].items():
            print(
                f"    {wf:<9} n={st['n']:<6} p50 {st['p50_ms']:.0f} ms, p95 {st['p95_ms']:.0f} ms, p99 {st['p99_ms']:.0f} ms"
            )
        print(
            f"  task calls on the server {s['server_task_calls']}, real task executions {s['task_executions']} "
            f"(re-executed after a SIGKILL: {s['reexecuted_after_kill']})"
        )
        if s["kills"]:
            print(f"  {s['kills']} SIGKILLs; kill → first stranded run completed / all completed:")
            for r in s["recovery"]:
                print(
                    f"    pid {r['pid']}: {r['stranded_runs']} runs, first {r['first_resumed_s']} s, all {r['all_resumed_s']} s"
                )
    print(f"summary: {prefix}.json, {prefix}.csv")
    print("FAILED" if s["failures"] else "OK")


if __name__ == "__main__":
    sys.exit(main())
