"""A user-onboarding workflow: tasks, a flaky task with retries, concurrent tasks, idempotent start.

Run it against a server (`aiki-server` in another terminal):

    python examples/onboarding.py --url http://127.0.0.1:9090

It starts a worker in this process, starts one run and prints its result.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from typing import Any

from aiki_client import TaskContext, WorkflowRun, connect, retry, task, worker, workflow


@task("create-profile")
async def create_profile(inp: dict[str, Any]) -> dict[str, Any]:
    # Tasks are where side effects, clocks and randomness live; the workflow only sees results.
    return {"user_id": f"u-{uuid.uuid4().hex[:8]}", "email": inp["email"]}


@task("send-verification", retry=retry.exponential(max_attempts=5, base_delay_ms=50, max_delay_ms=400))
def send_verification(inp: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    # A plain function runs in a thread. This one fails now and then, like a real mail API.
    if ctx.attempt < 3 and random.random() < 0.7:
        raise ConnectionError(f"mail API timed out (attempt {ctx.attempt})")
    return {"sent_to": inp["email"], "attempt": ctx.attempt, "idempotency_key": ctx.task_id}


@task("provision")
async def provision(inp: dict[str, Any]) -> str:
    await asyncio.sleep(0.01)
    return f"{inp['what']} ready for {inp['user_id']}"


onboarding = workflow("user-onboarding")


@onboarding.v("1.0")
async def onboarding_v1(run: WorkflowRun, inp: dict[str, Any]) -> dict[str, Any]:
    profile = await create_profile.start(run, {"email": inp["email"]})
    verification = await send_verification.start(run, {"email": inp["email"]})
    # Calls issued together run concurrently and are recorded as a group.
    mailbox, storage = await asyncio.gather(
        provision.start(run, {"what": "mailbox", "user_id": profile["user_id"]}),
        provision.start(run, {"what": "storage", "user_id": profile["user_id"]}),
    )
    return {
        "success": True,
        "user_id": profile["user_id"],
        "verification_attempts": verification["attempt"],
        "provisioned": [mailbox, storage],
    }


async def run_once(url: str, email: str) -> dict[str, Any]:
    async with await connect(url) as aiki:
        handle = await worker(id="onboarding-worker", workflows=[onboarding_v1], max_concurrent_workflow_runs=10).spawn(
            aiki
        )
        try:
            # The same reference id always names the same run: a retried start never duplicates it.
            run = await onboarding_v1.start(aiki, {"email": email}, reference_id=f"signup:{email}")
            output: dict[str, Any] = await run.wait_for_completion(timeout=30)
            status = await run.get_status()
            print(f"run {run.id} is {status.state} after {status.attempts} attempt(s)")
            return output
        finally:
            await handle.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:9090")
    parser.add_argument("--email", default=f"ada-{uuid.uuid4().hex[:6]}@example.com")
    args = parser.parse_args()
    print(asyncio.run(run_once(args.url, args.email)))


if __name__ == "__main__":
    main()
