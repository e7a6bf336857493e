"""Temporal on the peer benchmark's workloads.

    python bench/peers/temporal_driver.py --temporal-bin PATH --out FILE [--seconds S] [--only KIND]

Three processes, as Temporal is deployed: the server (the CLI's dev server, one process with every
service in it, persisting to a SQLite file in a temporary directory so that its state survives a
crash like the other engines'), one worker process running the workflows and activities (this
script in its hidden `--worker ADDRESS` mode), and this process, the load generator, which starts
each workflow through the client and waits for its result. The server and the worker are stopped at
the end (SIGTERM, then SIGKILL), whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from typing import IO, Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import temporal_workflows as tw
from temporalio.client import Client
from temporalio.worker import Worker

HOST = "127.0.0.1"
SERVER_START_TIMEOUT_S = 60.0
FIRST_RUN_TIMEOUT_S = 60.0
# Slots of the worker. A slot is held only while one workflow task or one activity runs, not for a
# workflow's whole life; the SDK's default is 100 of each, and 200 leaves headroom above the matrix's
# 100 workflows in flight, so the worker's configuration is never what caps them. Everything else is
# the SDK's default: 5 pollers per kind of task, a sticky cache of 1000 workflows, the sandboxed
# workflow runner, and eager activity execution (the server hands a workflow's next activity back in
# the reply to the workflow task that scheduled it, skipping a dispatch through the task queue).
MAX_CONCURRENT_WORKFLOW_TASKS = 200
MAX_CONCURRENT_ACTIVITIES = 200
WORKER_SHUTDOWN_S = 5.0


def free_port() -> int:
    """A port the OS says is free now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when this process dies, even by SIGKILL, so no
    server or worker outlives a killed benchmark (Linux only; elsewhere the `finally` must do)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def stop(proc: subprocess.Popen[Any], name: str, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace_s`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        print(f"warning: {name} ignored SIGTERM for {grace_s} s, killing it", file=sys.stderr)
        proc.kill()
        proc.wait()
    if proc.returncode not in (0, -signal.SIGTERM):
        print(f"warning: {name} exited with {proc.returncode}", file=sys.stderr)


def temporal_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise common.SetupError(f"cannot run {binary} --version: {exc}") from exc
    return out.stdout.strip()


def start_server(binary: str, tmp_dir: str, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    """The dev server on a free port, persisting to a SQLite file; returns it and its address."""
    port = free_port()
    cmd = [
        binary,
        "server",
        "start-dev",
        "--headless",  # no Web UI, so no UI port either
        "--ip",
        HOST,
        "--port",
        str(port),
        # The HTTP API and /metrics ports default to random free ports: nothing to collide with.
        "--db-filename",
        os.path.join(tmp_dir, "temporal.db"),
        # A write-ahead log, as aiki's SQLite file has: the default rollback journal costs Temporal
        # several times its throughput here. Everything else is the dev server's default.
        "--sqlite-pragma",
        "journal_mode=wal",
    ]
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    except OSError as exc:
        raise common.SetupError(f"cannot start {binary}: {exc}") from exc
    return proc, f"{HOST}:{port}"


def wait_for_port(proc: subprocess.Popen[bytes], address: str, log_path: str) -> None:
    """Until the server accepts TCP connections on its gRPC port, or fails, or the timeout."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise common.SetupError(f"the Temporal server exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise common.SetupError(f"the Temporal server did not listen on {address} within {SERVER_START_TIMEOUT_S} s")


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no server log)"


async def connect(address: str) -> Client:
    """The port can be open before the frontend answers: retry until it does."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        try:
            return await Client.connect(address)
        except Exception as exc:
            if time.monotonic() > deadline:
                raise common.SetupError(f"cannot connect a client to {address}: {exc}") from exc
            await asyncio.sleep(0.2)


async def first_run(run: Coroutine[Any, Any, Any], kind: str, worker: subprocess.Popen[bytes]) -> Any:
    """The result of `run`, or a SetupError as soon as the worker process has exited (a workflow the
    sandbox rejects makes the worker fail at start-up) or after FIRST_RUN_TIMEOUT_S."""
    task = asyncio.ensure_future(run)
    deadline = time.monotonic() + FIRST_RUN_TIMEOUT_S
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        if task.done():
            break
        if worker.poll() is not None or time.monotonic() > deadline:
            task.cancel()
            state = "timed out" if worker.returncode is None else f"worker exited with {worker.returncode}"
            raise common.SetupError(f"the first {kind} workflow did not complete ({state})")
    try:
        return task.result()
    except Exception as exc:
        raise common.SetupError(f"the first {kind} workflow failed: {type(exc).__name__}: {exc}") from exc


async def bench(address: str, worker: subprocess.Popen[bytes], args: argparse.Namespace) -> list[dict[str, Any]]:
    client = await connect(address)

    async def run_one(kind: str, value: int) -> Any:
        """Start one workflow on the task queue under a new id and wait for its result."""
        return await client.execute_workflow(
            tw.WORKFLOWS[kind].run, value, id=f"{kind}-{value}-{uuid.uuid4().hex}", task_queue=tw.TASK_QUEUE
        )

    # One workflow of every kind before measuring: proves the worker polls and its sandbox accepts
    # the workflows, and tells a setup failure apart from the measurement's errors.
    for kind in common.STEPS:
        result = await first_run(run_one(kind, 0), kind, worker)
        if result != common.expected(kind, 0):
            raise common.SetupError(
                f"the first {kind} workflow returned {result!r}, expected {common.expected(kind, 0)}"
            )
    return await common.run_matrix("temporal", run_one, args.seconds, args.only)


async def serve(address: str) -> None:
    """The worker process: serves the task queue until SIGTERM or SIGINT."""
    client = await Client.connect(address)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with Worker(
        client,
        task_queue=tw.TASK_QUEUE,
        workflows=list(tw.WORKFLOWS.values()),
        activities=tw.ACTIVITIES,
        max_concurrent_workflow_tasks=MAX_CONCURRENT_WORKFLOW_TASKS,
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
    ):
        await stopping.wait()
        # The shutdown (on leaving this block) takes well under a second while the server is up. With
        # the server gone too (the driver was killed) it would wait out poll retries: exit regardless.
        loop.call_later(WORKER_SHUTDOWN_S, os._exit, 0)


def main() -> int:
    if "--worker" in sys.argv:
        # The hidden worker mode, the driver's own child: it needs none of the driver's arguments.
        worker_parser = argparse.ArgumentParser()
        worker_parser.add_argument("--worker", metavar="ADDRESS", required=True)
        asyncio.run(serve(worker_parser.parse_args().worker))
        return 0
    parser = common.driver_args("Temporal on the peer benchmark's workloads.")
    parser.add_argument("--temporal-bin", required=True, help="the Temporal CLI (its dev server is the server)")
    args = parser.parse_args()
    return common.guarded(lambda: measure(args))


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start the dev server and a worker, run the matrix, always stop both, write the result."""
    server: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    tmp_dir = tempfile.mkdtemp(prefix="temporal_bench_")
    log_path = os.path.join(tmp_dir, "server.log")
    try:
        binary = os.path.abspath(args.temporal_bin)
        version = temporal_version(binary)
        sdk = importlib.metadata.version("temporalio")
        with open(log_path, "wb") as log:
            server, address = start_server(binary, tmp_dir, log)
        print(f"{version}, temporalio {sdk}, dev server on {address}, state in {tmp_dir}", flush=True)
        wait_for_port(server, address, log_path)
        worker = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", address], preexec_fn=_die_with_parent
        )
        rows = asyncio.run(bench(address, worker, args))
    finally:
        # The worker first: stopped before the server, it does not log the server going away.
        if worker is not None:
            stop(worker, "the worker")
        if server is not None:
            stop(server, "the Temporal server")
        shutil.rmtree(tmp_dir, ignore_errors=True)

    deployment = (
        "three processes: the CLI's dev server (SQLite file), one worker "
        f"(max_concurrent_workflow_tasks={MAX_CONCURRENT_WORKFLOW_TASKS}, "
        f"max_concurrent_activities={MAX_CONCURRENT_ACTIVITIES}, other settings the SDK's defaults), "
        "this load generator (client.execute_workflow)"
    )
    common.write_result(
        args.out, "temporal", "dev server, SQLite file", f"temporalio {sdk}; {version}", rows, deployment=deployment
    )
    return rows


if __name__ == "__main__":
    sys.exit(main())
