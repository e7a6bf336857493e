"""The replay engine, without a server.

`FakeRun` plays the server's part: it keeps a run's recorded task calls (`TaskRecord`s) and applies
each checkpoint to them the way the store does (an outcome without `id` is a new call, one with `id`
updates that record). Running the same workflow function again on the same `FakeRun` is a worker
claiming the run again; dropping the last records is a worker that died before writing them.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import re
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from aiki_client import NonDeterminismError, TaskContext, TaskFailed, retry, task
from aiki_client._replay import INLINE_RETRY_MAX_MS, Fenced, RunExecution, TaskRecord, now_ms
from aiki_client.task import Task
from aiki_client.wire import RunState, TaskState, task_address

WorkflowFn = Callable[..., Coroutine[Any, Any, Any]]
Checkpoint = tuple[list[dict[str, Any]], dict[str, Any] | None]

RUN_ID = "run-1"
LONG_DELAY_MS = 60_000  # far above INLINE_RETRY_MAX_MS: the retry must be durable


class FakeRun:
    """One run's recorded history, as the server keeps it, and the checkpoints of each execution."""

    def __init__(self) -> None:
        self.records: list[TaskRecord] = []
        self.executions: list[list[Checkpoint]] = []

    @property
    def checkpoints(self) -> list[Checkpoint]:
        """The checkpoints written by the latest execution."""
        return self.executions[-1]

    @property
    def outcomes(self) -> list[dict[str, Any]]:
        """Every task outcome written by the latest execution, in order."""
        return [o for outcomes, _ in self.checkpoints for o in outcomes]

    def persist(self, outcomes: list[dict[str, Any]]) -> None:
        for o in outcomes:
            fields = {
                "address": o["address"],
                "name": o["name"],
                "state": TaskState(o["state"]),
                "attempts": o["attempts"],
                "output": o.get("output"),
                "error": o.get("error"),
                "retry_at_ms": o.get("retry_at_ms"),
            }
            if "id" in o:
                [i] = [i for i, r in enumerate(self.records) if r.id == o["id"]]
                assert self.records[i].address == o["address"]
                self.records[i] = TaskRecord(id=o["id"], **fields)
            else:
                next_id = max((r.id for r in self.records), default=0) + 1
                self.records.append(TaskRecord(id=next_id, **fields))

    def crash_after(self, n: int) -> None:
        """The worker died after only the first `n` outcomes became durable."""
        self.records = sorted(self.records, key=lambda r: r.id)[:n]

    def execution(self, *, attempt: int = 1, workflow_retry: retry.RetryPolicy | None = None) -> RunExecution:
        written: list[Checkpoint] = []
        self.executions.append(written)

        async def checkpoint(outcomes: list[dict[str, Any]], then: dict[str, Any] | None, **extra: Any) -> None:
            # `extra` (new waits, child runs) never occurs here: these runs only call tasks.
            assert extra == {}
            written.append((copy.deepcopy(outcomes), copy.deepcopy(then)))
            self.persist(outcomes)

        return RunExecution(
            run_id=RUN_ID,
            workflow="wf",
            version="1",
            attempt=attempt,
            tasks=[dataclasses.replace(r) for r in self.records],
            checkpoint=checkpoint,
            retry=workflow_retry,
        )

    async def execute(
        self, fn: WorkflowFn, inp: Any = None, *, attempt: int = 1, workflow_retry: retry.RetryPolicy | None = None
    ) -> dict[str, Any]:
        then = await self.execution(attempt=attempt, workflow_retry=workflow_retry).execute(fn, inp)
        # What execute returns is what it sent, and it sent it last.
        assert self.checkpoints[-1][1] == then
        assert all(t is None for _, t in self.checkpoints[:-1])
        return then


class Ledger:
    """Counts real executions of task bodies."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.contexts: list[TaskContext] = []

    def count(self, name: str | None = None) -> int:
        return sum(1 for n, _ in self.calls if name is None or n == name)

    def echo(self, name: str, **kwargs: Any) -> Task[Any, Any]:
        """A task that returns {"task": name, "input": input, "n": its execution number}."""

        @task(name, **kwargs)
        async def body(inp: Any, ctx: TaskContext) -> Any:
            self.calls.append((name, inp))
            self.contexts.append(ctx)
            return {"task": name, "input": inp, "n": self.count(name)}

        return body

    def flaky(self, name: str, fail_times: int, **kwargs: Any) -> Task[Any, Any]:
        """A task whose first `fail_times` executions raise RuntimeError."""

        @task(name, **kwargs)
        async def body(inp: Any, ctx: TaskContext) -> Any:
            self.calls.append((name, inp))
            self.contexts.append(ctx)
            if self.count(name) <= fail_times:
                raise RuntimeError(f"boom {self.count(name)}")
            return {"ok": self.count(name)}

        return body


@pytest.fixture
def run() -> FakeRun:
    return FakeRun()


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def completed(output: Any) -> dict[str, Any]:
    return {"state": "completed", "output": output}


async def v1_output(run: FakeRun, fn: WorkflowFn) -> Any:
    then = await run.execute(fn)
    assert then["state"] == "completed"
    return then["output"]


# -- a fresh run -----------------------------------------------------------------------------------


async def test_fresh_run_records_completed_outcomes_and_final_state(run: FakeRun, ledger: Ledger) -> None:
    a, b = ledger.echo("a"), ledger.echo("b")

    async def wf(r: Any, inp: dict[str, Any]) -> Any:
        x = await a.start(r, {"v": inp["v"]})
        y = await b.start(r, {"v": x["input"]["v"] + 1})
        return {"x": x, "y": y}

    then = await run.execute(wf, {"v": 1})

    assert then == completed(
        {"x": {"task": "a", "input": {"v": 1}, "n": 1}, "y": {"task": "b", "input": {"v": 2}, "n": 1}}
    )
    assert "unconsumed" not in then
    assert ledger.calls == [("a", {"v": 1}), ("b", {"v": 2})]
    assert run.outcomes == [
        {
            "address": task_address("a", {"v": 1}),
            "name": "a",
            "state": "completed",
            "attempts": 1,
            "output": {"task": "a", "input": {"v": 1}, "n": 1},
        },
        {
            "address": task_address("b", {"v": 2}),
            "name": "b",
            "state": "completed",
            "attempts": 1,
            "output": {"task": "b", "input": {"v": 2}, "n": 1},
        },
    ]


async def test_last_outcome_travels_with_the_final_state_in_one_request(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def wf(r: Any, inp: Any) -> Any:
        return await a.start(r, inp)

    then = await run.execute(wf, 7)

    assert len(run.checkpoints) == 1
    [(outcomes, sent)] = run.checkpoints
    assert [o["name"] for o in outcomes] == ["a"]
    assert sent == then == completed({"task": "a", "input": 7, "n": 1})


async def test_outcome_is_durable_before_the_next_task_runs(run: FakeRun) -> None:
    seen_by_b: list[list[str]] = []

    @task("a")
    async def a(inp: Any) -> Any:
        return "A"

    @task("b")
    async def b(inp: Any) -> Any:
        seen_by_b.append([r.name for r in run.records])
        return "B"

    async def wf(r: Any, inp: Any) -> Any:
        return [await a.start(r, 1), await b.start(r, 2)]

    then = await run.execute(wf)

    assert then == completed(["A", "B"])
    assert seen_by_b == [["a"]]
    # a's outcome went on its own; b's went with the final state.
    assert [[o["name"] for o in outs] for outs, _ in run.checkpoints] == [["a"], ["b"]]


async def test_a_run_without_tasks_writes_one_checkpoint(run: FakeRun) -> None:
    async def wf(r: Any, inp: Any) -> Any:
        return {"got": inp, "run": r.id, "attempt": r.attempt}

    then = await run.execute(wf, [1, 2])

    assert run.checkpoints == [([], completed({"got": [1, 2], "run": RUN_ID, "attempt": 1}))]
    assert then["state"] == RunState.COMPLETED


async def test_plain_def_task_runs_in_a_thread(run: FakeRun) -> None:
    import threading

    main = threading.get_ident()

    @task("sync")
    def sync_task(inp: int, ctx: TaskContext) -> dict[str, Any]:
        return {"double": inp * 2, "in_thread": threading.get_ident() != main, "attempt": ctx.attempt}

    async def wf(r: Any, inp: int) -> Any:
        return await sync_task.start(r, inp)

    assert await run.execute(wf, 21) == completed({"double": 42, "in_thread": True, "attempt": 1})


# -- replay ----------------------------------------------------------------------------------------


async def test_replay_of_a_recorded_run_executes_nothing(run: FakeRun, ledger: Ledger) -> None:
    a, b = ledger.echo("a"), ledger.echo("b")

    async def wf(r: Any, inp: Any) -> Any:
        xs = [await a.start(r, i) for i in range(3)]
        return {"xs": xs, "b": await b.start(r, inp)}

    first = await run.execute(wf, "in")
    assert ledger.count() == 4
    records = list(run.records)

    second = await run.execute(wf, "in")

    assert second == first
    assert ledger.count() == 4  # no task body ran again
    assert run.outcomes == []  # nothing new recorded
    assert run.records == records


async def test_reordered_calls_replay_from_their_records(run: FakeRun, ledger: Ledger) -> None:
    a, b, c = ledger.echo("a"), ledger.echo("b"), ledger.echo("c")

    async def v1(r: Any, inp: Any) -> Any:
        return [await a.start(r, 1), await b.start(r, 2), await c.start(r, 3)]

    async def v2(r: Any, inp: Any) -> Any:
        return [await c.start(r, 3), await a.start(r, 1), await b.start(r, 2)]

    first = await v1_output(run, v1)
    then = await run.execute(v2)

    assert ledger.count() == 3
    assert then == completed([first[2], first[0], first[1]])
    assert run.outcomes == []


async def test_removed_calls_are_reported_unconsumed(run: FakeRun, ledger: Ledger) -> None:
    a, b, c = ledger.echo("a"), ledger.echo("b"), ledger.echo("c")

    async def v1(r: Any, inp: Any) -> Any:
        return [await a.start(r, 1), await b.start(r, 2), await c.start(r, 3), await b.start(r, 4)]

    async def v2(r: Any, inp: Any) -> Any:
        return [await a.start(r, 1), await c.start(r, 3)]

    first = await v1_output(run, v1)
    then = await run.execute(v2)

    assert ledger.count() == 4
    assert then["state"] == "completed"
    assert then["output"] == [first[0], first[2]]
    assert sorted(then["unconsumed"]) == sorted([task_address("b", 2), task_address("b", 4)])


async def test_appended_calls_run_after_replayed_ones(run: FakeRun, ledger: Ledger) -> None:
    a, b = ledger.echo("a"), ledger.echo("b")

    async def v1(r: Any, inp: Any) -> Any:
        return [await a.start(r, 1)]

    async def v2(r: Any, inp: Any) -> Any:
        return [await a.start(r, 1), await a.start(r, 2), await b.start(r, 3)]

    await run.execute(v1)
    then = await run.execute(v2)

    assert ledger.calls == [("a", 1), ("a", 2), ("b", 3)]
    assert then == completed(
        [
            {"task": "a", "input": 1, "n": 1},
            {"task": "a", "input": 2, "n": 2},
            {"task": "b", "input": 3, "n": 1},
        ]
    )
    assert [o["address"] for o in run.outcomes] == [task_address("a", 2), task_address("b", 3)]


async def test_same_address_twice_is_two_calls_matched_in_order(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def wf(r: Any, inp: Any) -> Any:
        return [await a.start(r, {"same": True}), await a.start(r, {"same": True})]

    first = await run.execute(wf)

    assert ledger.count() == 2
    assert first["output"] == [
        {"task": "a", "input": {"same": True}, "n": 1},
        {"task": "a", "input": {"same": True}, "n": 2},
    ]
    assert [r.address for r in run.records] == [task_address("a", {"same": True})] * 2

    second = await run.execute(wf)

    assert ledger.count() == 2
    assert second == first  # record 1 went to the first call, record 2 to the second


async def test_same_address_third_call_runs_when_two_are_recorded(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def v1(r: Any, inp: Any) -> Any:
        return [await a.start(r, 0) for _ in range(2)]

    async def v2(r: Any, inp: Any) -> Any:
        return [await a.start(r, 0) for _ in range(3)]

    await run.execute(v1)
    then = await run.execute(v2)

    assert ledger.count() == 3
    assert [x["n"] for x in then["output"]] == [1, 2, 3]


# -- non-determinism -------------------------------------------------------------------------------


async def test_changed_input_fails_the_run_with_nondeterminism(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def wf(r: Any, inp: Any) -> Any:
        return await a.start(r, {"v": inp})

    await run.execute(wf, 1)
    then = await run.execute(wf, 2)

    assert then["state"] == "failed"
    assert then["error"]["type"] == "NonDeterminismError"
    assert "'a'" in then["error"]["message"]
    assert ledger.calls == [("a", {"v": 1})]  # the changed call never ran
    assert run.outcomes == []


async def test_nondeterminism_fails_the_run_even_when_the_workflow_catches_it(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")
    caught: list[BaseException] = []

    async def wf(r: Any, inp: Any) -> Any:
        try:
            return await a.start(r, {"v": inp})
        except NonDeterminismError as exc:
            caught.append(exc)
            return "swallowed"

    await run.execute(wf, 1)
    then = await run.execute(wf, 2)

    assert len(caught) == 1
    assert then["state"] == "failed"
    assert then["error"]["type"] == "NonDeterminismError"
    assert "output" not in then
    assert ledger.count() == 1


async def test_new_address_is_fine_once_recorded_calls_of_that_name_are_consumed(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def v1(r: Any, inp: Any) -> Any:
        return [await a.start(r, 1)]

    async def v2(r: Any, inp: Any) -> Any:
        return [await a.start(r, 1), await a.start(r, 99)]

    await run.execute(v1)
    then = await run.execute(v2)

    assert then["state"] == "completed"
    assert ledger.calls == [("a", 1), ("a", 99)]


async def test_new_call_of_another_name_is_not_nondeterminism(run: FakeRun, ledger: Ledger) -> None:
    a, b = ledger.echo("a"), ledger.echo("b")

    async def v1(r: Any, inp: Any) -> Any:
        return [await a.start(r, 1)]

    async def v2(r: Any, inp: Any) -> Any:
        # b is new while a's record is still unconsumed: only a changed input of `a` is suspicious.
        return [await b.start(r, 1), await a.start(r, 1)]

    await run.execute(v1)
    then = await run.execute(v2)

    assert then["state"] == "completed"
    assert ledger.calls == [("a", 1), ("b", 1)]


# -- a crash in the middle of concurrent calls ------------------------------------------------------


@pytest.mark.parametrize("recorded", [[0], [1], [2], [0, 2], [1, 2], [0, 1]])
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
async def test_crash_inside_gather_recovers_running_only_missing_calls(
    run: FakeRun, ledger: Ledger, recorded: list[int], order: tuple[int, int, int]
) -> None:
    a = ledger.echo("a")

    async def first(r: Any, inp: Any) -> Any:
        return list(await asyncio.gather(*(a.start(r, {"i": i}) for i in range(3))))

    async def recovery(r: Any, inp: Any) -> Any:
        return list(await asyncio.gather(*(a.start(r, {"i": i}) for i in order)))

    await run.execute(first)
    assert ledger.count() == 3
    keep = {task_address("a", {"i": i}) for i in recorded}
    run.records = [r for r in run.records if r.address in keep]
    ledger.calls.clear()

    then = await run.execute(recovery)

    assert then["state"] == "completed", then
    missing = sorted(i for i in range(3) if i not in recorded)
    assert sorted(inp["i"] for _, inp in ledger.calls) == missing
    assert [x["input"]["i"] for x in then["output"]] == list(order)
    assert sorted(o["address"] for o in run.outcomes) == sorted(task_address("a", {"i": i}) for i in missing)
    assert len(run.records) == 3


async def test_real_crash_inside_gather_then_recovery(run: FakeRun) -> None:
    """The worker is cancelled (killed) while one gathered call hangs; the others were recorded."""
    executed: list[int] = []
    hang = asyncio.Event()
    hang_first_time = [True]

    @task("step")
    async def step(i: int) -> int:
        executed.append(i)
        if i == 1 and hang_first_time[0]:
            hang_first_time[0] = False
            await hang.wait()  # never set: the worker dies here
        return i * 10

    async def wf(r: Any, inp: Any) -> Any:
        return list(await asyncio.gather(step.start(r, 0), step.start(r, 1), step.start(r, 2)))

    worker = asyncio.create_task(run.execution().execute(wf, None))
    for _ in range(200):
        if len(run.records) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(r.address for r in run.records) == sorted([task_address("step", 0), task_address("step", 2)])
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker

    executed.clear()
    then = await run.execute(wf, None)

    assert then == completed([0, 10, 20])
    assert executed == [1]


async def test_gather_with_duplicate_addresses_partially_recorded(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def wf(r: Any, inp: Any) -> Any:
        return list(await asyncio.gather(a.start(r, "x"), a.start(r, "x"), a.start(r, "y")))

    await run.execute(wf)
    run.crash_after(1)
    ledger.calls.clear()

    then = await run.execute(wf)

    assert then["state"] == "completed", then
    assert ledger.count() == 2


# -- task retries -----------------------------------------------------------------------------------


async def test_inline_retries_give_one_completed_record(run: FakeRun, ledger: Ledger) -> None:
    flaky = ledger.flaky("flaky", fail_times=2, retry=retry.fixed(max_attempts=3, delay_ms=5))

    async def wf(r: Any, inp: Any) -> Any:
        return await flaky.start(r, inp)

    then = await run.execute(wf, "x")

    assert then == completed({"ok": 3})
    assert [c.attempt for c in ledger.contexts] == [1, 2, 3]
    assert len(run.outcomes) == 1
    [outcome] = run.outcomes
    assert outcome["state"] == "completed"
    assert outcome["attempts"] == 3
    assert outcome["output"] == {"ok": 3}


async def test_exhausted_retries_raise_task_failed_in_the_workflow(run: FakeRun, ledger: Ledger) -> None:
    bad = ledger.flaky("bad", fail_times=99, retry=retry.fixed(max_attempts=3, delay_ms=1))

    async def wf(r: Any, inp: Any) -> Any:
        try:
            await bad.start(r, inp)
        except TaskFailed as exc:
            return {"task": exc.task_name, "attempts": exc.attempts, "error": exc.error}
        return "not reached"

    then = await run.execute(wf, 1)

    assert then == completed({"task": "bad", "attempts": 3, "error": {"type": "RuntimeError", "message": "boom 3"}})
    assert ledger.count() == 3
    [outcome] = run.outcomes
    assert outcome["state"] == "failed"
    assert outcome["attempts"] == 3
    assert outcome["error"] == {"type": "RuntimeError", "message": "boom 3"}
    assert "output" not in outcome

    # On replay the recorded failure is raised again without running the task.
    again = await run.execute(wf, 1)
    assert again == then
    assert ledger.count() == 3


async def test_uncaught_task_failure_fails_the_run(run: FakeRun, ledger: Ledger) -> None:
    bad = ledger.flaky("bad", fail_times=99)  # no retry policy: one attempt

    async def wf(r: Any, inp: Any) -> Any:
        return await bad.start(r, inp)

    then = await run.execute(wf, 1)

    assert then["state"] == "failed"
    assert then["error"]["type"] == "TaskFailed"
    assert "bad" in then["error"]["message"]
    assert "boom 1" in then["error"]["message"]
    assert ledger.count() == 1
    assert [o["state"] for o in run.outcomes] == ["failed"]


async def test_long_retry_delay_suspends_the_run_durably(run: FakeRun, ledger: Ledger) -> None:
    assert LONG_DELAY_MS > INLINE_RETRY_MAX_MS
    flaky = ledger.flaky("flaky", fail_times=1, retry=retry.fixed(max_attempts=3, delay_ms=LONG_DELAY_MS))

    async def wf(r: Any, inp: Any) -> Any:
        return await flaky.start(r, inp)

    before = now_ms()
    then = await run.execute(wf, "in")
    after = now_ms()

    assert ledger.count() == 1
    [outcome] = run.outcomes
    assert outcome["state"] == "retrying"
    assert outcome["attempts"] == 1
    assert outcome["error"] == {"type": "RuntimeError", "message": "boom 1"}
    assert before + LONG_DELAY_MS <= outcome["retry_at_ms"] <= after + LONG_DELAY_MS
    assert then == {"state": "awaiting_retry", "wake_at_ms": outcome["retry_at_ms"]}

    # Claimed again too early: still waiting, nothing runs, nothing is written but the state.
    early = await run.execute(wf, "in")
    assert early == then
    assert run.outcomes == []
    assert ledger.count() == 1

    # After the deadline: attempt 2 runs and updates the retrying record.
    [rec] = run.records
    rec.retry_at_ms = now_ms() - 1
    final = await run.execute(wf, "in")

    assert final == completed({"ok": 2})
    assert [c.attempt for c in ledger.contexts] == [1, 2]
    [outcome] = run.outcomes
    assert outcome["id"] == rec.id
    assert outcome["state"] == "completed"
    assert outcome["attempts"] == 2
    assert [(r.id, r.state, r.attempts) for r in run.records] == [(rec.id, TaskState.COMPLETED, 2)]

    # And from then on it replays.
    assert await run.execute(wf, "in") == final
    assert ledger.count() == 2


async def test_retry_due_within_the_inline_window_runs_after_a_short_wait(run: FakeRun, ledger: Ledger) -> None:
    flaky = ledger.flaky("flaky", fail_times=1, retry=retry.fixed(max_attempts=2, delay_ms=LONG_DELAY_MS))

    async def wf(r: Any, inp: Any) -> Any:
        return await flaky.start(r, inp)

    await run.execute(wf)
    [rec] = run.records
    rec.retry_at_ms = now_ms() + 100
    then = await run.execute(wf)

    assert then == completed({"ok": 2})
    assert now_ms() >= rec.retry_at_ms
    assert run.outcomes[0]["id"] == rec.id


async def test_last_durable_retry_attempt_failing_records_failed(run: FakeRun, ledger: Ledger) -> None:
    bad = ledger.flaky("bad", fail_times=99, retry=retry.fixed(max_attempts=2, delay_ms=LONG_DELAY_MS))

    async def wf(r: Any, inp: Any) -> Any:
        return await bad.start(r, inp)

    first = await run.execute(wf)
    assert first["state"] == "awaiting_retry"
    [rec] = run.records
    rec.retry_at_ms = now_ms() - 1

    then = await run.execute(wf)

    assert then["state"] == "failed"
    assert then["error"]["type"] == "TaskFailed"
    [outcome] = run.outcomes
    assert (outcome["id"], outcome["state"], outcome["attempts"]) == (rec.id, "failed", 2)


# -- whole-run retries --------------------------------------------------------------------------------


async def boom_workflow(r: Any, inp: Any) -> Any:
    raise ValueError(f"bad input {inp}")


async def test_workflow_retry_with_attempts_left_awaits_retry(run: FakeRun) -> None:
    policy = retry.exponential(max_attempts=3, base_delay_ms=10_000)

    before = now_ms()
    then = await run.execute(boom_workflow, 5, attempt=2, workflow_retry=policy)
    after = now_ms()

    assert then["state"] == "awaiting_retry"
    assert then["error"] == {"type": "ValueError", "message": "bad input 5"}
    assert before + 20_000 <= then["wake_at_ms"] <= after + 20_000


async def test_workflow_retry_on_the_last_attempt_fails(run: FakeRun) -> None:
    then = await run.execute(boom_workflow, 5, attempt=3, workflow_retry=retry.fixed(3, 1_000))

    assert then == {"state": "failed", "error": {"type": "ValueError", "message": "bad input 5"}}


async def test_workflow_error_without_retry_policy_fails(run: FakeRun) -> None:
    then = await run.execute(boom_workflow, 1)

    assert then == {"state": "failed", "error": {"type": "ValueError", "message": "bad input 1"}}


async def test_workflow_retry_does_not_hide_nondeterminism(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def wf(r: Any, inp: Any) -> Any:
        return await a.start(r, inp)

    await run.execute(wf, 1)
    then = await run.execute(wf, 2, workflow_retry=retry.fixed(5, 10))

    assert then["state"] == "failed"
    assert then["error"]["type"] == "NonDeterminismError"


# -- JSON values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{1, 2}, object(), float("nan"), {"k": b"bytes"}])
async def test_task_input_that_is_not_json_raises_type_error(run: FakeRun, ledger: Ledger, bad: Any) -> None:
    a = ledger.echo("needs-json")
    messages: list[str] = []

    async def wf(r: Any, inp: Any) -> Any:
        try:
            await a.start(r, bad)
        except TypeError as exc:
            messages.append(str(exc))
            return "caught"
        return "not reached"

    then = await run.execute(wf)

    assert then == completed("caught")
    [message] = messages
    assert "needs-json" in message
    assert "not a JSON value" in message
    assert ledger.count() == 0


async def test_uncaught_non_json_task_input_fails_the_run(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def wf(r: Any, inp: Any) -> Any:
        return await a.start(r, {"when": object()})

    then = await run.execute(wf)

    assert then["state"] == "failed"
    assert then["error"]["type"] == "TypeError"
    assert ledger.count() == 0


@pytest.mark.parametrize("bad", [{1, 2}, object(), float("inf")])
async def test_workflow_output_that_is_not_json_fails_the_run(run: FakeRun, bad: Any) -> None:
    async def wf(r: Any, inp: Any) -> Any:
        return {"out": bad}

    then = await run.execute(wf)

    assert then["state"] == "failed"
    assert then["error"]["type"] in {"TypeError", "ValueError"}
    assert "output" not in then


async def test_task_output_that_is_not_json_fails_that_attempt(run: FakeRun) -> None:
    @task("returns-set")
    async def returns_set(inp: Any) -> Any:
        return {1, 2}

    async def wf(r: Any, inp: Any) -> Any:
        return await returns_set.start(r, inp)

    then = await run.execute(wf)

    assert then["state"] == "failed"
    assert then["error"]["type"] == "TaskFailed"
    [outcome] = run.outcomes
    assert outcome["state"] == "failed"
    assert outcome["error"]["type"] == "TypeError"


# -- TaskContext ------------------------------------------------------------------------------------


async def test_task_context_identifies_the_call(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def wf(r: Any, inp: Any) -> Any:
        return await a.start(r, {"k": 1})

    await run.execute(wf)

    [ctx] = ledger.contexts
    assert ctx.attempt == 1
    assert ctx.workflow_run_id == RUN_ID
    assert ctx.task_id == f"{task_address('a', {'k': 1})}#0"


async def test_task_ids_differ_per_occurrence_and_address(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def wf(r: Any, inp: Any) -> Any:
        return [await a.start(r, 1), await a.start(r, 1), await a.start(r, 2)]

    await run.execute(wf)

    ids = [c.task_id for c in ledger.contexts]
    assert len(set(ids)) == 3
    assert all(re.fullmatch(r"a:[0-9a-f]{32}#\d+", i) for i in ids)


async def test_task_id_is_stable_across_a_crash(run: FakeRun, ledger: Ledger) -> None:
    """The second call of the same address gets the same task_id when it is re-executed after a crash."""
    a = ledger.echo("a")

    async def wf(r: Any, inp: Any) -> Any:
        return [await a.start(r, {"k": 1}), await a.start(r, {"k": 1})]

    await run.execute(wf)
    first_ids = [c.task_id for c in ledger.contexts]
    run.crash_after(1)  # the second outcome was never written
    ledger.contexts.clear()

    await run.execute(wf)

    [redo] = ledger.contexts
    assert redo.task_id == first_ids[1]
    assert redo.task_id == f"{task_address('a', {'k': 1})}#1"


async def test_task_id_is_stable_inside_a_gather_across_a_crash(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")

    async def wf(r: Any, inp: Any) -> Any:
        return list(await asyncio.gather(a.start(r, "x"), a.start(r, "x"), a.start(r, "y")))

    x, y = task_address("a", "x"), task_address("a", "y")
    await run.execute(wf)
    assert sorted(c.task_id for c in ledger.contexts) == sorted([f"{x}#0", f"{x}#1", f"{y}#0"])
    run.crash_after(1)  # one of the two "x" calls was recorded
    assert [r.address for r in run.records] == [x]
    ledger.contexts.clear()

    await run.execute(wf)

    # The recorded "x" is occurrence 0; the re-executed calls are the second "x" and the "y".
    assert sorted(c.task_id for c in ledger.contexts) == sorted([f"{x}#1", f"{y}#0"])


async def test_task_id_and_attempt_across_a_durable_retry(run: FakeRun, ledger: Ledger) -> None:
    flaky = ledger.flaky("flaky", fail_times=1, retry=retry.fixed(max_attempts=2, delay_ms=LONG_DELAY_MS))

    async def wf(r: Any, inp: Any) -> Any:
        return await flaky.start(r, inp)

    await run.execute(wf, 1)
    run.records[0].retry_at_ms = now_ms() - 1
    await run.execute(wf, 1)

    first, second = ledger.contexts
    assert (first.attempt, second.attempt) == (1, 2)
    assert second.task_id == first.task_id


# -- fencing ----------------------------------------------------------------------------------------


async def test_fenced_checkpoint_stops_the_run_before_the_next_task(ledger: Ledger) -> None:
    a, b = ledger.echo("a"), ledger.echo("b")
    attempts: list[list[dict[str, Any]]] = []

    async def fenced(outcomes: list[dict[str, Any]], then: dict[str, Any] | None, **extra: Any) -> None:
        attempts.append(outcomes)
        raise Fenced("claim lost")

    async def wf(r: Any, inp: Any) -> Any:
        await a.start(r, 1)
        await b.start(r, 2)
        return "done"

    execution = RunExecution(
        run_id=RUN_ID, workflow="wf", version="1", attempt=1, tasks=[], checkpoint=fenced, retry=None
    )
    with pytest.raises(Fenced):
        await execution.execute(wf, None)

    assert ledger.calls == [("a", 1)]  # b never started
    assert [[o["name"] for o in outs] for outs in attempts] == [["a"]]


async def test_fenced_final_checkpoint_raises(ledger: Ledger) -> None:
    async def fenced(outcomes: list[dict[str, Any]], then: dict[str, Any] | None, **extra: Any) -> None:
        raise Fenced("claim lost")

    async def wf(r: Any, inp: Any) -> Any:
        return "done"

    execution = RunExecution(
        run_id=RUN_ID, workflow="wf", version="1", attempt=1, tasks=[], checkpoint=fenced, retry=None
    )
    with pytest.raises(Fenced):
        await execution.execute(wf, None)


async def test_fenced_while_gathering_stops_later_tasks(ledger: Ledger) -> None:
    slow_started = asyncio.Event()

    @task("slow")
    async def slow(inp: Any) -> Any:
        slow_started.set()
        await asyncio.sleep(0.2)
        return "slow"

    fast, after = ledger.echo("fast"), ledger.echo("after")

    async def fenced(outcomes: list[dict[str, Any]], then: dict[str, Any] | None, **extra: Any) -> None:
        raise Fenced("claim lost")

    async def wf(r: Any, inp: Any) -> Any:
        await asyncio.gather(slow.start(r, 0), fast.start(r, 0))
        return await after.start(r, 0)

    execution = RunExecution(
        run_id=RUN_ID, workflow="wf", version="1", attempt=1, tasks=[], checkpoint=fenced, retry=None
    )
    with pytest.raises(Fenced):
        await execution.execute(wf, None)

    assert slow_started.is_set()
    assert ledger.count("fast") == 1
    assert ledger.count("after") == 0


# -- records from the wire --------------------------------------------------------------------------


def test_task_record_from_wire() -> None:
    rec = TaskRecord.from_wire(
        {"id": 3, "address": "a:" + "0" * 32, "name": "a", "state": "retrying", "attempts": 2, "retry_at_ms": 99}
    )

    assert rec == TaskRecord(
        id=3, address="a:" + "0" * 32, name="a", state=TaskState.RETRYING, attempts=2, retry_at_ms=99
    )
    assert rec.state is TaskState.RETRYING


async def test_superseded_records_are_never_replayed(run: FakeRun, ledger: Ledger) -> None:
    a = ledger.echo("a")
    address = task_address("a", 1)
    run.records = [
        TaskRecord(id=1, address=address, name="a", state=TaskState.SUPERSEDED, attempts=1, error={"type": "X"})
    ]

    async def wf(r: Any, inp: Any) -> Any:
        return await a.start(r, 1)

    then = await run.execute(wf)

    assert then == completed({"task": "a", "input": 1, "n": 1})
    assert ledger.count() == 1
    assert "unconsumed" not in then


async def test_left_behind_branches_still_get_recorded(run: FakeRun, ledger: Ledger) -> None:
    flaky = ledger.flaky("flaky", fail_times=1, retry=retry.fixed(max_attempts=2, delay_ms=LONG_DELAY_MS))

    @task("slow")
    async def slow(inp: Any) -> Any:
        await asyncio.sleep(0.1)
        return "slow done"

    async def wf(r: Any, inp: Any) -> Any:
        return list(await asyncio.gather(flaky.start(r, 1), slow.start(r, 2)))

    then = await run.execute(wf)

    assert then["state"] == "awaiting_retry"
    assert sorted((o["name"], o["state"]) for o in run.outcomes) == [("flaky", "retrying"), ("slow", "completed")]

    run.records[[r.name for r in run.records].index("flaky")].retry_at_ms = now_ms() - 1
    final = await run.execute(wf)

    assert final == completed([{"ok": 2}, "slow done"])
    assert [o["name"] for o in run.outcomes] == ["flaky"]


async def test_crash_inside_gather_of_multi_step_branches_recovers(run: FakeRun) -> None:
    """Branches of one gather reach their second calls at different loop steps. A crash while the
    slow branch's call runs, after the fast branch's later call of the same task was recorded, must
    still recover without NonDeterminismError (API.md: a crash in the middle of concurrent calls
    never causes an error on recovery)."""
    executed: list[tuple[str, Any]] = []
    hang = asyncio.Event()
    first_time = [True]

    @task("prepare")
    async def prepare(i: int) -> int:
        executed.append(("prepare", i))
        return i

    @task("enrich")
    async def enrich(i: int) -> int:
        executed.append(("enrich", i))
        return i + 100

    @task("send")
    async def send(i: int) -> str:
        executed.append(("send", i))
        if i == 1 and first_time[0]:
            first_time[0] = False
            await hang.wait()  # never set: the worker dies while this call runs
        return f"sent {i}"

    async def fast_and_slow(r: Any, inp: Any) -> Any:
        async def one() -> str:
            return await send.start(r, await prepare.start(r, 1))

        async def two() -> str:
            return await send.start(r, await enrich.start(r, await prepare.start(r, 2)))

        return list(await asyncio.gather(one(), two()))

    worker = asyncio.create_task(run.execution().execute(fast_and_slow, None))
    for _ in range(200):
        if len(run.records) == 4:
            break
        await asyncio.sleep(0.01)
    assert sorted(r.name for r in run.records) == ["enrich", "prepare", "prepare", "send"]
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker

    executed.clear()
    then = await run.execute(fast_and_slow, None)

    assert then == completed(["sent 1", "sent 102"])
    assert executed == [("send", 1)]
