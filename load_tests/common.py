"""What both locustfiles share: the users, the worker processes, and the run log.

The runner (`python -m load_tests.run`) passes its scratch directory in LT_WORKDIR. There the
locustfile writes `runs.jsonl` (one line per run started and per run seen finished), `kills.jsonl`
(the recovery suite's SIGKILLs), the worker logs, and the workers' side-effect files (`effects/`).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task

from bench.harness import Process

WORKDIR = Path(os.environ.get("LT_WORKDIR", "load_tests/results/scratch"))
WORKERS = int(os.environ.get("LT_WORKERS", "2"))
WORKER_CONCURRENCY = int(os.environ.get("LT_WORKER_CONCURRENCY", "50"))
REDIS_URL = os.environ.get("LT_REDIS_URL")  # set: the workers take runs from Redis Streams
RUN_DEADLINE_S = 60.0  # a run not finished this long after its start counts as an error
TERMINAL = {"completed", "failed", "cancelled"}

_log_lock = threading.Lock()


def log_line(name: str, record: dict[str, Any]) -> None:
    with _log_lock, open(WORKDIR / name, "a") as f:
        f.write(json.dumps(record) + "\n")


class WorkerPool:
    """`WORKERS` processes of `python -m load_tests.workflows`, each restartable under its slot."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slots: list[Process | None] = [None] * WORKERS
        self.starts = 0

    def start(self, slot: int) -> Process:
        self.starts += 1
        args = [sys.executable, "-m", "load_tests.workflows", "--url", self.url]
        args += ["--effects", str(WORKDIR / "effects"), "--id", f"lt-worker-{slot}"]
        args += ["--concurrency", str(WORKER_CONCURRENCY)]
        if REDIS_URL:
            args += ["--redis", REDIS_URL]
        proc = Process(f"worker-{slot}", args, WORKDIR / f"worker-{slot}.{self.starts}.log").start()
        proc.wait_for_line("ready ")
        self.slots[slot] = proc
        return proc

    def start_all(self) -> None:
        for slot in range(WORKERS):
            self.start(slot)

    def stop_all(self) -> dict[str, int]:
        return {f"worker-{slot}": proc.stop() for slot, proc in enumerate(self.slots) if proc is not None}


POOL: WorkerPool | None = None


@events.test_start.add_listener
def _start_workers(environment: Any, **_: Any) -> None:
    global POOL
    WORKDIR.mkdir(parents=True, exist_ok=True)
    POOL = WorkerPool(environment.host)
    POOL.start_all()


@events.quitting.add_listener
def _stop_workers(environment: Any, **_: Any) -> None:
    # After --stop-timeout every user has finished waiting for its last run: only now may the
    # workers go (graceful SIGTERM; exit codes written for the runner).
    if POOL is not None:
        log_line("workers.jsonl", {"exit_codes": POOL.stop_all()})


class WorkflowUser(FastHttpUser):
    """Starts a run over the HTTP API, sends its event if it waits for one, and long-polls it to
    the end. Each run's start→completion time is reported to locust as request type RUN."""

    wait_time = constant(0)
    network_timeout = 45.0
    connection_timeout = 5.0

    @task(5)
    def one_task(self) -> None:
        self.run_workflow("lt-1")

    @task(3)
    def ten_tasks(self) -> None:
        self.run_workflow("lt-10")

    @task(2)
    def sleep_and_event(self) -> None:
        self.run_workflow("lt-event")

    def run_workflow(self, wf: str) -> None:
        run_id = str(uuid.uuid4())
        value = random.randrange(1_000_000)
        body = {"id": run_id, "workflow": wf, "version": "1", "input": value}
        t0 = time.time()
        with self.client.post("/v1/runs", json=body, name=f"start {wf}", catch_response=True) as resp:
            if resp.status_code not in (200, 201):
                resp.failure(f"start: HTTP {resp.status_code}")
                return
        log_line("runs.jsonl", {"kind": "start", "run": run_id, "wf": wf, "value": value, "t": t0})
        if wf == "lt-event":
            with self.client.post(
                f"/v1/runs/{run_id}/events", json={"name": "go", "data": 100}, name="send event", catch_response=True
            ) as resp:
                if resp.status_code not in (200, 201):
                    resp.failure(f"event: HTTP {resp.status_code}")
        state, error = None, None
        while time.time() - t0 < RUN_DEADLINE_S:
            with self.client.get(f"/v1/runs/{run_id}?wait_ms=10000", name="wait for run", catch_response=True) as resp:
                if resp.status_code != 200:
                    resp.failure(f"wait: HTTP {resp.status_code}")
                    continue
                state = resp.json()["state"]
            if state in TERMINAL:
                break
        t1 = time.time()
        if state != "completed":
            error = RuntimeError(
                f"run ended {state}" if state in TERMINAL else f"run not finished after {t1 - t0:.0f} s"
            )
        log_line("runs.jsonl", {"kind": "done", "run": run_id, "wf": wf, "state": state, "t": t1})
        self.environment.events.request.fire(
            request_type="RUN", name=wf, response_time=(t1 - t0) * 1000, response_length=0, exception=error, context={}
        )
