"""The peer benchmark's workflows and activities for Temporal.

A module of their own because the worker re-imports workflow modules inside its sandbox: this one
imports nothing but the SDK, `time` (only the activities call it, outside the sandbox) and `common`,
which is passed through so the sandbox takes the worker's already-imported copy.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import common

TASK_QUEUE = "aiki-peer-bench"
# Far above anything the benchmark sees; an activity that overran it would be retried, not lost.
STEP_TIMEOUT = timedelta(seconds=30)


@activity.defn(name="inc")
async def inc(x: int) -> int:
    return x + 1


@activity.defn(name="clock")
async def clock() -> float:
    """The wall clock, recorded as the activity's result in the history."""
    return time.time()


@workflow.defn(name="one-step")
class OneStep:
    @workflow.run
    async def run(self, value: int) -> int:
        return await workflow.execute_activity(inc, value, start_to_close_timeout=STEP_TIMEOUT)


@workflow.defn(name="ten-steps")
class TenSteps:
    @workflow.run
    async def run(self, value: int) -> int:
        x = value
        for _ in range(common.STEPS["10-step"]):
            x = await workflow.execute_activity(inc, x, start_to_close_timeout=STEP_TIMEOUT)
        return x


@workflow.defn(name="sleep-one-second")
class SleepOneSecond:
    @workflow.run
    async def run(self, value: int) -> int:
        await workflow.execute_activity(clock, start_to_close_timeout=STEP_TIMEOUT)
        # A durable timer: the server keeps it and wakes the workflow, whichever worker is alive then.
        await workflow.sleep(common.SLEEP_S)
        await workflow.execute_activity(clock, start_to_close_timeout=STEP_TIMEOUT)
        return value


WORKFLOWS: dict[str, Any] = {"1-step": OneStep, "10-step": TenSteps, "sleep-1s": SleepOneSecond}
ACTIVITIES = [inc, clock]
