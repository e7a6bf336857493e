"""Crash recovery, live: a worker process is killed with SIGKILL in the middle of a workflow, another
worker picks the run up, and only the step that was in flight runs again.

    python examples/crash_recovery.py        # starts its own server on a temp SQLite file
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiki_client import TaskContext, WorkflowRun, connect, task, worker, workflow

LOG = Path(os.environ.get("CRASH_DEMO_LOG", "crash-demo.log"))


@task("charge-step")
async def charge_step(inp: dict[str, Any], ctx: TaskContext) -> str:
    with LOG.open("a") as log:
        log.write(f"step {inp['i']} executed by pid {os.getpid()}\n")
    await asyncio.sleep(inp["seconds"])
    return f"step {inp['i']} done"


pipeline = workflow("five-steps")


@pipeline.v("1")
async def five_steps(run: WorkflowRun, inp: dict[str, Any]) -> list[str]:
    return [await charge_step.start(run, {"i": i, "seconds": inp["seconds"]}) for i in range(5)]


async def serve_worker(url: str) -> None:
    async with await connect(url) as aiki:
        handle = await worker(id="crash-demo", workflows=[five_steps], heartbeat_interval_ms=500).spawn(aiki)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await handle.stop()


def spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], env=env)


async def demo() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="aiki-crash-demo-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CRASH_DEMO_LOG": str(tmp / "steps.log"), "AIKI_CLAIM_IDLE_TIMEOUT_MS": "2000"}
    server = spawn("-m", "aiki_server", "--port", str(port), "--database-url", f"sqlite:///{tmp}/aiki.db", env=env)
    first = spawn(__file__, "worker", "--url", url, env=env)
    try:
        async with await connect(url) as aiki:
            run = await five_steps.start(aiki, {"seconds": 0.5})
            print(f"started run {run.id}; worker pid {first.pid} is working on it")
            await asyncio.sleep(1.7)  # a little into step 3
            first.send_signal(signal.SIGKILL)
            first.wait()
            print(f"killed worker {first.pid} with SIGKILL (state: {(await run.get_status()).state})")
            second = spawn(__file__, "worker", "--url", url, env=env)
            print(f"started worker {second.pid}; the server releases the dead worker's claim after 2 s")
            started = time.monotonic()
            output = await run.wait_for_completion(timeout=30)
            print(f"run completed {time.monotonic() - started:.1f} s later: {output}")
            second.send_signal(signal.SIGTERM)
            second.wait(10)
        print("executions (only the step in flight at the kill ran twice):")
        print((tmp / "steps.log").read_text(), end="")
    finally:
        for proc in (first, server):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="demo", choices=["demo", "worker"])
    parser.add_argument("--url")
    args = parser.parse_args()
    asyncio.run(serve_worker(args.url) if args.mode == "worker" else demo())


if __name__ == "__main__":
    main()
