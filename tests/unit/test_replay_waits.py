"""Durable sleeps, event waits and child runs in the replay engine, without a server.

`WaitingRun` plays the server's part for one run, like `FakeRun` in test_replay.py, and also keeps
what a run's claim carries besides its task calls: its recorded waits, the events no wait has
received yet, and the status of its child runs. Each checkpoint is applied the way the store
applies it (a `received` wait takes its event out of the unreceived ones; a new child starts
`queued`). The clock the engine reads is frozen (`clock` fixture), so deadlines are exact.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest

from aiki_client import (
    ChildRunHandle,
    EventResult,
    NonDeterminismError,
    RunCancelled,
    RunFailed,
    TaskContext,
    WorkflowRun,
    task,
    workflow,
)
from aiki_client import _replay as replay
from aiki_client._replay import RunExecution, Suspend, TaskRecord, WaitRecord
from aiki_client.task import Task
from aiki_client.wire import TaskState, WaitKind, WaitState, task_address

WorkflowFn = Callable[..., Coroutine[Any, Any, Any]]

RUN_ID = "run-1"
T0 = 1_700_000_000_000  # the frozen clock's first reading, in ms

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR


# -- the child workflow used by the child-run tests ------------------------------------------------

other = workflow("other")


@other.v("2.0")
async def other_v2(r: WorkflowRun, inp: Any) -> Any:  # never run here: only started as a child
    return inp


CHILD_NAME = "child:other@2.0"


# -- the fake server --------------------------------------------------------------------------------


@dataclasses.dataclass
class Written:
    """One checkpoint as the engine sent it."""

    outcomes: list[dict[str, Any]]
    then: dict[str, Any] | None
    extra: dict[str, Any]


class Clock:
    """The engine's `now_ms`, frozen; tests move it on by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class WaitingRun:
    """One run's recorded history (task calls, waits, unreceived events, children), as the server
    keeps it, and the checkpoints each execution wrote."""

    def __init__(self) -> None:
        self.records: list[TaskRecord] = []
        self.waits: list[WaitRecord] = []
        self.events: list[dict[str, Any]] = []  # events no wait has received yet, in the order sent
        self.received: dict[int, dict[str, Any]] = {}  # event id -> event, once a wait received it
        self.children: dict[str, dict[str, Any]] = {}  # child id -> {"id", "state", "output", "error"}
        self.started_children: list[dict[str, Any]] = []  # every `children` entry ever written
        self.executions: list[list[Written]] = []
        self._next_event_id = 1

    # what the latest execution wrote

    @property
    def checkpoints(self) -> list[Written]:
        return self.executions[-1]

    @property
    def outcomes(self) -> list[dict[str, Any]]:
        return [o for w in self.checkpoints for o in w.outcomes]

    @property
    def new_waits(self) -> list[dict[str, Any]]:
        return [x for w in self.checkpoints for x in w.extra.get("waits", [])]

    @property
    def new_children(self) -> list[dict[str, Any]]:
        return [x for w in self.checkpoints for x in w.extra.get("children", [])]

    # what happens on the server between executions

    def send_event(self, name: str, data: Any = None) -> int:
        """An event arrives: the first pending wait of its name receives it, else it is kept."""
        event = {"id": self._next_event_id, "name": name, "data": data}
        self._next_event_id += 1
        pending = [
            w for w in self.waits if w.kind is WaitKind.EVENT and w.name == name and w.state is WaitState.PENDING
        ]
        if pending:
            first = min(pending, key=lambda w: w.seq)
            self._set_wait(first, WaitState.RECEIVED, data=data)
            self.received[event["id"]] = event
        else:
            self.events.append(event)
        return event["id"]

    def resolve(self, kind: WaitKind, name: str, seq: int, state: WaitState) -> None:
        """A timer fires: a pending sleep becomes done, a pending event wait times out."""
        [w] = [w for w in self.waits if (w.kind, w.name, w.seq) == (kind, name, seq)]
        assert w.state is WaitState.PENDING
        self._set_wait(w, state)

    def finish_child(self, child_id: str, state: str, *, output: Any = None, error: Any = None) -> None:
        self.children[child_id] = {"id": child_id, "state": state, "output": output, "error": error}

    def _set_wait(self, w: WaitRecord, state: WaitState, data: Any = None) -> None:
        i = self.waits.index(w)
        self.waits[i] = dataclasses.replace(w, state=state, data=data)

    # applying a checkpoint

    def persist(self, outcomes: list[dict[str, Any]], extra: dict[str, Any]) -> None:
        for o in outcomes:
            assert "id" not in o  # these runs never retry tasks durably
            self.records.append(
                TaskRecord(
                    id=len(self.records) + 1,
                    address=o["address"],
                    name=o["name"],
                    state=TaskState(o["state"]),
                    attempts=o["attempts"],
                    output=o.get("output"),
                    error=o.get("error"),
                )
            )
        for w in extra.get("waits", []):
            key = (WaitKind(w["kind"]), w["name"], w["seq"])
            assert key not in {(r.kind, r.name, r.seq) for r in self.waits}, f"wait {key} recorded twice"
            data = None
            if w["state"] == "received":
                [event] = [e for e in self.events if e["id"] == w["event_id"]]
                self.events.remove(event)
                self.received[event["id"]] = event
                data = event["data"]
            self.waits.append(
                WaitRecord(
                    kind=key[0],
                    name=key[1],
                    seq=key[2],
                    state=WaitState(w["state"]),
                    deadline_ms=w.get("deadline_ms"),
                    data=data,
                )
            )
        for c in extra.get("children", []):
            assert c["id"] not in self.children
            self.started_children.append(c)
            self.children[c["id"]] = {"id": c["id"], "state": "queued", "output": None, "error": None}

    def execution(self) -> RunExecution:
        written: list[Written] = []
        self.executions.append(written)

        async def checkpoint(outcomes: list[dict[str, Any]], then: dict[str, Any] | None, **extra: Any) -> None:
            assert set(extra) <= {"waits", "children"}
            assert all(extra.values()), "waits/children are only sent when there are new ones"
            written.append(Written(copy.deepcopy(outcomes), copy.deepcopy(then), copy.deepcopy(extra)))
            self.persist(outcomes, extra)

        return RunExecution(
            run_id=RUN_ID,
            workflow="wf",
            version="1",
            attempt=1,
            tasks=[dataclasses.replace(r) for r in self.records],
            checkpoint=checkpoint,
            waits=[dataclasses.replace(w) for w in self.waits],
            events=[dict(e) for e in self.events],
            children=[dict(c) for c in self.children.values()],
        )

    async def execute(self, fn: WorkflowFn, inp: Any = None) -> dict[str, Any]:
        then = await self.execution().execute(fn, inp)
        # What execute returns is what it sent, and it sent it last.
        assert self.checkpoints[-1].then == then
        assert all(w.then is None for w in self.checkpoints[:-1])
        return then


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(replay, "now_ms", c)
    return c


@pytest.fixture
def run(clock: Clock) -> WaitingRun:
    return WaitingRun()


def sleeping(wake_at_ms: int) -> dict[str, Any]:
    return {"state": "sleeping", "wake_at_ms": wake_at_ms}


def awaiting_event(wake_at_ms: int | None) -> dict[str, Any]:
    return {"state": "awaiting_event", "wake_at_ms": wake_at_ms}


def completed(output: Any) -> dict[str, Any]:
    return {"state": "completed", "output": output}


def sleep_wait(name: str, seq: int, state: str, deadline_ms: int) -> dict[str, Any]:
    return {"kind": "sleep", "name": name, "seq": seq, "state": state, "deadline_ms": deadline_ms}


def event_wait(name: str, seq: int, state: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "event", "name": name, "seq": seq, "state": state, **extra}


def result(ev: EventResult) -> list[Any]:
    assert isinstance(ev, EventResult)
    return [ev.received, ev.data]


def echo(name: str, calls: list[Any]) -> Task[Any, Any]:
    @task(name)
    async def body(inp: Any, ctx: TaskContext) -> Any:
        calls.append(inp)
        return {"task": name, "input": inp}

    return body


# -- run.sleep --------------------------------------------------------------------------------------


async def test_new_sleep_records_a_pending_wait_and_suspends(run: WaitingRun) -> None:
    reached: list[str] = []

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        await r.sleep("cool-off", minutes=5)
        reached.append("after")
        return "woke"

    then = await run.execute(wf)

    assert then == sleeping(T0 + 5 * MINUTE)
    assert reached == []
    assert len(run.checkpoints) == 1  # the new wait travels with the suspension
    [cp] = run.checkpoints
    assert cp.outcomes == []
    assert cp.extra == {"waits": [sleep_wait("cool-off", 0, "pending", T0 + 5 * MINUTE)]}


@pytest.mark.parametrize(("kwargs", "delta_ms"), [({}, 0), ({"seconds": 0}, 0), ({"seconds": -5}, -5 * SECOND)])
async def test_sleep_of_no_time_is_recorded_done_and_the_run_goes_on(
    run: WaitingRun, kwargs: dict[str, float], delta_ms: int
) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        await r.sleep("blink", **kwargs)
        return "after"

    then = await run.execute(wf)

    assert then == completed("after")
    assert run.new_waits == [sleep_wait("blink", 0, "done", T0 + delta_ms)]


async def test_replayed_done_sleep_goes_on_without_recording_again(run: WaitingRun, clock: Clock) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        await r.sleep("nap", hours=1)
        return "after"

    assert await run.execute(wf) == sleeping(T0 + HOUR)
    clock.advance(HOUR)
    run.resolve(WaitKind.SLEEP, "nap", 0, WaitState.DONE)

    then = await run.execute(wf)

    assert then == completed("after")
    assert run.new_waits == []
    assert [(w.name, w.seq, w.state) for w in run.waits] == [("nap", 0, WaitState.DONE)]


async def test_replayed_pending_sleep_suspends_again_with_the_recorded_deadline(run: WaitingRun, clock: Clock) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        await r.sleep("nap", hours=1)
        return "after"

    await run.execute(wf)
    clock.advance(10 * MINUTE)  # claimed again early (say, the run was woken up for nothing)

    then = await run.execute(wf)

    assert then == sleeping(T0 + HOUR)  # not T0 + 10 min + 1 h
    assert run.new_waits == []
    assert [cp.extra for cp in run.checkpoints] == [{}]


async def test_same_sleep_name_in_a_loop_is_matched_by_call_order(run: WaitingRun, clock: Clock) -> None:
    calls: list[Any] = []
    step = echo("step", calls)

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        out = []
        for i in range(3):
            out.append(await step.start(r, i))
            await r.sleep("tick", seconds=10)
        return [o["input"] for o in out]

    for seq in range(3):
        then = await run.execute(wf)
        assert then == sleeping(clock.now + 10 * SECOND)
        assert run.new_waits == [sleep_wait("tick", seq, "pending", clock.now + 10 * SECOND)]
        clock.advance(10 * SECOND)
        run.resolve(WaitKind.SLEEP, "tick", seq, WaitState.DONE)

    then = await run.execute(wf)

    assert then == completed([0, 1, 2])
    assert run.new_waits == []
    assert calls == [0, 1, 2]  # each step ran once, replays used its record
    assert [w.seq for w in run.waits] == [0, 1, 2]
    assert [w.deadline_ms for w in run.waits] == [T0 + 10 * SECOND, T0 + 20 * SECOND, T0 + 30 * SECOND]


async def test_sleep_in_a_loop_resumes_at_the_first_pending_one(run: WaitingRun) -> None:
    done = [WaitRecord(WaitKind.SLEEP, "tick", seq, WaitState.DONE, deadline_ms=T0 - 1) for seq in range(2)]
    run.waits = [*done, WaitRecord(WaitKind.SLEEP, "tick", 2, WaitState.PENDING, deadline_ms=T0 + 777)]
    passed: list[int] = []

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        for i in range(4):
            await r.sleep("tick", seconds=10)
            passed.append(i)

    then = await run.execute(wf)

    assert then == sleeping(T0 + 777)
    assert passed == [0, 1]
    assert run.new_waits == []


@pytest.mark.parametrize(
    ("kwargs", "ms"),
    [
        ({"days": 1}, DAY),
        ({"hours": 2}, 2 * HOUR),
        ({"minutes": 3}, 3 * MINUTE),
        ({"seconds": 4}, 4 * SECOND),
        ({"milliseconds": 5}, 5),
        ({"days": 1, "hours": 2, "minutes": 3, "seconds": 4, "milliseconds": 5}, DAY + 2 * HOUR + 3 * MINUTE + 4005),
        ({"days": 0.5, "minutes": 1.5}, 12 * HOUR + 90 * SECOND),
        ({"hours": 1, "minutes": -30}, 30 * MINUTE),
    ],
)
async def test_sleep_units_add_up(run: WaitingRun, kwargs: dict[str, float], ms: int) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        await r.sleep("s", **kwargs)

    then = await run.execute(wf)

    assert then == sleeping(T0 + ms)
    assert run.new_waits == [sleep_wait("s", 0, "pending", T0 + ms)]


@pytest.mark.parametrize(
    ("kwargs", "ms"),
    [({"milliseconds": 1001}, 1001), ({"seconds": 2.01}, 2010), ({"seconds": 1, "milliseconds": 3}, 1003)],
)
async def test_sleep_keeps_every_millisecond(run: WaitingRun, kwargs: dict[str, float], ms: int) -> None:
    # A whole number of milliseconds must not lose one to float rounding (1001 ms as 1000 ms).
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        await r.sleep("s", **kwargs)

    then = await run.execute(wf)

    assert then == sleeping(T0 + ms)


async def test_sleeps_and_event_waits_of_one_name_count_separately(run: WaitingRun) -> None:
    run.waits = [WaitRecord(WaitKind.SLEEP, "x", 0, WaitState.DONE, deadline_ms=T0 - 1)]

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        await r.sleep("x", seconds=1)  # seq 0 of sleep "x": done
        return result(await r.wait_for_event("x", timeout=5))  # seq 0 of event "x": new

    then = await run.execute(wf)

    assert then == awaiting_event(T0 + 5 * SECOND)
    assert run.new_waits == [event_wait("x", 0, "pending", deadline_ms=T0 + 5 * SECOND)]


# -- run.wait_for_event -----------------------------------------------------------------------------


async def test_event_sent_before_the_wait_is_received_at_once(run: WaitingRun) -> None:
    run.send_event("email_verified", {"ok": True})
    seen: list[EventResult] = []

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        ev = await r.wait_for_event("email_verified", timeout=timedelta(hours=12))
        seen.append(ev)
        return result(ev)

    then = await run.execute(wf)

    assert then == completed([True, {"ok": True}])
    assert seen == [EventResult(received=True, data={"ok": True})]
    assert run.new_waits == [event_wait("email_verified", 0, "received", event_id=1)]
    assert run.events == []  # the server now counts it received


async def test_events_of_one_name_are_received_in_the_order_sent(run: WaitingRun) -> None:
    first = run.send_event("a", 1)
    other_name = run.send_event("b", "b-data")
    second = run.send_event("a", 2)

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        got = [result(await r.wait_for_event("a")), result(await r.wait_for_event("a"))]
        got.append(result(await r.wait_for_event("a", timeout=30)))
        return got

    then = await run.execute(wf)

    assert then == awaiting_event(T0 + 30 * SECOND)
    assert run.new_waits == [
        event_wait("a", 0, "received", event_id=first),
        event_wait("a", 1, "received", event_id=second),
        event_wait("a", 2, "pending", deadline_ms=T0 + 30 * SECOND),
    ]
    assert [e["id"] for e in run.events] == [other_name]  # the "b" event stays kept


@pytest.mark.parametrize(
    ("timeout", "ms"),
    [
        (timedelta(hours=12), 12 * HOUR),
        (timedelta(seconds=1.5), 1500),
        (90, 90 * SECOND),
        (2.5, 2500),
        (timedelta(days=1, minutes=1), DAY + MINUTE),
    ],
)
async def test_wait_without_an_event_records_a_pending_wait_with_its_deadline(
    run: WaitingRun, timeout: timedelta | float, ms: int
) -> None:
    reached: list[str] = []

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        ev = await r.wait_for_event("approved", timeout=timeout)
        reached.append("after")
        return result(ev)

    then = await run.execute(wf)

    assert then == awaiting_event(T0 + ms)
    assert reached == []
    [cp] = run.checkpoints
    assert cp.outcomes == []
    assert cp.extra == {"waits": [event_wait("approved", 0, "pending", deadline_ms=T0 + ms)]}


async def test_wait_without_timeout_has_no_deadline(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        return result(await r.wait_for_event("approved"))

    then = await run.execute(wf)

    assert then == awaiting_event(None)
    assert run.new_waits == [event_wait("approved", 0, "pending", deadline_ms=None)]


async def test_event_timeout_keeps_every_millisecond(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        return result(await r.wait_for_event("e", timeout=timedelta(milliseconds=1001)))

    then = await run.execute(wf)

    assert then == awaiting_event(T0 + 1001)


async def test_replayed_received_wait_returns_its_recorded_data(run: WaitingRun) -> None:
    run.waits = [WaitRecord(WaitKind.EVENT, "approved", 0, WaitState.RECEIVED, deadline_ms=T0, data={"by": "ann"})]
    # An unreceived event of the same name belongs to a later wait, not to this replayed one.
    run.send_event("approved", {"by": "bob"})

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        return result(await r.wait_for_event("approved", timeout=60))

    then = await run.execute(wf)

    assert then == completed([True, {"by": "ann"}])
    assert run.new_waits == []
    assert [e["data"] for e in run.events] == [{"by": "bob"}]


async def test_replayed_timed_out_wait_returns_not_received(run: WaitingRun) -> None:
    run.waits = [WaitRecord(WaitKind.EVENT, "approved", 0, WaitState.TIMED_OUT, deadline_ms=T0 - 1)]

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        ev = await r.wait_for_event("approved", timeout=60)
        return {"received": ev.received, "data": ev.data}

    then = await run.execute(wf)

    assert then == completed({"received": False, "data": None})
    assert run.new_waits == []


async def test_replayed_pending_wait_suspends_again_with_the_recorded_deadline(run: WaitingRun, clock: Clock) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        return result(await r.wait_for_event("approved", timeout=timedelta(hours=1)))

    await run.execute(wf)
    clock.advance(5 * MINUTE)

    then = await run.execute(wf)

    assert then == awaiting_event(T0 + HOUR)
    assert run.new_waits == []


async def test_event_wait_lifecycle_across_executions(run: WaitingRun, clock: Clock) -> None:
    """Received at once, then pending, then received by the server, then timed out: each
    outcome, once recorded, is what every later replay sees."""
    run.send_event("ping", "p1")

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        return [result(await r.wait_for_event("ping", timeout=60)) for _ in range(3)]

    assert await run.execute(wf) == awaiting_event(T0 + 60 * SECOND)
    assert [w["state"] for w in run.new_waits] == ["received", "pending"]

    clock.advance(SECOND)
    run.send_event("ping", "p2")  # the pending wait receives it
    assert run.events == []
    assert await run.execute(wf) == awaiting_event(T0 + SECOND + 60 * SECOND)
    assert run.new_waits == [event_wait("ping", 2, "pending", deadline_ms=T0 + 61 * SECOND)]

    clock.advance(60 * SECOND)
    run.resolve(WaitKind.EVENT, "ping", 2, WaitState.TIMED_OUT)
    then = await run.execute(wf)

    assert then == completed([[True, "p1"], [True, "p2"], [False, None]])
    assert run.new_waits == []


async def test_waits_in_one_gather_suspend_together_with_the_earliest_deadline(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        return await asyncio.gather(
            r.wait_for_event("a", timeout=60),
            r.wait_for_event("b", timeout=timedelta(seconds=10)),
            r.sleep("c", minutes=1),
            r.wait_for_event("d"),
        )

    then = await run.execute(wf)

    assert then == awaiting_event(T0 + 10 * SECOND)
    assert sorted(run.new_waits, key=lambda w: w["name"]) == [
        event_wait("a", 0, "pending", deadline_ms=T0 + 60 * SECOND),
        event_wait("b", 0, "pending", deadline_ms=T0 + 10 * SECOND),
        sleep_wait("c", 0, "pending", T0 + MINUTE),
        event_wait("d", 0, "pending", deadline_ms=None),
    ]
    assert len(run.checkpoints) == 1


async def test_gathered_sleep_with_the_earliest_deadline_gives_the_sleeping_state(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        return await asyncio.gather(r.wait_for_event("a", timeout=60), r.sleep("b", seconds=5))

    then = await run.execute(wf)

    assert then == sleeping(T0 + 5 * SECOND)


async def test_gathered_waits_without_deadlines_suspend_without_wake_time(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        return await asyncio.gather(r.wait_for_event("a"), r.wait_for_event("b"))

    then = await run.execute(wf)

    assert then == awaiting_event(None)
    assert {w["name"] for w in run.new_waits} == {"a", "b"}


async def test_gathered_waits_of_one_name_take_kept_events_in_call_order(run: WaitingRun) -> None:
    kept = run.send_event("a", "only")

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        return await asyncio.gather(r.wait_for_event("a", timeout=5), r.wait_for_event("a", timeout=9))

    then = await run.execute(wf)

    assert then == awaiting_event(T0 + 9 * SECOND)
    assert run.new_waits == [
        event_wait("a", 0, "received", event_id=kept),
        event_wait("a", 1, "pending", deadline_ms=T0 + 9 * SECOND),
    ]


async def test_received_event_is_durable_before_the_next_task_runs(run: WaitingRun) -> None:
    run.send_event("go", 1)
    seen_at_task: list[list[dict[str, Any]]] = []

    @task("after-event")
    async def after_event(inp: Any) -> Any:
        seen_at_task.append(list(run.new_waits))
        return inp

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        ev = await r.wait_for_event("go")
        return await after_event.start(r, ev.data)

    then = await run.execute(wf)

    assert then == completed(1)
    assert seen_at_task == [[event_wait("go", 0, "received", event_id=1)]]


# -- child runs -------------------------------------------------------------------------------------


async def child_workflow(r: WorkflowRun, inp: Any) -> Any:
    child = await other_v2.start_as_child(r, inp)
    assert isinstance(child, ChildRunHandle)
    return {"child": child.id, "out": await child.wait_for_completion()}


async def test_new_child_is_created_with_its_call_in_one_checkpoint(run: WaitingRun) -> None:
    then = await run.execute(child_workflow, {"x": 1})

    [cp] = run.checkpoints
    [child] = cp.extra["children"]
    child_id = child["id"]
    assert isinstance(child_id, str) and child_id
    assert child == {"id": child_id, "workflow": "other", "version": "2.0", "input": {"x": 1}}
    assert cp.outcomes == [
        {
            "address": task_address(CHILD_NAME, {"x": 1}),
            "name": CHILD_NAME,
            "state": "completed",
            "attempts": 1,
            "output": {"child_id": child_id},
        }
    ]
    assert set(cp.extra) == {"children"}
    assert then == {"state": "awaiting_child", "wake_at_ms": None, "waiting_on": [child_id]}


async def test_child_started_before_a_task_is_durable_before_the_task_runs(run: WaitingRun) -> None:
    at_task: list[tuple[int, int]] = []

    @task("after-child")
    async def after_child(inp: Any) -> Any:
        at_task.append((len(run.new_children), len(run.outcomes)))
        return inp

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        child = await other_v2.start_as_child(r, 1)
        await after_child.start(r, 2)
        return child.id

    then = await run.execute(wf)

    [child] = run.new_children
    assert then == completed(child["id"])
    assert at_task == [(1, 1)]
    assert [o["name"] for o in run.outcomes] == [CHILD_NAME, "after-child"]


async def test_child_left_to_run_on_its_own_does_not_hold_the_run(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        child = await other_v2.start_as_child(r)
        return child.id

    then = await run.execute(wf)

    [child] = run.new_children
    assert then == completed(child["id"])
    assert child["input"] is None
    assert "waiting_on" not in then


async def test_replayed_child_call_reuses_the_same_child(run: WaitingRun) -> None:
    await run.execute(child_workflow, {"x": 1})
    [child_id] = run.children

    then = await run.execute(child_workflow, {"x": 1})

    assert then == {"state": "awaiting_child", "wake_at_ms": None, "waiting_on": [child_id]}
    assert run.new_children == []
    assert run.outcomes == []
    assert len(run.started_children) == 1


async def test_child_still_running_keeps_the_run_waiting(run: WaitingRun) -> None:
    await run.execute(child_workflow, "in")
    [child_id] = run.children
    run.finish_child(child_id, "running")

    then = await run.execute(child_workflow, "in")

    assert then["state"] == "awaiting_child"
    assert then["waiting_on"] == [child_id]


async def test_completed_child_returns_its_output(run: WaitingRun) -> None:
    await run.execute(child_workflow, {"x": 1})
    [child_id] = run.children
    run.finish_child(child_id, "completed", output={"sum": 42})

    then = await run.execute(child_workflow, {"x": 1})

    assert then == completed({"child": child_id, "out": {"sum": 42}})
    assert run.new_children == []


async def test_failed_child_raises_run_failed_with_its_error(run: WaitingRun) -> None:
    caught: list[RunFailed] = []

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        child = await other_v2.start_as_child(r, inp)
        try:
            return await child.wait_for_completion()
        except RunFailed as exc:
            caught.append(exc)
            return {"failed": exc.error}

    await run.execute(wf, 1)
    [child_id] = run.children
    error = {"type": "ValueError", "message": "bad x"}
    run.finish_child(child_id, "failed", error=error)

    then = await run.execute(wf, 1)

    assert then == completed({"failed": error})
    [exc] = caught
    assert exc.run_id == child_id
    assert "ValueError: bad x" in str(exc)


async def test_uncaught_child_failure_fails_the_run(run: WaitingRun) -> None:
    await run.execute(child_workflow, 1)
    [child_id] = run.children
    run.finish_child(child_id, "failed", error={"type": "KeyError", "message": "'k'"})

    then = await run.execute(child_workflow, 1)

    assert then["state"] == "failed"
    assert then["error"]["type"] == "RunFailed"
    assert child_id in then["error"]["message"]


async def test_cancelled_child_raises_run_cancelled(run: WaitingRun) -> None:
    caught: list[RunCancelled] = []

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        child = await other_v2.start_as_child(r, inp)
        try:
            return await child.wait_for_completion()
        except RunCancelled as exc:
            caught.append(exc)
            return "cancelled"

    await run.execute(wf, 1)
    [child_id] = run.children
    run.finish_child(child_id, "cancelled", error={"type": "Cancelled", "message": "stop it"})

    then = await run.execute(wf, 1)

    assert then == completed("cancelled")
    [exc] = caught
    assert not isinstance(exc, RunFailed)
    assert exc.run_id == child_id


async def test_changed_child_input_is_nondeterminism(run: WaitingRun) -> None:
    await run.execute(child_workflow, {"x": 1})

    then = await run.execute(child_workflow, {"x": 2})

    assert then["state"] == "failed"
    assert then["error"]["type"] == "NonDeterminismError"
    assert CHILD_NAME in then["error"]["message"]
    assert run.new_children == []  # no second child was started
    assert run.outcomes == []
    assert len(run.started_children) == 1


async def test_same_child_input_twice_starts_two_children_matched_in_order(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        a, b = await asyncio.gather(other_v2.start_as_child(r, 7), other_v2.start_as_child(r, 7))
        return [a.id, b.id]

    first = await run.execute(wf)
    ids = first["output"]

    assert len(set(ids)) == 2
    assert [c["id"] for c in run.new_children] == ids
    assert [o["output"] for o in run.outcomes] == [{"child_id": i} for i in ids]

    again = await run.execute(wf)

    assert again == completed(ids)
    assert run.new_children == []


async def test_gathered_children_wait_on_every_unfinished_one(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        a, b = await asyncio.gather(other_v2.start_as_child(r, "a"), other_v2.start_as_child(r, "b"))
        return await asyncio.gather(a.wait_for_completion(), b.wait_for_completion())

    await run.execute(wf)
    ids = sorted(run.children)
    assert run.checkpoints[-1].then == {"state": "awaiting_child", "wake_at_ms": None, "waiting_on": ids}

    run.finish_child(ids[0], "completed", output=1)
    then = await run.execute(wf)

    assert then == {"state": "awaiting_child", "wake_at_ms": None, "waiting_on": [ids[1]]}


# -- what wins when branches disagree -------------------------------------------------------------


async def boom() -> None:
    raise ValueError("boom")


@pytest.mark.parametrize("boom_first", [False, True])
async def test_suspension_wins_over_an_error_in_a_sibling_branch(run: WaitingRun, boom_first: bool) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        branches = [r.sleep("nap", seconds=30), boom()]
        await asyncio.gather(*(reversed(branches) if boom_first else branches))

    then = await run.execute(wf)

    assert then == sleeping(T0 + 30 * SECOND)
    assert run.new_waits == [sleep_wait("nap", 0, "pending", T0 + 30 * SECOND)]


async def test_event_wait_suspension_wins_over_an_error_in_a_sibling_branch(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        await asyncio.gather(boom(), r.wait_for_event("e", timeout=5))

    then = await run.execute(wf)

    assert then == awaiting_event(T0 + 5 * SECOND)


async def test_child_wait_suspension_wins_over_an_error_in_a_sibling_branch(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        child = await other_v2.start_as_child(r, 1)
        await asyncio.gather(child.wait_for_completion(), boom())

    then = await run.execute(wf)

    [child_id] = run.children
    assert then == {"state": "awaiting_child", "wake_at_ms": None, "waiting_on": [child_id]}


async def test_suspension_wins_over_an_error_raised_by_code_that_caught_it(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        try:
            await r.sleep("nap", seconds=1)
        except BaseException as exc:
            raise RuntimeError("cleanup failed") from exc

    then = await run.execute(wf)

    assert then == sleeping(T0 + SECOND)


async def test_the_error_is_raised_again_once_the_wait_is_over(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        await asyncio.gather(r.sleep("nap", seconds=1), boom())

    await run.execute(wf)
    run.resolve(WaitKind.SLEEP, "nap", 0, WaitState.DONE)

    then = await run.execute(wf)

    assert then == {"state": "failed", "error": {"type": "ValueError", "message": "boom"}}


async def test_nondeterminism_fails_a_run_that_then_suspends(run: WaitingRun) -> None:
    calls: list[Any] = []
    a = echo("a", calls)

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        try:
            await a.start(r, inp)
        except NonDeterminismError:
            pass
        await r.sleep("nap", hours=1)

    await run.execute(wf, 1)
    then = await run.execute(wf, 2)

    assert then["state"] == "failed"
    assert then["error"]["type"] == "NonDeterminismError"
    assert calls == [1]


async def test_nondeterminism_fails_a_run_whose_other_branch_later_waits_for_an_event(run: WaitingRun) -> None:
    calls: list[Any] = []
    a = echo("a", calls)

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        async def changed() -> None:
            try:
                await a.start(r, inp)
            except NonDeterminismError:
                pass

        async def slow_wait() -> None:
            await asyncio.sleep(0.01)  # something else first: the changed call is judged meanwhile
            await r.wait_for_event("e")

        await asyncio.gather(changed(), slow_wait())

    await run.execute(wf, 1)
    then = await run.execute(wf, 2)

    assert then["state"] == "failed"
    assert then["error"]["type"] == "NonDeterminismError"


@pytest.mark.parametrize("sleep_first", [True, False])
async def test_nondeterminism_in_a_gather_with_a_suspending_branch_fails_the_run(
    run: WaitingRun, sleep_first: bool
) -> None:
    """A changed task input next to a wait that suspends at once: the changed call must still be
    judged (its records of the same name stay unconsumed) and fail the run, as it does when the
    sibling does not suspend."""
    calls: list[Any] = []
    a = echo("a", calls)

    async def v1(r: WorkflowRun, inp: Any) -> Any:
        await a.start(r, 1)
        await r.sleep("nap", hours=1)

    async def v2(r: WorkflowRun, inp: Any) -> Any:
        branches = [r.sleep("nap", hours=1), a.start(r, 2)]
        await asyncio.gather(*(branches if sleep_first else reversed(branches)))

    assert await run.execute(v1) == sleeping(T0 + HOUR)
    then = await run.execute(v2)

    assert calls == [1]
    assert then["state"] == "failed"
    assert then["error"]["type"] == "NonDeterminismError"


async def test_without_a_suspending_branch_the_same_change_fails_the_run(run: WaitingRun) -> None:
    # The control for the test above: the same change, the sleep already done.
    calls: list[Any] = []
    a = echo("a", calls)

    async def v1(r: WorkflowRun, inp: Any) -> Any:
        await a.start(r, 1)
        await r.sleep("nap", hours=1)

    async def v2(r: WorkflowRun, inp: Any) -> Any:
        await asyncio.gather(r.sleep("nap", hours=1), a.start(r, 2))

    await run.execute(v1)
    run.resolve(WaitKind.SLEEP, "nap", 0, WaitState.DONE)
    then = await run.execute(v2)

    assert calls == [1]
    assert then["state"] == "failed"
    assert then["error"]["type"] == "NonDeterminismError"


# -- workflows that catch the suspension ----------------------------------------------------------


async def test_suspension_caught_by_return_exceptions_still_suspends(run: WaitingRun) -> None:
    seen: list[list[str]] = []

    async def wf(r: WorkflowRun, inp: Any) -> Any:
        results = await asyncio.gather(
            r.sleep("nap", seconds=3), r.wait_for_event("e", timeout=10), return_exceptions=True
        )
        seen.append([type(x).__name__ for x in results])
        return "pretended to finish"

    then = await run.execute(wf)

    assert seen == [["Suspend", "Suspend"]]
    assert then == sleeping(T0 + 3 * SECOND)
    assert "output" not in then
    assert {w["name"] for w in run.new_waits} == {"nap", "e"}


async def test_suspension_returned_as_the_output_still_suspends(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        return await asyncio.gather(r.wait_for_event("e"), return_exceptions=True)  # not JSON

    then = await run.execute(wf)

    assert then == awaiting_event(None)


async def test_child_wait_caught_by_return_exceptions_still_suspends(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        child = await other_v2.start_as_child(r, 1)
        [res] = await asyncio.gather(child.wait_for_completion(), return_exceptions=True)
        assert isinstance(res, Suspend)
        return "done anyway"

    then = await run.execute(wf)

    [child_id] = run.children
    assert then == {"state": "awaiting_child", "wake_at_ms": None, "waiting_on": [child_id]}


async def test_suspension_is_not_caught_by_except_exception(run: WaitingRun) -> None:
    async def wf(r: WorkflowRun, inp: Any) -> Any:
        try:
            await r.wait_for_event("e", timeout=1)
        except Exception:
            return "swallowed"
        return "after"

    then = await run.execute(wf)

    assert then == awaiting_event(T0 + SECOND)
