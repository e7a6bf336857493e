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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import NonDeterminismError, TaskFailed
from .wire import RunState, TaskState, canonical_json, task_address

if TYPE_CHECKING:
    from .retry import RetryPolicy
    from .task import Task

# Retry delays up to this long are waited out in the worker; longer ones suspend the run durably so
# a long backoff never holds a worker slot.
INLINE_RETRY_MAX_MS = 1_000
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
Checkpoint = Callable[[list[dict[str, Any]], dict[str, Any] | None], Awaitable[None]]


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
class _Call:
    task: Task[Any, Any]
    input: Any
    address: str
    future: asyncio.Future[Any]


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
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._group:
            # Resolve on the next loop step, when every sibling of an asyncio.gather has issued its call.
            asyncio.get_running_loop().call_soon(self._resolve_group)
        self._group.append(_Call(task, task_input, address, future))
        return future

    def _resolve_group(self) -> None:
        group, self._group = self._group, []
        fresh: list[_Call] = []
        for call in group:
            rec = self._matcher.take(call.address)
            task_id = self._matcher.next_task_id(call.address)
            if rec is None:
                fresh.append(call)
            else:
                self._replay(call, rec, task_id)
        for call in fresh:
            task_id = self._matcher.next_task_id(call.address)
            if self._matcher.unconsumed_by_name[call.task.name] > 0:
                err = NonDeterminismError(
                    f"task {call.task.name!r} was called with input {_preview(call.input)} that no "
                    f"recorded call of it has, while {self._matcher.unconsumed_by_name[call.task.name]} "
                    "recorded call(s) of it remain unconsumed: the workflow's code or input changed"
                )
                self._nondeterminism = self._nondeterminism or err
                _fail(call.future, err)
            else:
                self._start_execution(call, task_id, attempt=1, record_id=None)

    def _replay(self, call: _Call, rec: TaskRecord, task_id: str) -> None:
        if rec.state is TaskState.COMPLETED:
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
        signal = Suspend(state, wake_at_ms)
        self._suspensions.append(signal)
        _fail(future, signal)

    # -- running tasks for real ---------------------------------------------------------------

    def _start_execution(
        self, call: _Call, task_id: str, *, attempt: int, record_id: int | None, delay_ms: int = 0
    ) -> None:
        execution = asyncio.create_task(self._guarded(self._execute(call, task_id, attempt, record_id, delay_ms)))
        self._executions.add(execution)
        execution.add_done_callback(self._executions.discard)

    async def _execute(self, call: _Call, task_id: str, attempt: int, record_id: int | None, delay_ms: int) -> None:
        task = call.task
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
            "name": call.task.name,
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
        # Other tasks still running may take long: don't let this outcome wait for them.
        if len(self._executions) > 1:
            self._flush_in_background()
        elif self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(LINGER_FLUSH_S, self._flush_in_background)

    def _flush_in_background(self) -> None:
        self._linger = None
        if self._buffer:
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
            if entries or then is not None:
                # Shielded: once sent, a cancelled worker must not leave the outcome half-reported.
                await asyncio.shield(self._checkpoint(entries, then))

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
        if self._suspensions:
            # The earliest deadline decides when the run is looked at again.
            timed = [s for s in self._suspensions if s.wake_at_ms is not None]
            first = min(timed, key=lambda s: s.wake_at_ms or 0) if timed else self._suspensions[0]
            return {"state": first.state.value, "wake_at_ms": first.wake_at_ms}
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

    def __repr__(self) -> str:
        return f"<WorkflowRun {self.workflow}@{self.version} {self.id} attempt={self.attempt}>"


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
