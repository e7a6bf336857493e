"""A user-onboarding workflow: tasks, a flaky task with retries, concurrent tasks, an event wait, a
durable sleep, a child workflow, idempotent start.

Run it against a server (`aiki-server` in another terminal):

    python examples/onboarding.py --url http://127.0.0.1:9090

It starts a worker in this process, starts one run and prints its result.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from datetime import timedelta
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


welcome = workflow("welcome")


@welcome.v("1")
async def welcome_v1(run: WorkflowRun, inp: dict[str, Any]) -> str:
    return await provision.start(run, {"what": "welcome pack", "user_id": inp["user_id"]})


onboarding = workflow("user-onboarding")


@onboarding.v("1.0")
async def onboarding_v1(run: WorkflowRun, inp: dict[str, Any]) -> dict[str, Any]:
    profile = await create_profile.start(run, {"email": inp["email"]})
    verification = await send_verification.start(run, {"email": inp["email"]})
    # The run waits in the server (no worker held) until the user clicks the link, or gives up.
    clicked = await run.wait_for_event("email_verified", timeout=timedelta(hours=12))
    if not clicked.received:
        return {"success": False, "reason": "email never verified"}
    await run.sleep("cool-off", milliseconds=200)  # days=1 in real life
    welcome_run = await welcome_v1.start_as_child(run, {"user_id": profile["user_id"]})
    # Calls issued together run concurrently and are recorded as a group.
    mailbox, storage = await asyncio.gather(
        provision.start(run, {"what": "mailbox", "user_id": profile["user_id"]}),
        provision.start(run, {"what": "storage", "user_id": profile["user_id"]}),
    )
    return {
        "success": True,
        "user_id": profile["user_id"],
        "verification_attempts": verification["attempt"],
        "verified_from": clicked.data["ip"],
        "provisioned": [mailbox, storage, await welcome_run.wait_for_completion()],
    }


async def run_once(url: str, email: str) -> dict[str, Any]:
    async with await connect(url) as aiki:
        handle = await worker(
            id="onboarding-worker", workflows=[onboarding_v1, welcome_v1], max_concurrent_workflow_runs=10
        ).spawn(aiki)
        try:
            # The same reference id always names the same run: a retried start never duplicates it.
            run = await onboarding_v1.start(aiki, {"email": email}, reference_id=f"signup:{email}")
            # The user clicks the verification link (the event is kept even if it comes early).
            await run.send_event("email_verified", {"ip": "203.0.113.7"}, reference_id=f"click:{email}")
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
