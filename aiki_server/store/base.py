"""What the services need from a database, as a Protocol, and the rows it returns.

Every method is one atomic operation (one transaction), shaped after what a service does rather
than after tables, so each step of a run costs one round trip to the database. Implementations:
`sqlite.py` (embedded default); PostgreSQL follows the same contract.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiki_client.wire import RunState
from aiki_client.wire import queue_key as queue_key


@dataclass(frozen=True, slots=True)
class NewRun:
    id: str
    workflow: str
    version: str
    input_json: str
    input_hash: str
    reference_id: str | None
    shard_key: str | None
    parent_id: str | None
    wake_at_ms: int | None  # None: due now


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    workflow: str
    version: str
    state: RunState
    revision: int
    input_json: str
    input_hash: str
    output_json: str | None
    error_json: str | None
    attempts: int
    reference_id: str | None
    shard_key: str | None
    parent_id: str | None
    wake_at_ms: int | None
    worker_id: str | None
    created_at_ms: int
    updated_at_ms: int

    @property
    def queue(self) -> str:
        return queue_key(self.workflow, self.version, self.shard_key)


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """A task outcome reported by a worker. `id` names a recorded call being retried."""

    id: int | None
    address: str
    name: str
    state: str
    attempts: int
    output_json: str | None
    error_json: str | None
    retry_at_ms: int | None


@dataclass(frozen=True, slots=True)
class NewWait:
    """A sleep or event wait a worker records: `pending`, or already `done` / `received`."""

    kind: str
    name: str
    seq: int
    state: str
    deadline_ms: int | None
    event_id: int | None = None  # for `received`: the event the worker matched from its claim


@dataclass(frozen=True, slots=True)
class NewChild:
    id: str
    workflow: str
    version: str
    input_json: str
    input_hash: str


@dataclass(frozen=True, slots=True)
class NextState:
    """The state a worker moves its run to with a checkpoint."""

    state: RunState
    output_json: str | None = None
    error_json: str | None = None
    wake_at_ms: int | None = None
    detail_json: str | None = None  # noted in the run's history (e.g. unconsumed calls)
    waiting_on: tuple[str, ...] = ()  # child runs whose end the run awaits


@dataclass(frozen=True, slots=True)
class Claimed:
    run: Run
    tasks: list[dict[str, Any]]  # recorded calls, wire-shaped (output/error still JSON text)
    waits: list[dict[str, Any]] = field(default_factory=list)  # recorded sleeps and event waits
    events: list[dict[str, Any]] = field(default_factory=list)  # events no wait has received yet
    children: list[dict[str, Any]] = field(default_factory=list)  # child runs and how they stand


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    workflow: str
    version: str
    input_json: str
    input_hash: str
    cron: str | None
    tz: str | None
    every_ms: int | None
    overlap: str
    state: str
    reference_id: str | None
    next_fire_at_ms: int | None
    last_run_id: str | None
    fired: int
    skipped: int
    created_at_ms: int


class CheckpointResult:
    APPLIED = "applied"
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class Effects:
    """What a write did that others may be waiting for: queues that got a ready run, and runs
    that finished."""

    queued: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    wake_at_ms: int | None = None
    result: str = CheckpointResult.APPLIED


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def insert_run(self, new: NewRun, now_ms: int, *, published: bool = False) -> tuple[Run, bool]:
        """Insert a run; returns (run, created). An existing run with the same id or the same
        (workflow, reference_id) is returned as is when it matches, else ApiError(conflict).
        `published`: the caller publishes a ready run itself once this commits, so it is marked
        published now (and, if that message is lost, republished after the usual delay)."""
        ...

    async def get_run(self, run_id: str) -> Run | None: ...

    async def find_run_by_reference(self, workflow: str, reference_id: str) -> Run | None: ...

    async def list_history(self, run_id: str) -> list[dict[str, Any]]: ...

    async def list_tasks(self, run_id: str) -> list[dict[str, Any]]: ...

    async def claim_runs(
        self,
        worker_id: str,
        queues: list[str],
        limit: int,
        now_ms: int,
        claim_expires_at_ms: int,
        run_ids: Sequence[str] | None = None,
    ) -> list[Claimed]:
        """Claim the oldest ready runs of `queues` (or just `run_ids`, if still ready there)."""
        ...

    async def publish_ready(
        self,
        now_ms: int,
        republish_after_ms: int,
        limit: int,
        publish: Callable[[list[tuple[str, str]]], Awaitable[None]],
    ) -> int:
        """Hand ready runs not yet published (or whose message may be lost) to `publish`, and
        mark them published in the same transaction; returns how many."""
        ...

    async def unpublish(self, run_ids: list[str]) -> None:
        """Publishing these ready runs failed: the publisher takes them on its next pass."""
        ...

    async def checkpoint(
        self,
        run_id: str,
        worker_id: str,
        revision: int,
        seq: int,
        tasks: list[TaskOutcome],
        then: NextState | None,
        now_ms: int,
        claim_expires_at_ms: int,
        waits: Sequence[NewWait] = (),
        children: Sequence[NewChild] = (),
    ) -> Effects:
        """Apply a worker's checkpoint atomically: task outcomes, new waits, new child runs, and
        the run's next state. `Effects.result` says APPLIED or DUPLICATE (a repeated `seq`).
        Raises ApiError(fenced) if the worker no longer holds the run at that revision."""
        ...

    async def send_event(
        self, run_id: str, name: str, data_json: str, reference_id: str | None, now_ms: int
    ) -> tuple[int, bool, list[str]]: ...

    async def wakeup(self, run_id: str, now_ms: int) -> list[str]: ...

    async def pause(self, run_id: str, now_ms: int) -> None: ...

    async def resume(self, run_id: str, now_ms: int) -> list[str]: ...

    async def list_waits(self, run_id: str) -> list[dict[str, Any]]: ...

    async def heartbeat(self, worker_id: str, runs: list[tuple[str, int]], claim_expires_at_ms: int) -> list[str]:
        """Extend the claims; returns the ids of runs the worker no longer holds."""
        ...

    async def release_worker(self, worker_id: str, now_ms: int) -> list[str]:
        """Requeue every run the worker holds; returns their queues."""
        ...

    async def release_expired_claims(self, now_ms: int) -> list[str]:
        """Requeue runs whose claim went idle; returns their queues."""
        ...

    async def promote_due(self, now_ms: int) -> list[str]:
        """Queue runs whose deadline has come; returns their queues."""
        ...

    async def next_wake_at(self) -> int | None: ...

    async def insert_schedule(self, schedule: Schedule) -> tuple[Schedule, bool]:
        """Insert; an existing schedule with the same reference id is returned when it matches
        (same workflow, version, input and timing), else ApiError(conflict)."""
        ...

    async def get_schedule(self, schedule_id: str) -> Schedule | None: ...

    async def list_schedules(self) -> list[Schedule]: ...

    async def set_schedule_state(
        self, schedule_id: str, state: str, next_fire_at_ms: int | None, now_ms: int
    ) -> None: ...

    async def delete_schedule(self, schedule_id: str) -> None: ...

    async def due_schedules(self, now_ms: int) -> list[Schedule]: ...

    async def next_schedule_fire_at(self) -> int | None: ...

    async def fire_schedule(
        self, schedule: Schedule, next_fire_at_ms: int | None, run: NewRun | None, skipped: bool, now_ms: int
    ) -> tuple[Run | None, Effects]:
        """Advance a due schedule (compare-and-set on its next fire time, so one server fires it
        once) and start its run; with overlap `cancel_previous`, cancel the last run first.
        Returns (the run started or None, effects); (None, empty) if another server fired it."""
        ...

    async def cancel_run(self, run_id: str, reason: str | None, now_ms: int) -> Effects:
        """Cancel the run and its descendants that are not finished (`Effects.finished`), waking
        a parent that may await it. Raises ApiError(not_found) for an unknown run."""
        ...

    async def list_runs(
        self,
        *,
        workflow: str | None,
        states: Sequence[str],
        reference_id: str | None,
        limit: int,
        before: tuple[int, str] | None,
    ) -> list[Run]:
        """Runs newest first (by creation time, then id), filtered by workflow name, any of
        `states` (empty: all) and reference id; `before` = (created_at_ms, id) of the last run of
        the previous page (keyset paging: a page never repeats or skips a run under inserts)."""
        ...

    async def workflow_counts(self) -> list[tuple[str, str, str, int]]:
        """(workflow, version, state, number of runs) for every combination that has runs."""
        ...
