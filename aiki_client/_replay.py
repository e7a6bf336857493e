"""The replay engine: runs one workflow function against its run's recorded history.

A workflow function is replayed from the top every time a worker claims its run. Each task call
computes its content address (name + hash of canonical input) and consumes the next recorded
outcome for that address; an address with nothing left runs the task for real and records the
outcome. Calls issued in the same event-loop step (one `asyncio.gather`) are matched as a group:
all recorded addresses are consumed before any new address is judged, so a crash in the middle of
concurrent calls recovers cleanly. A new address for a task name whose recorded calls are still
unconsumed means the input changed: `NonDeterminismError`.

Outcomes are written through a `Checkpoint` callable (the worker's HTTP client in production, a
recorder in unit tests). An outcome is made durable before the next task starts running, and the
last outcome travels with the run's final state in a single request.

This module must never import the HTTP layer: it is tested without a server.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .errors import NonDeterminismError, RunCancelled, RunFailed, TaskFailed
from .wire import TERMINAL_STATES, RunState, TaskState, WaitKind, WaitState, canonical_json, task_address

if TYPE_CHECKING:
    from .retry import RetryPolicy
    from .task import Task
    from .workflow import WorkflowVersion

# Retry delays up to this long are waited out in the worker; longer ones suspend the run durably so
# a long backoff never holds a worker slot.
INLINE_RETRY_MAX_MS = 1_000
# Loop steps without progress after which a held call (a new address whose task name still has
# unconsumed records) is judged: enough for results to travel up nested gathers.
QUIET_STEPS = 20
# An outcome left in the buffer this long (the workflow awaiting something that is not an aiki call)
# is written on its own.
LINGER_FLUSH_S = 0.05


class Suspend(BaseException):
    """A durable wait cannot be satisfied yet: the run must be suspended. Not for user code."""

    def __init__(self, state: RunState, wake_at_ms: int | None) -> None:
        super().__init__(state, wake_at_ms)
        self.state = state
        self.wake_at_ms = wake_at_ms


class Fenced(BaseException):
    """The worker's claim on the run was lost (it was released, cancelled or claimed elsewhere)."""


@dataclass(slots=True)
class TaskRecord:
    """One recorded task call, as the server returns it in a run's history."""

    id: int
    address: str
    name: str
    state: TaskState
    attempts: int
    output: Any = None
    error: dict[str, Any] | None = None
    retry_at_ms: int | None = None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> TaskRecord:
        return cls(
            id=d["id"],
            address=d["address"],
            name=d["name"],
            state=TaskState(d["state"]),
            attempts=d["attempts"],
            output=d.get("output"),
            error=d.get("error"),
            retry_at_ms=d.get("retry_at_ms"),
        )


# checkpoint(task_outcomes, then) -> None. `then` is None (the run goes on) or the run's next state.
# Keyword arguments `waits` and `children` carry new sleeps/event waits and child runs, when any.
Checkpoint = Callable[..., Awaitable[None]]


def error_info(exc: BaseException) -> dict[str, str]:
    """The `{"type", "message"}` form in which errors are recorded."""
    return {"type": type(exc).__name__, "message": str(exc)}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class TaskContext:
    """What a task may know about the call it is serving. `task_id` is stable across attempts and
    re-executions of the same call, so it can serve as an idempotency key."""

    attempt: int
    workflow_run_id: str
    task_id: str


@dataclass(slots=True)
class EventResult:
    """The outcome of `run.wait_for_event`: `received` is False when the timeout came first."""

    received: bool
    data: Any = None


@dataclass(slots=True)
class WaitRecord:
    """A recorded sleep or event wait, as the server returns it in a run's history."""

    kind: WaitKind
    name: str
    seq: int
    state: WaitState
    deadline_ms: int | None = None
    data: Any = None

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> WaitRecord:
        return cls(
            kind=WaitKind(d["kind"]),
            name=d["name"],
            seq=d["seq"],
            state=WaitState(d["state"]),
            deadline_ms=d.get("deadline_ms"),
            data=d.get("data"),
        )


@dataclass(slots=True)
class _Call:
    """A task call or a child start: both are matched by content address."""

    name: str
    input: Any
    address: str
    future: asyncio.Future[Any]
    task: Task[Any, Any] | None = None
    child: WorkflowVersion | None = None


@dataclass(slots=True)
class _Matcher:
    """Per-address queues of recorded calls, and how many of each task name are unconsumed."""

    queues: dict[str, collections.deque[TaskRecord]] = field(default_factory=dict)
    unconsumed_by_name: collections.Counter[str] = field(default_factory=collections.Counter)
    occurrences: collections.Counter[str] = field(default_factory=collections.Counter)

    @classmethod
    def of(cls, records: Sequence[TaskRecord]) -> _Matcher:
        m = cls()
        for rec in sorted(records, key=lambda r: r.id):
            if rec.state is TaskState.SUPERSEDED:
                continue
            m.queues.setdefault(rec.address, collections.deque()).append(rec)
            m.unconsumed_by_name[rec.name] += 1
        return m

    def take(self, address: str) -> TaskRecord | None:
        queue = self.queues.get(address)
        if not queue:
            return None
        rec = queue.popleft()
        self.unconsumed_by_name[rec.name] -= 1
        return rec

    def next_task_id(self, address: str) -> str:
        """`address#n` for the n-th call of this address in the run (0-based), replay or not."""
        n = self.occurrences[address]
        self.occurrences[address] += 1
        return f"{address}#{n}"

    def unconsumed(self) -> list[str]:
        return [rec.address for q in self.queues.values() for rec in q]


class RunExecution:
    """Executes one claim of one run: replays the workflow function, runs new tasks, checkpoints."""

    def __init__(
        self,
        *,
        run_id: str,
        workflow: str,
        version: str,
        attempt: int,
        tasks: Sequence[TaskRecord],
        checkpoint: Checkpoint,
        retry: RetryPolicy | None = None,
        waits: Sequence[WaitRecord] = (),
        events: Sequence[dict[str, Any]] = (),
        children: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.run = WorkflowRun(self, run_id=run_id, workflow=workflow, version=version, attempt=attempt)
        self._checkpoint = checkpoint
        self._workflow_retry = retry
        self._matcher = _Matcher.of(tasks)
        self._group: list[_Call] = []
        self._executions: set[asyncio.Task[None]] = set()
        self._suspensions: list[Suspend] = []
        self._nondeterminism: NonDeterminismError | None = None
        self._buffer: list[dict[str, Any]] = []
        self._new_waits: list[dict[str, Any]] = []
        self._new_children: list[dict[str, Any]] = []
        self._waits = {(w.kind, w.name, w.seq): w for w in waits}
        self._wait_calls: collections.Counter[tuple[WaitKind, str]] = collections.Counter()
        self._unreceived: dict[str, collections.deque[dict[str, Any]]] = {}
        for event in events:
            self._unreceived.setdefault(event["name"], collections.deque()).append(event)
        self._children = {c["id"]: c for c in children}
        self._waiting_on: set[str] = set()
        self._held: list[tuple[_Call, str]] = []
        self._progress = 0  # bumped by every call resolved and task finished: see _watch_for_quiet
        self._write_lock = asyncio.Lock()
        self._linger: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._workflow_task: asyncio.Task[Any] | None = None
        self._lost: BaseException | None = None

    # -- the workflow side --------------------------------------------------------------------

    def call_task(self, task: Task[Any, Any], task_input: Any) -> asyncio.Future[Any]:
        try:
            address = task_address(task.name, task_input)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"input of task {task.name!r} is not a JSON value: {exc}") from None
        return self._issue(_Call(task.name, task_input, address, asyncio.get_running_loop().create_future(), task=task))

    def call_child(self, version: WorkflowVersion, child_input: Any) -> asyncio.Future[Any]:
        name = f"child:{version.name}@{version.version}"
        try:
            address = task_address(name, child_input)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"input of child workflow {version.name!r} is not a JSON value: {exc}") from None
        return self._issue(_Call(name, child_input, address, asyncio.get_running_loop().create_future(), child=version))

    def _issue(self, call: _Call) -> asyncio.Future[Any]:
        if not self._group:
            # Resolve on the next loop step, when every sibling of an asyncio.gather has issued its call.
            asyncio.get_running_loop().call_soon(self._resolve_group)
        self._group.append(call)
        return call.future

    def _resolve_group(self) -> None:
        group, self._group = self._group, []
        self._progress += 1
        fresh: list[_Call] = []
        for call in group:
            rec = self._matcher.take(call.address)
            if rec is None:
                fresh.append(call)
            else:
                self._replay(call, rec, self._matcher.next_task_id(call.address))
        for call in fresh:
            task_id = self._matcher.next_task_id(call.address)
            if self._matcher.unconsumed_by_name[call.name] > 0:
                # Perhaps a changed input, perhaps a sibling branch will still consume those records
                # (a crash in the middle of a gather): decide once nothing else can make progress.
                self._held.append((call, task_id))
            else:
                self._start_fresh(call, task_id)
        self._watch_for_quiet()

    def _start_fresh(self, call: _Call, task_id: str) -> None:
        if call.child is not None:
            self._start_child(call)
        else:
            self._start_execution(call, task_id, attempt=1, record_id=None)

    def _watch_for_quiet(self) -> None:
        """With held calls, check whether the workflow has gone quiet: no call issued, nothing
        resolved and no task running for QUIET_STEPS loop steps."""
        if self._held and not self._executions and not self._group:
            asyncio.get_running_loop().call_soon(self._quiet_step, 0, self._progress)

    def _quiet_step(self, steps: int, progress: int) -> None:
        if progress != self._progress or self._executions or self._group or not self._held:
            return  # something moved: whoever moved it watches again
        if steps < QUIET_STEPS:
            asyncio.get_running_loop().call_soon(self._quiet_step, steps + 1, progress)
            return
        self._judge_held()

    def _judge_held(self, *, ended: bool = False) -> None:
        held, self._held = self._held, []
        for call, task_id in held:
            unconsumed = self._matcher.unconsumed_by_name[call.name]
            if unconsumed > 0:
                err = NonDeterminismError(
                    f"{call.name!r} was called with input {_preview(call.input)} that no recorded call of it "
                    f"has, while {unconsumed} recorded call(s) of it remain unconsumed: the workflow's code or "
                    "input changed"
                )
                self._nondeterminism = self._nondeterminism or err
                _fail(call.future, err)
            elif not ended:  # once the workflow has ended, a call it no longer awaits is not run
                self._start_fresh(call, task_id)

    def _replay(self, call: _Call, rec: TaskRecord, task_id: str) -> None:
        if call.child is not None:
            call.future.set_result(ChildRunHandle(self, rec.output["child_id"]))
        elif rec.state is TaskState.COMPLETED:
            call.future.set_result(rec.output)
        elif rec.state is TaskState.FAILED:
            _fail(call.future, TaskFailed(rec.name, rec.error or {}, rec.attempts))
        else:  # RETRYING: the next attempt is due at retry_at
            wait_ms = (rec.retry_at_ms or 0) - now_ms()
            if wait_ms > INLINE_RETRY_MAX_MS:
                self._suspend(call.future, RunState.AWAITING_RETRY, rec.retry_at_ms)
            else:
                self._start_execution(
                    call, task_id, attempt=rec.attempts + 1, record_id=rec.id, delay_ms=max(wait_ms, 0)
                )

    def _suspend(self, future: asyncio.Future[Any], state: RunState, wake_at_ms: int | None) -> None:
        _fail(future, self.suspension(state, wake_at_ms))

    def suspension(self, state: RunState, wake_at_ms: int | None) -> Suspend:
        """Note that the run cannot go on before `wake_at_ms` (or an outside event); returns the
        signal to raise into the workflow code."""
        signal = Suspend(state, wake_at_ms)
        self._suspensions.append(signal)
        return signal

    # -- children -------------------------------------------------------------------------------

    def _start_child(self, call: _Call) -> None:
        assert call.child is not None
        child_id = str(uuid.uuid4())
        # The child run is created by the same checkpoint that records this call: both or neither.
        self._new_children.append(
            {"id": child_id, "workflow": call.child.name, "version": call.child.version, "input": call.input}
        )
        self._buffer.append(
            {
                "address": call.address,
                "name": call.name,
                "state": TaskState.COMPLETED.value,
                "attempts": 1,
                "output": {"child_id": child_id},
            }
        )
        self._children[child_id] = {"id": child_id, "state": RunState.QUEUED.value}
        call.future.set_result(ChildRunHandle(self, child_id))
        self._schedule_flush()

    def child_outcome(self, child_id: str) -> dict[str, Any] | None:
        """The child's status if it has finished, else None (and the run will wait for it)."""
        status = self._children.get(child_id)
        if status is not None and status["state"] in TERMINAL_STATES:
            return status
        self._waiting_on.add(child_id)
        return None

    # -- sleeps and events ---------------------------------------------------------------------

    def _recorded_wait(self, kind: WaitKind, name: str) -> tuple[int, WaitRecord | None]:
        seq = self._wait_calls[(kind, name)]
        self._wait_calls[(kind, name)] += 1
        return seq, self._waits.get((kind, name, seq))

    def _record_wait(self, kind: WaitKind, name: str, seq: int, state: WaitState, **extra: Any) -> None:
        self._new_waits.append({"kind": kind.value, "name": name, "seq": seq, "state": state.value, **extra})

    async def sleep(self, name: str, duration_ms: int) -> None:
        seq, rec = self._recorded_wait(WaitKind.SLEEP, name)
        if rec is None:
            deadline = now_ms() + duration_ms
            if duration_ms <= 0:
                self._record_wait(WaitKind.SLEEP, name, seq, WaitState.DONE, deadline_ms=deadline)
                return
            self._record_wait(WaitKind.SLEEP, name, seq, WaitState.PENDING, deadline_ms=deadline)
            raise self.suspension(RunState.SLEEPING, deadline)
        if rec.state is WaitState.PENDING:
            raise self.suspension(RunState.SLEEPING, rec.deadline_ms)

    async def wait_for_event(self, name: str, timeout_ms: int | None) -> EventResult:
        seq, rec = self._recorded_wait(WaitKind.EVENT, name)
        if rec is not None:
            if rec.state is WaitState.RECEIVED:
                return EventResult(True, rec.data)
            if rec.state is WaitState.TIMED_OUT:
                return EventResult(False, None)
            raise self.suspension(RunState.AWAITING_EVENT, rec.deadline_ms)
        waiting = self._unreceived.get(name)
        if waiting:
            # Sent before this wait: kept, and the first matching wait receives it.
            event = waiting.popleft()
            self._record_wait(WaitKind.EVENT, name, seq, WaitState.RECEIVED, event_id=event["id"])
            return EventResult(True, event["data"])
        deadline = None if timeout_ms is None else now_ms() + max(timeout_ms, 0)
        self._record_wait(WaitKind.EVENT, name, seq, WaitState.PENDING, deadline_ms=deadline)
        raise self.suspension(RunState.AWAITING_EVENT, deadline)

    # -- running tasks for real ---------------------------------------------------------------

    def _start_execution(
        self, call: _Call, task_id: str, *, attempt: int, record_id: int | None, delay_ms: int = 0
    ) -> None:
        execution = asyncio.create_task(self._guarded(self._execute(call, task_id, attempt, record_id, delay_ms)))
        self._executions.add(execution)
        execution.add_done_callback(self._execution_done)

    def _execution_done(self, execution: asyncio.Task[None]) -> None:
        self._executions.discard(execution)
        self._progress += 1
        self._watch_for_quiet()

    async def _execute(self, call: _Call, task_id: str, attempt: int, record_id: int | None, delay_ms: int) -> None:
        task = call.task
        assert task is not None
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        # Earlier outcomes become durable before this task's side effects happen.
        await self.flush()
        while True:
            ctx = TaskContext(attempt=attempt, workflow_run_id=self.run.id, task_id=task_id)
            try:
                output = await task.invoke(call.input, ctx)
                canonical_json(output)  # refuse what cannot be stored, as a failure of this attempt
            except Exception as exc:
                error = error_info(exc)
                policy = task.retry
                if policy is not None and policy.should_retry(attempt):
                    delay = policy.delay_ms(attempt)
                    if delay <= INLINE_RETRY_MAX_MS:
                        await asyncio.sleep(delay / 1000)
                        attempt += 1
                        continue
                    retry_at = now_ms() + delay
                    self._record(call, record_id, TaskState.RETRYING, attempt, error=error, retry_at_ms=retry_at)
                    self._suspend(call.future, RunState.AWAITING_RETRY, retry_at)
                    return
                self._record(call, record_id, TaskState.FAILED, attempt, error=error)
                _fail(call.future, TaskFailed(task.name, error, attempt))
                return
            self._record(call, record_id, TaskState.COMPLETED, attempt, output=output)
            if not call.future.done():
                call.future.set_result(output)
            return

    def _record(
        self,
        call: _Call,
        record_id: int | None,
        state: TaskState,
        attempts: int,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        retry_at_ms: int | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "address": call.address,
            "name": call.name,
            "state": state.value,
            "attempts": attempts,
        }
        if record_id is not None:
            entry["id"] = record_id
        if state is TaskState.COMPLETED:
            entry["output"] = output
        if error is not None:
            entry["error"] = error
        if retry_at_ms is not None:
            entry["retry_at_ms"] = retry_at_ms
        self._buffer.append(entry)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # Other tasks still running may take long: don't let this outcome wait for them.
        if len(self._executions) > 1:
            self._flush_in_background()
        elif self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(LINGER_FLUSH_S, self._flush_in_background)

    def _flush_in_background(self) -> None:
        self._linger = None
        if self._buffer or self._new_waits or self._new_children:
            flush = asyncio.create_task(self._guarded(self.flush()))
            self._background.add(flush)
            flush.add_done_callback(self._background.discard)

    async def flush(self, then: dict[str, Any] | None = None) -> None:
        """Write buffered outcomes (and the run's next state, if given) in one request."""
        async with self._write_lock:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            entries, self._buffer = self._buffer, []
            extra: dict[str, Any] = {}
            if self._new_waits:
                extra["waits"], self._new_waits = self._new_waits, []
            if self._new_children:
                extra["children"], self._new_children = self._new_children, []
            if entries or extra or then is not None:
                # Shielded: once sent, a cancelled worker must not leave the outcome half-reported.
                await asyncio.shield(self._checkpoint(entries, then, **extra))

    # -- the whole run -------------------------------------------------------------------------

    async def execute(self, fn: Callable[..., Coroutine[Any, Any, Any]], workflow_input: Any) -> dict[str, Any]:
        """Run the workflow function to its end or first unsatisfiable wait; write the outcome.

        Returns the run's next state as sent to the server. Raises Fenced (or the transport's
        error) if the run's outcome could not be written: the worker must let go of the run.
        """
        self._workflow_task = asyncio.create_task(fn(self.run, workflow_input))
        error: BaseException | None = None
        output: Any = None
        try:
            output = await self._workflow_task
            canonical_json(output)
        except Suspend:
            pass
        except asyncio.CancelledError:
            await self._abandon()
            if self._lost is not None:  # a write failed while the workflow was running
                raise self._lost from None
            raise
        except Exception as exc:
            error = exc
        try:
            # Tasks started by branches that were left behind still finish and get recorded.
            while self._executions or self._background:
                await asyncio.gather(*self._executions, *self._background)
        except asyncio.CancelledError:
            await self._abandon()
            raise
        if self._lost is not None:
            raise self._lost
        # The workflow has ended: nothing can consume records any more, so judge held calls now.
        self._judge_held(ended=True)
        then = self._next_state(output, error)
        await self.flush(then)
        return then

    def _lose(self, exc: BaseException) -> None:
        """A write failed (claim lost, server gone): stop everything this execution does."""
        if self._lost is None:
            self._lost = exc
            if self._workflow_task is not None:
                self._workflow_task.cancel()

    async def _guarded(self, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._lose(exc)

    def _next_state(self, output: Any, error: BaseException | None) -> dict[str, Any]:
        unconsumed = self._matcher.unconsumed()
        if self._nondeterminism is not None:
            return {"state": RunState.FAILED.value, "error": error_info(self._nondeterminism)}
        if self._suspensions:
            # A wait that cannot be satisfied yet wins over whatever the code did after seeing it
            # (an error here may come from code that caught the signal): replay after the wait is
            # deterministic, so a genuine error is raised again then. The earliest deadline decides
            # when the run is looked at again.
            timed = [s for s in self._suspensions if s.wake_at_ms is not None]
            first = min(timed, key=lambda s: s.wake_at_ms or 0) if timed else self._suspensions[0]
            suspended: dict[str, Any] = {
                "state": first.state.value,
                "wake_at_ms": min([t for s in timed if (t := s.wake_at_ms) is not None], default=None),
            }
            if self._waiting_on:
                suspended["waiting_on"] = sorted(self._waiting_on)
            return suspended
        if error is not None:
            info = error_info(error)
            policy = self._workflow_retry
            if policy is not None and policy.should_retry(self.run.attempt):
                return {
                    "state": RunState.AWAITING_RETRY.value,
                    "wake_at_ms": now_ms() + policy.delay_ms(self.run.attempt),
                    "error": info,
                }
            return {"state": RunState.FAILED.value, "error": info}
        then: dict[str, Any] = {"state": RunState.COMPLETED.value, "output": output}
        if unconsumed:
            then["unconsumed"] = unconsumed
        return then

    async def _abandon(self) -> None:
        for t in (*self._executions, *self._background):
            t.cancel()
        await asyncio.gather(*self._executions, *self._background, return_exceptions=True)


class WorkflowRun:
    """What a workflow function receives as its first argument: the run's identity and the
    durable primitives. Pass it to `task.start(run, input)`."""

    def __init__(self, execution: RunExecution, *, run_id: str, workflow: str, version: str, attempt: int) -> None:
        self._execution = execution
        self.id = run_id
        self.workflow = workflow
        self.version = version
        self.attempt = attempt

    async def sleep(
        self,
        name: str,
        *,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        milliseconds: float = 0,
    ) -> None:
        """Sleep durably: the run is suspended and no worker is held until the time comes.
        Sleeps are matched by name and call order; a finished sleep returns at once on replay."""
        delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds, milliseconds=milliseconds)
        await self._execution.sleep(_wait_name(name), delta // timedelta(milliseconds=1))

    async def wait_for_event(self, name: str, timeout: timedelta | float | None = None) -> EventResult:
        """Wait durably for the run's next event called `name` (timeout: timedelta or seconds).
        An event sent before the wait is kept for it; `received` is False if the timeout came first."""
        timeout_ms = None
        if timeout is not None:
            if isinstance(timeout, timedelta):
                timeout_ms = timeout // timedelta(milliseconds=1)
            else:
                timeout_ms = round(float(timeout) * 1000)
        return await self._execution.wait_for_event(_wait_name(name), timeout_ms)

    def __repr__(self) -> str:
        return f"<WorkflowRun {self.workflow}@{self.version} {self.id} attempt={self.attempt}>"


class ChildRunHandle:
    """A child run started with `version.start_as_child(run, input)`."""

    def __init__(self, execution: RunExecution, child_id: str) -> None:
        self._execution = execution
        self.id = child_id

    async def wait_for_completion(self) -> Any:
        """Wait durably for the child to end: its output, or RunFailed / RunCancelled."""
        status = self._execution.child_outcome(self.id)
        if status is None:
            raise self._execution.suspension(RunState.AWAITING_CHILD, None)
        if status["state"] == RunState.COMPLETED:
            return status.get("output")
        if status["state"] == RunState.FAILED:
            raise RunFailed(self.id, status.get("error"))
        raise RunCancelled(self.id, (status.get("error") or {}).get("message"))

    def __repr__(self) -> str:
        return f"<ChildRunHandle {self.id}>"


def _wait_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"a wait's name must be a non-empty string of at most 200 characters, got {name!r}")
    return name


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if future.done():
        return
    future.set_exception(exc)
    # A branch left behind (its gather already failed) never reads this: don't warn about it.
    future.add_done_callback(lambda f: f.exception())


def _preview(value: Any, limit: int = 120) -> str:
    text = canonical_json(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def invoke_callable(fn: Callable[..., Any], wants_ctx: bool, task_input: Any, ctx: TaskContext) -> Any:
    """Call a task function: coroutine functions directly, plain functions in a thread."""
    args = (task_input, ctx) if wants_ctx else (task_input,)
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    return await asyncio.to_thread(fn, *args)
