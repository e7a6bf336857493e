"""The store's rules in SQL: one implementation for SQLite and PostgreSQL.

Every public method is one transaction, shaped after what a service does (not after tables), so a
step of a run costs one transaction. Statements are written in PostgreSQL's dialect (`$1`
placeholders, `= ANY($n)` for lists); the SQLite backend rewrites the few constructs SQLite lacks.
State changes are compare-and-set: the WHERE clause names the states a row may leave and, for a run
held by a worker, the revision that worker holds.

This is the only module (with the backends' migrations) that knows SQL. It never imports Sanic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from aiki_client.wire import SUSPENDED_STATES, TERMINAL_STATES, RunState, TaskState, WaitKind, WaitState

from .. import errors
from ..state_machine import TIMED_STATES, sources
from .backend import Backend, Tx, UniqueViolation
from .base import (
    CheckpointResult,
    Claimed,
    Effects,
    NewChild,
    NewRun,
    NewWait,
    NextState,
    Run,
    Schedule,
    TaskOutcome,
    queue_key,
)
from .group_commit import GroupCommit

_RUN_COLUMNS = (
    "id, workflow, version, state, revision, input, input_hash, output, error, attempts, reference_id, "
    "shard_key, parent_id, wake_at, worker_id, created_at, updated_at"
)
_TASK_COLUMNS = "id, address, name, state, attempts, output, error, retry_at"
_SCHEDULE_COLUMNS = (
    "id, workflow, version, input, input_hash, cron, tz, every_ms, overlap, state, reference_id, next_fire_at,"
    " last_run_id, fired, skipped, created_at"
)
_TIMED = [s.value for s in TIMED_STATES]
_SUSPENDED = [s.value for s in SUSPENDED_STATES]
_TERMINAL = [s.value for s in TERMINAL_STATES]
_CANCELLABLE = [s.value for s in sources(RunState.CANCELLED)]
_PAUSABLE = [s.value for s in sources(RunState.PAUSED)]


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """A checkpoint the one-statement path takes: new task outcomes, maybe the run's end."""

    run_id: str
    worker_id: str
    revision: int
    seq: int
    tasks: list[TaskOutcome]
    then: NextState | None
    now_ms: int
    claim_expires_at_ms: int


class SqlStore:
    """The Store protocol over a Backend (a SQLite file or a PostgreSQL pool)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._steps: GroupCommit[Step, bool] = GroupCommit(self._write_steps, key=lambda s: s.run_id)

    async def open(self) -> None:
        await self.backend.open()

    async def close(self) -> None:
        await self.backend.close()

    async def ping(self) -> None:
        async with self.backend.transaction(readonly=True) as tx:
            await tx.fetchrow("SELECT 1")

    # -- runs -----------------------------------------------------------------------------------

    async def insert_run(self, new: NewRun, now_ms: int, *, published: bool = False) -> tuple[Run, bool]:
        if self.backend.writes_in_one_statement:
            # A new run and its history line in one statement; any clash takes the general path.
            async with self.backend.statement() as tx:
                run = await _insert_run_in_one_statement(tx, new, now_ms, published=published)
            if run is not None:
                return run, True
        async with self.backend.transaction() as tx:
            existing = None
            if new.reference_id is not None:
                existing = await _one_run(tx, "workflow = $1 AND reference_id = $2", new.workflow, new.reference_id)
                if existing is not None and (existing.version, existing.input_hash) != (new.version, new.input_hash):
                    differs = "version" if existing.version != new.version else "input"
                    raise errors.conflict(
                        f"reference_id {new.reference_id!r} of workflow {new.workflow!r} already names run "
                        f"{existing.id} with a different {differs}"
                    )
            if existing is None:
                existing = await _one_run(tx, "id = $1", new.id)
                if existing is not None and (existing.workflow, existing.version, existing.input_hash) != (
                    new.workflow,
                    new.version,
                    new.input_hash,
                ):
                    raise errors.conflict(f"run id {new.id!r} is already taken by another run")
            if existing is not None:
                return existing, False
            try:
                return await _insert_run(tx, new, now_ms, published=published), True
            except UniqueViolation:
                # Another server inserted the same run (id or reference id) at the same moment.
                raise errors.unavailable("concurrent start of the same run; retry") from None

    async def get_run(self, run_id: str) -> Run | None:
        async with self.backend.transaction(readonly=True) as tx:
            return await _one_run(tx, "id = $1", run_id)

    async def find_run_by_reference(self, workflow: str, reference_id: str) -> Run | None:
        async with self.backend.transaction(readonly=True) as tx:
            return await _one_run(tx, "workflow = $1 AND reference_id = $2", workflow, reference_id)

    async def list_history(self, run_id: str) -> list[dict[str, Any]]:
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.fetch("SELECT at, state, detail FROM run_history WHERE run_id = $1 ORDER BY id", run_id)
        return [{"at_ms": at, "state": state, "detail": detail} for at, state, detail in rows]

    async def list_tasks(self, run_id: str) -> list[dict[str, Any]]:
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.fetch(f"SELECT {_TASK_COLUMNS} FROM task_calls WHERE run_id = $1 ORDER BY id", run_id)
        return [_task(r) for r in rows]

    async def list_waits(self, run_id: str) -> list[dict[str, Any]]:
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                "SELECT w.kind, w.name, w.seq, w.state, w.deadline, e.data FROM waits w"
                " LEFT JOIN events e ON e.id = w.event_id WHERE w.run_id = $1 ORDER BY w.id",
                run_id,
            )
        return [_wait(r) for r in rows]

    # -- claims -----------------------------------------------------------------------------------

    async def claim_runs(
        self,
        worker_id: str,
        queues: list[str],
        limit: int,
        now_ms: int,
        claim_expires_at_ms: int,
        run_ids: Sequence[str] | None = None,
    ) -> list[Claimed]:
        # Either the oldest ready runs of these queues, or (a message read from a stream) these very
        # runs, if they are still ready and in one of the worker's queues. Named runs wait for a row
        # lock instead of skipping it: the publisher holds it until it has marked the run published,
        # and the worker may read the message before that.
        # Named runs are locked in id order, as every statement that waits for several row locks.
        which = "ORDER BY ready_at LIMIT $5 FOR UPDATE SKIP LOCKED"
        if run_ids is not None:
            which = "AND id = ANY($6) ORDER BY id LIMIT $5 FOR UPDATE"
        claim = (
            "UPDATE runs SET state = 'running', revision = revision + 1, worker_id = $1, claim_expires_at = $2,"
            " checkpoint_seq = 0, ready_at = NULL, wake_requested = 0, updated_at = $3"
            f" WHERE id IN (SELECT id FROM runs WHERE state = 'queued' AND queue = ANY($4) {which})"
            f" RETURNING {_RUN_COLUMNS}"
        )
        args = [worker_id, claim_expires_at_ms, now_ms, queues, limit, *([] if run_ids is None else [list(run_ids)])]
        detail = _json({"worker_id": worker_id})
        if self.backend.writes_in_one_statement:
            # The claim, its history line and the runs' unreceived events in one statement; the
            # rest of what a run recorded (only a run claimed before has any) in a transaction after.
            async with self.backend.statement() as tx:
                rows = await tx.fetch(
                    f"WITH claimed AS ({claim}), history AS (INSERT INTO run_history (run_id, at, state, detail)"
                    f" SELECT id, $3, 'running', ${len(args) + 1} FROM claimed)"
                    " SELECT claimed.*, (SELECT json_agg(json_build_array(e.id, e.name, e.data) ORDER BY e.id)"
                    " FROM events e WHERE e.run_id = claimed.id AND e.wait_id IS NULL) FROM claimed",
                    *args,
                    detail,
                )
            claimed = [
                Claimed(
                    _run(r),
                    [],
                    events=[{"id": i, "name": n, "data": d} for i, n, d in orjson.loads(r[-1] or "[]")],
                )
                for r in rows
            ]
            if any(c.run.revision > 1 for c in claimed):
                async with self.backend.transaction() as tx:
                    await _read_records(tx, claimed, now_ms)
            return claimed
        async with self.backend.transaction() as tx:
            rows = await tx.fetch(claim, *args)
            if not rows:
                return []
            claimed = [Claimed(_run(r), []) for r in rows]
            await _history(tx, [c.run.id for c in claimed], now_ms, RunState.RUNNING, detail)
            by_id = {c.run.id: c for c in claimed}
            for run_id, event_id, name, data in await tx.fetch(
                "SELECT run_id, id, name, data FROM events WHERE run_id = ANY($1) AND wait_id IS NULL ORDER BY id",
                list(by_id),
            ):
                by_id[run_id].events.append({"id": event_id, "name": name, "data": data})
            await _read_records(tx, claimed, now_ms)
            return claimed

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
        if (
            self.backend.writes_in_one_statement
            and not waits
            and not children
            and all(t.id is None for t in tasks)
            and (then is None or then.state in TERMINAL_STATES)
        ):
            # The common step (new task outcomes, maybe the run's end) goes with the steps of other
            # runs arriving meanwhile, in one statement; anything it does not cover, or a step it
            # does not apply to (a duplicate, a fenced worker, a parent to wake), takes the general
            # path below.
            step = Step(run_id, worker_id, revision, seq, tasks, then, now_ms, claim_expires_at_ms)
            try:
                applied = await self._steps.submit(step)
            except UniqueViolation:
                applied = False  # the whole batch wrote nothing; each step is told apart below
            if applied:
                return Effects(finished=[run_id] if then is not None else [])
        async with self.backend.transaction() as tx:
            effects = Effects()
            row = await tx.fetchrow(
                "SELECT state, revision, worker_id, checkpoint_seq, wake_requested, parent_id, queue FROM runs"
                " WHERE id = $1 FOR UPDATE",
                run_id,
            )
            if row is None:
                raise errors.not_found(f"no run with id {run_id!r}")
            state, current_revision, holder, applied_seq, wake_requested, parent_id, queue = row
            if current_revision == revision and seq <= applied_seq:
                effects.result = CheckpointResult.DUPLICATE  # a retried request whose first try landed
                return effects
            if state != RunState.RUNNING or current_revision != revision or holder != worker_id:
                raise errors.fenced(
                    f"run {run_id} is no longer held by {worker_id} at revision {revision} "
                    f"(it is {state}, revision {current_revision})"
                )
            if seq != applied_seq + 1:
                raise errors.conflict(f"checkpoint {seq} of run {run_id} arrived before checkpoint {applied_seq + 1}")
            for t in tasks:
                await _record_task(tx, run_id, t, now_ms)
            for child in children:
                await _insert_child(tx, run_id, child, now_ms)
                effects.queued.append(queue_key(child.workflow, child.version))
            received_now = False
            for w in waits:
                received_now = await _record_wait(tx, run_id, w, now_ms) or received_now
            if then is None:
                # A wait that received its event here is news for the run's next suspension too.
                await tx.execute(
                    "UPDATE runs SET checkpoint_seq = $1, claim_expires_at = $2, updated_at = $3,"
                    " wake_requested = CASE WHEN $4 THEN 1 ELSE wake_requested END WHERE id = $5",
                    seq,
                    claim_expires_at_ms,
                    now_ms,
                    received_now,
                    run_id,
                )
                return effects
            next_state, wake_at = then.state, then.wake_at_ms
            if next_state in SUSPENDED_STATES and (
                wake_requested or received_now or await _any_finished(tx, run_id, then.waiting_on)
            ):
                # What the run would wait for has already happened: it goes straight back to work.
                next_state, wake_at = RunState.QUEUED, None
                effects.queued.append(queue)
            attempts_step = 0
            if next_state is RunState.AWAITING_RETRY and then.error_json is not None:
                # A whole-run retry: failed calls run afresh next time, completed ones stay recorded.
                attempts_step = 1
                await tx.execute(
                    "UPDATE task_calls SET state = 'superseded', updated_at = $1 WHERE run_id = $2 AND state = 'failed'",
                    now_ms,
                    run_id,
                )
            await tx.execute(
                "UPDATE runs SET state = $1, output = $2, error = $3, wake_at = $4, attempts = attempts + $5,"
                " ready_at = $6, worker_id = NULL, claim_expires_at = NULL, checkpoint_seq = $7, updated_at = $8,"
                " announced_at = NULL, announce_count = 0 WHERE id = $9",
                next_state.value,
                then.output_json,
                then.error_json,
                wake_at if next_state in TIMED_STATES else None,
                attempts_step,
                now_ms if next_state is RunState.QUEUED else None,
                seq,
                now_ms,
                run_id,
            )
            await _history(tx, [run_id], now_ms, next_state, then.detail_json or then.error_json)
            if next_state in TERMINAL_STATES:
                effects.finished.append(run_id)
                if parent_id is not None:
                    effects.queued.extend(await _wake(tx, [parent_id], now_ms))
            effects.wake_at_ms = wake_at
            return effects

    async def _write_steps(self, steps: list[Step]) -> list[bool]:
        """Checkpoints of several runs (one each) in one PostgreSQL statement: each step's task
        outcomes and, with `then`, the end of a run without a parent. A step applies only where its
        run is exactly where the step expects it (held by this worker at this revision, the previous
        checkpoint applied); returns, per step, whether it applied."""
        calls = [(s.run_id, t) for s in steps for t in s.tasks]
        args = [
            [s.run_id for s in steps],
            [s.revision for s in steps],
            [s.worker_id for s in steps],
            [s.seq for s in steps],
            [s.now_ms for s in steps],
            [s.claim_expires_at_ms for s in steps],
            [s.then.state.value if s.then else None for s in steps],
            [s.then.output_json if s.then else None for s in steps],
            [s.then.error_json if s.then else None for s in steps],
            [(s.then.detail_json or s.then.error_json) if s.then else None for s in steps],
            [run_id for run_id, _ in calls],
            [t.address for _, t in calls],
            [t.name for _, t in calls],
            [t.state for _, t in calls],
            [t.attempts for _, t in calls],
            [t.output_json for _, t in calls],
            [t.error_json for _, t in calls],
            [t.retry_at_ms for _, t in calls],
        ]
        # A step with `then` (ends_as) ends the run: its state set, its claim fields cleared, a
        # history line written; a step without it only moves the checkpoint on and extends the claim.
        sql = (
            "WITH step AS (SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::bigint[],"
            " $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[])"
            " AS s(run_id, revision, worker_id, seq, now, claim_expires_at, ends_as, output, error, detail)),"
            # Row locks in id order, as every statement locking several runs takes them: two such
            # statements (these steps, a worker's heartbeat) then never wait on each other in a cycle.
            " locked AS MATERIALIZED (SELECT r.id FROM runs r JOIN step s ON r.id = s.run_id ORDER BY r.id"
            " FOR UPDATE OF r),"
            " run AS (UPDATE runs r SET checkpoint_seq = s.seq, updated_at = s.now,"
            " claim_expires_at = CASE WHEN s.ends_as IS NULL THEN s.claim_expires_at END,"
            " state = COALESCE(s.ends_as, r.state),"
            " output = CASE WHEN s.ends_as IS NULL THEN r.output ELSE s.output END,"
            " error = CASE WHEN s.ends_as IS NULL THEN r.error ELSE s.error END,"
            " worker_id = CASE WHEN s.ends_as IS NULL THEN r.worker_id END,"
            " wake_at = CASE WHEN s.ends_as IS NULL THEN r.wake_at END,"
            " ready_at = CASE WHEN s.ends_as IS NULL THEN r.ready_at END,"
            " announced_at = CASE WHEN s.ends_as IS NULL THEN r.announced_at END,"
            " announce_count = CASE WHEN s.ends_as IS NULL THEN r.announce_count ELSE 0 END"
            " FROM step s WHERE r.id = s.run_id AND r.id IN (SELECT id FROM locked) AND r.state = 'running'"
            " AND r.revision = s.revision"
            " AND r.worker_id = s.worker_id AND r.checkpoint_seq = s.seq - 1"
            " AND (s.ends_as IS NULL OR r.parent_id IS NULL) RETURNING r.id),"
            " history AS (INSERT INTO run_history (run_id, at, state, detail)"
            " SELECT s.run_id, s.now, s.ends_as, s.detail FROM step s JOIN run ON run.id = s.run_id"
            " WHERE s.ends_as IS NOT NULL),"
            " calls AS (INSERT INTO task_calls (run_id, address, name, state, attempts, output, error, retry_at,"
            " created_at, updated_at) SELECT t.run_id, t.address, t.name, t.state, t.attempts, t.output, t.error,"
            " t.retry_at, s.now, s.now FROM unnest($11::text[], $12::text[], $13::text[], $14::text[], $15::int[],"
            " $16::text[], $17::text[], $18::bigint[]) WITH ORDINALITY"
            " AS t(run_id, address, name, state, attempts, output, error, retry_at, n)"
            " JOIN step s ON s.run_id = t.run_id JOIN run ON run.id = t.run_id ORDER BY t.n)"
            " SELECT id FROM run"
        )
        async with self.backend.statement() as tx:
            applied = {row[0] for row in await tx.fetch(sql, *args)}
        return [s.run_id in applied for s in steps]

    async def heartbeat(self, worker_id: str, runs: list[tuple[str, int]], claim_expires_at_ms: int) -> list[str]:
        if not runs:
            return []
        async with self.backend.transaction() as tx:
            held = await tx.fetch(
                "UPDATE runs SET claim_expires_at = $1 WHERE id IN (SELECT id FROM runs WHERE id = ANY($2)"
                " AND worker_id = $3 AND state = 'running' ORDER BY id FOR UPDATE) RETURNING id, revision",
                claim_expires_at_ms,
                [run_id for run_id, _ in runs],
                worker_id,
            )
        still_held = {(run_id, rev) for run_id, rev in held}
        return [run_id for run_id, rev in runs if (run_id, rev) not in still_held]

    async def release_worker(self, worker_id: str, now_ms: int) -> list[str]:
        async with self.backend.transaction() as tx:
            return await _requeue_running(tx, "worker_id = $3", worker_id, now_ms, "released")

    async def release_expired_claims(self, now_ms: int) -> list[str]:
        async with self.backend.transaction() as tx:
            return await _requeue_running(tx, "claim_expires_at < $3", now_ms, now_ms, "claim expired")

    async def promote_due(self, now_ms: int) -> list[str]:
        async with self.backend.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE runs SET state = 'queued', wake_at = NULL, ready_at = $1, updated_at = $1, announced_at = NULL,"
                " announce_count = 0 WHERE id IN (SELECT id FROM runs WHERE wake_at <= $1 AND state = ANY($2)"
                " ORDER BY wake_at LIMIT 1000 FOR UPDATE SKIP LOCKED) RETURNING id, queue",
                now_ms,
                _TIMED,
            )
            await _history(tx, [r[0] for r in rows], now_ms, RunState.QUEUED)
            return [r[1] for r in rows]

    async def next_wake_at(self) -> int | None:
        async with self.backend.transaction(readonly=True) as tx:
            row = await tx.fetchrow(
                "SELECT MIN(wake_at) FROM runs WHERE wake_at IS NOT NULL AND state = ANY($1)", _TIMED
            )
        return row[0] if row else None

    async def publish_ready(
        self,
        now_ms: int,
        republish_after_ms: int,
        limit: int,
        publish: Callable[[list[tuple[str, str]]], Awaitable[None]],
    ) -> int:
        """Hand ready runs to `publish` (their (id, queue)) and mark them published, in one
        transaction: if publishing fails, nothing is marked. A run is published when it has not been
        since it was queued, or again when its last message may be lost (Redis flushed or restarted):
        `republish_after_ms` after the last time, doubling with each republication up to 64×."""
        async with self.backend.transaction() as tx:
            rows = await tx.fetch(
                "SELECT id, queue FROM runs WHERE state = 'queued' AND (announced_at IS NULL"
                " OR announced_at < CAST($1 AS BIGINT) - CAST($2 AS BIGINT) * (CASE WHEN announce_count > 6 THEN 64"
                " ELSE 1 << announce_count END))"
                " ORDER BY ready_at LIMIT $3 FOR UPDATE SKIP LOCKED",
                now_ms,
                republish_after_ms,
                limit,
            )
            if not rows:
                return 0
            ready = [(r[0], r[1]) for r in rows]
            await publish(ready)
            await tx.execute(
                "UPDATE runs SET announced_at = $1, announce_count = announce_count + 1 WHERE id = ANY($2)",
                now_ms,
                [run_id for run_id, _ in ready],
            )
            return len(ready)

    async def unpublish(self, run_ids: list[str]) -> None:
        async with self.backend.transaction() as tx:
            await tx.execute(
                "UPDATE runs SET announced_at = NULL, announce_count = 0 WHERE id IN (SELECT id FROM runs"
                " WHERE id = ANY($1) AND state = 'queued' ORDER BY id FOR UPDATE)",
                run_ids,
            )

    # -- what happens to a run from outside ------------------------------------------------------

    async def send_event(
        self, run_id: str, name: str, data_json: str, reference_id: str | None, now_ms: int
    ) -> tuple[int, bool, list[str]]:
        """Store an event for a run; returns (event id, duplicate, queues to notify). The earliest
        pending wait for that name receives it, and a suspended run is queued."""
        async with self.backend.transaction() as tx:
            state = await _lock_run(tx, run_id)
            if reference_id is not None:
                row = await tx.fetchrow(
                    "SELECT id FROM events WHERE run_id = $1 AND reference_id = $2", run_id, reference_id
                )
                if row is not None:
                    return row[0], True, []
            if state in TERMINAL_STATES:
                raise errors.conflict(f"run {run_id} is {state}: it receives no more events")
            event_id = (
                await tx.fetchrow(
                    "INSERT INTO events (run_id, name, data, reference_id, created_at) VALUES ($1, $2, $3, $4, $5)"
                    " RETURNING id",
                    run_id,
                    name,
                    data_json,
                    reference_id,
                    now_ms,
                )
            )[0]
            wait = await tx.fetchrow(
                "SELECT id FROM waits WHERE run_id = $1 AND kind = 'event' AND name = $2 AND state = 'pending'"
                " ORDER BY seq LIMIT 1",
                run_id,
                name,
            )
            if wait is None:
                return event_id, False, []
            await _receive(tx, wait[0], event_id, now_ms)
            return event_id, False, await _wake(tx, [run_id], now_ms)

    async def wakeup(self, run_id: str, now_ms: int) -> list[str]:
        """End the run's pending sleeps now; returns queues to notify."""
        async with self.backend.transaction() as tx:
            if await _lock_run(tx, run_id) in TERMINAL_STATES:
                return []
            await tx.execute(
                "UPDATE waits SET state = 'done', resolved_at = $1 WHERE run_id = $2 AND kind = 'sleep'"
                " AND state = 'pending'",
                now_ms,
                run_id,
            )
            return await _wake(tx, [run_id], now_ms)

    async def pause(self, run_id: str, now_ms: int) -> None:
        async with self.backend.transaction() as tx:
            state = await _lock_run(tx, run_id)
            if state is RunState.PAUSED:
                return
            changed = await tx.execute(
                "UPDATE runs SET state = 'paused', revision = revision + 1, worker_id = NULL, claim_expires_at = NULL,"
                " ready_at = NULL, updated_at = $1 WHERE id = $2 AND state = ANY($3)",
                now_ms,
                run_id,
                _PAUSABLE,
            )
            if changed == 0:
                raise errors.conflict(f"run {run_id} is {state}: it cannot be paused")
            await _history(tx, [run_id], now_ms, RunState.PAUSED)

    async def resume(self, run_id: str, now_ms: int) -> list[str]:
        async with self.backend.transaction() as tx:
            state = await _lock_run(tx, run_id)
            if state is not RunState.PAUSED:
                raise errors.conflict(f"run {run_id} is {state}, not paused")
            # Replay re-derives what the run waits for; deadlines still pending suspend it again.
            row = await tx.fetchrow(
                "UPDATE runs SET state = 'queued', wake_at = NULL, ready_at = $1, updated_at = $1, announced_at = NULL,"
                " announce_count = 0 WHERE id = $2 RETURNING queue",
                now_ms,
                run_id,
            )
            await _history(tx, [run_id], now_ms, RunState.QUEUED, _json_error("Resumed", "resumed"))
            return [row[0]]

    async def cancel_run(self, run_id: str, reason: str | None, now_ms: int) -> Effects:
        async with self.backend.transaction() as tx:
            return await _cancel_tree(tx, run_id, reason or "cancelled", now_ms)

    # -- schedules ----------------------------------------------------------------------------------

    async def insert_schedule(self, schedule: Schedule) -> tuple[Schedule, bool]:
        async with self.backend.transaction() as tx:
            if schedule.reference_id is not None:
                existing = await _one_schedule(tx, "reference_id = $1", schedule.reference_id)
                if existing is not None:
                    if _settings(existing) != _settings(schedule):
                        raise errors.conflict(
                            f"reference_id {schedule.reference_id!r} already names schedule {existing.id} "
                            "with other settings"
                        )
                    return existing, False
            values = dataclasses.astuple(schedule)
            marks = ", ".join(f"${i}" for i in range(1, len(values) + 2))
            await tx.execute(
                f"INSERT INTO schedules ({_SCHEDULE_COLUMNS}, updated_at) VALUES ({marks})",
                *values,
                schedule.created_at_ms,
            )
            return schedule, True

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        async with self.backend.transaction(readonly=True) as tx:
            return await _one_schedule(tx, "id = $1", schedule_id)

    async def list_schedules(self) -> list[Schedule]:
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.fetch(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY created_at, id")
        return [Schedule(*r) for r in rows]

    async def set_schedule_state(self, schedule_id: str, state: str, next_fire_at_ms: int | None, now_ms: int) -> None:
        async with self.backend.transaction() as tx:
            changed = await tx.execute(
                "UPDATE schedules SET state = $1, next_fire_at = $2, updated_at = $3 WHERE id = $4",
                state,
                next_fire_at_ms,
                now_ms,
                schedule_id,
            )
        if changed == 0:
            raise errors.not_found(f"no schedule with id {schedule_id!r}")

    async def delete_schedule(self, schedule_id: str) -> None:
        async with self.backend.transaction() as tx:
            if await tx.execute("DELETE FROM schedules WHERE id = $1", schedule_id) == 0:
                raise errors.not_found(f"no schedule with id {schedule_id!r}")

    async def due_schedules(self, now_ms: int) -> list[Schedule]:
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE state = 'active' AND next_fire_at <= $1"
                " ORDER BY next_fire_at LIMIT 100",
                now_ms,
            )
        return [Schedule(*r) for r in rows]

    async def next_schedule_fire_at(self) -> int | None:
        async with self.backend.transaction(readonly=True) as tx:
            row = await tx.fetchrow("SELECT MIN(next_fire_at) FROM schedules WHERE state = 'active'")
        return row[0] if row else None

    async def fire_schedule(
        self, schedule: Schedule, next_fire_at_ms: int | None, run: NewRun | None, skipped: bool, now_ms: int
    ) -> tuple[Run | None, Effects]:
        async with self.backend.transaction() as tx:
            changed = await tx.execute(
                "UPDATE schedules SET next_fire_at = $1, skipped = skipped + $2, updated_at = $3"
                " WHERE id = $4 AND state = 'active' AND next_fire_at = $5",
                next_fire_at_ms,
                int(skipped),
                now_ms,
                schedule.id,
                schedule.next_fire_at_ms,
            )
            effects = Effects()
            if changed == 0 or run is None:
                return None, effects  # fired by another server meanwhile, or skipped
            if schedule.overlap == "cancel_previous" and schedule.last_run_id is not None:
                effects = await _cancel_tree(
                    tx, schedule.last_run_id, "cancelled by the next run of its schedule", now_ms
                )
            started = await _insert_run(tx, run, now_ms)
            await tx.execute(
                "UPDATE schedules SET last_run_id = $1, fired = fired + 1 WHERE id = $2", started.id, schedule.id
            )
            effects.queued.append(started.queue)
            return started, effects

    # -- listing (read-only: the CLI and operators) -----------------------------------------------

    async def list_runs(
        self,
        *,
        workflow: str | None,
        states: Sequence[str],
        reference_id: str | None,
        limit: int,
        before: tuple[int, str] | None,
    ) -> list[Run]:
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if workflow is not None:
            where.append(f"workflow = {arg(workflow)}")
        if states:
            where.append(f"state = ANY({arg(list(states))})")
        if reference_id is not None:
            where.append(f"reference_id = {arg(reference_id)}")
        if before is not None:
            # Keyset paging on (created_at, id): stable while new runs arrive, unlike OFFSET.
            at, last_id = arg(before[0]), arg(before[1])
            where.append(f"(created_at < {at} OR (created_at = {at} AND id < {last_id}))")
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created_at DESC, id DESC LIMIT {arg(limit)}"
        async with self.backend.transaction(readonly=True) as tx:
            return [_run(r) for r in await tx.fetch(sql, *args)]

    async def workflow_counts(self) -> list[tuple[str, str, str, int]]:
        async with self.backend.transaction(readonly=True) as tx:
            rows = await tx.fetch(
                "SELECT workflow, version, state, COUNT(*) FROM runs GROUP BY workflow, version, state"
                " ORDER BY workflow, version, state"
            )
        return [(w, v, s, int(n)) for w, v, s, n in rows]


# -- helpers: each runs inside the caller's transaction ------------------------------------------


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json_error(kind: str, message: str) -> str:
    return _json({"type": kind, "message": message})


def _run(row: Sequence[Any]) -> Run:
    return Run(
        id=row[0],
        workflow=row[1],
        version=row[2],
        state=RunState(row[3]),
        revision=row[4],
        input_json=row[5],
        input_hash=row[6],
        output_json=row[7],
        error_json=row[8],
        attempts=row[9],
        reference_id=row[10],
        shard_key=row[11],
        parent_id=row[12],
        wake_at_ms=row[13],
        worker_id=row[14],
        created_at_ms=row[15],
        updated_at_ms=row[16],
    )


def _task(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[0],
        "address": row[1],
        "name": row[2],
        "state": row[3],
        "attempts": row[4],
        "output": row[5],
        "error": row[6],
        "retry_at_ms": row[7],
    }


def _wait(row: Sequence[Any]) -> dict[str, Any]:
    kind, name, seq, state, deadline, data = row
    return {"kind": kind, "name": name, "seq": seq, "state": state, "deadline_ms": deadline, "data": data}


def _settings(s: Schedule) -> tuple[Any, ...]:
    """What makes two schedule requests the same schedule."""
    return (s.workflow, s.version, s.input_hash, s.cron, s.tz, s.every_ms, s.overlap)


async def _one_run(tx: Tx, where: str, *args: Any) -> Run | None:
    row = await tx.fetchrow(f"SELECT {_RUN_COLUMNS} FROM runs WHERE {where}", *args)
    return _run(row) if row else None


async def _one_schedule(tx: Tx, where: str, *args: Any) -> Schedule | None:
    row = await tx.fetchrow(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE {where}", *args)
    return Schedule(*row) if row else None


async def _lock_run(tx: Tx, run_id: str) -> RunState:
    """The run's state, with its row locked until the transaction ends (serializes the writers
    of one run: a worker's checkpoint, an event, a wakeup)."""
    row = await tx.fetchrow("SELECT state FROM runs WHERE id = $1 FOR UPDATE", run_id)
    if row is None:
        raise errors.not_found(f"no run with id {run_id!r}")
    return RunState(row[0])


async def _history(tx: Tx, ids: list[str], now_ms: int, state: str, detail: str | None = None) -> None:
    if ids:
        await tx.executemany(
            "INSERT INTO run_history (run_id, at, state, detail) VALUES ($1, $2, $3, $4)",
            [(i, now_ms, str(state), detail) for i in ids],
        )


_INSERT_RUN = (
    "INSERT INTO runs (id, workflow, version, queue, state, input, input_hash, reference_id, shard_key, parent_id,"
    " wake_at, ready_at, created_at, updated_at, announced_at, announce_count)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15)"
)


def _new_run_values(new: NewRun, now_ms: int, published: bool) -> tuple[Any, ...]:
    """The values of _INSERT_RUN: a run due now is queued (and, if `published`, marked so)."""
    due = new.wake_at_ms is None or new.wake_at_ms <= now_ms
    published = published and due
    return (
        new.id,
        new.workflow,
        new.version,
        queue_key(new.workflow, new.version, new.shard_key),
        (RunState.QUEUED if due else RunState.SCHEDULED).value,
        new.input_json,
        new.input_hash,
        new.reference_id,
        new.shard_key,
        new.parent_id,
        None if due else new.wake_at_ms,
        now_ms if due else None,
        now_ms,
        now_ms if published else None,
        1 if published else 0,
    )


async def _insert_run(tx: Tx, new: NewRun, now_ms: int, *, published: bool = False) -> Run:
    run = _run(await tx.fetchrow(f"{_INSERT_RUN} RETURNING {_RUN_COLUMNS}", *_new_run_values(new, now_ms, published)))
    await _history(tx, [run.id], now_ms, run.state)
    return run


async def _insert_run_in_one_statement(tx: Tx, new: NewRun, now_ms: int, *, published: bool) -> Run | None:
    """_insert_run as one PostgreSQL statement, which inserts nothing (None) on any clash of ids."""
    row = await tx.fetchrow(
        f"WITH run AS ({_INSERT_RUN} ON CONFLICT DO NOTHING RETURNING {_RUN_COLUMNS}), history AS"
        " (INSERT INTO run_history (run_id, at, state) SELECT id, $13, state FROM run) SELECT * FROM run",
        *_new_run_values(new, now_ms, published),
    )
    return _run(row) if row else None


async def _insert_child(tx: Tx, parent_id: str, child: NewChild, now_ms: int) -> None:
    new = NewRun(
        id=child.id,
        workflow=child.workflow,
        version=child.version,
        input_json=child.input_json,
        input_hash=child.input_hash,
        reference_id=None,
        shard_key=None,
        parent_id=parent_id,
        wake_at_ms=None,
    )
    try:
        await _insert_run(tx, new, now_ms)
    except UniqueViolation:
        raise errors.conflict(f"run id {child.id!r} is already taken") from None


async def _record_task(tx: Tx, run_id: str, t: TaskOutcome, now_ms: int) -> None:
    if t.id is None:
        await tx.execute(
            "INSERT INTO task_calls (run_id, address, name, state, attempts, output, error, retry_at, created_at,"
            " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
            run_id,
            t.address,
            t.name,
            t.state,
            t.attempts,
            t.output_json,
            t.error_json,
            t.retry_at_ms,
            now_ms,
        )
        return
    changed = await tx.execute(
        "UPDATE task_calls SET state = $1, attempts = $2, output = $3, error = $4, retry_at = $5, updated_at = $6"
        " WHERE id = $7 AND run_id = $8 AND address = $9 AND state = $10",
        t.state,
        t.attempts,
        t.output_json,
        t.error_json,
        t.retry_at_ms,
        now_ms,
        t.id,
        run_id,
        t.address,
        TaskState.RETRYING.value,
    )
    if changed == 0:
        raise errors.conflict(f"task call {t.id} of run {run_id} is not awaiting a retry")


async def _read_records(tx: Tx, claimed: list[Claimed], now_ms: int) -> None:
    """What the runs just claimed recorded before: task calls, waits (those due now resolved here,
    where waits are observed, once and for all) and child runs. A run claimed for the first time
    (revision 1) has none: they are all written by checkpoints of a claim holder."""
    by_id = {c.run.id: c for c in claimed if c.run.revision > 1}
    if not by_id:
        return
    ids = list(by_id)
    await tx.execute(
        "UPDATE waits SET state = CASE kind WHEN 'sleep' THEN 'done' ELSE 'timed_out' END, resolved_at = $1"
        " WHERE run_id = ANY($2) AND state = 'pending' AND deadline <= $1",
        now_ms,
        ids,
    )
    for row in await tx.fetch(
        f"SELECT run_id, {_TASK_COLUMNS} FROM task_calls WHERE run_id = ANY($1) AND state != 'superseded' ORDER BY id",
        ids,
    ):
        by_id[row[0]].tasks.append(_task(row[1:]))
    for row in await tx.fetch(
        "SELECT w.run_id, w.kind, w.name, w.seq, w.state, w.deadline, e.data FROM waits w"
        " LEFT JOIN events e ON e.id = w.event_id WHERE w.run_id = ANY($1) ORDER BY w.id",
        ids,
    ):
        by_id[row[0]].waits.append(_wait(row[1:]))
    for parent_id, child_id, state, output, error in await tx.fetch(
        "SELECT parent_id, id, state, output, error FROM runs WHERE parent_id = ANY($1)", ids
    ):
        by_id[parent_id].children.append({"id": child_id, "state": state, "output": output, "error": error})


async def _requeue_running(tx: Tx, where: str, arg: Any, now_ms: int, why: str) -> list[str]:
    rows = await tx.fetch(
        "UPDATE runs SET state = 'queued', revision = revision + 1, worker_id = NULL, claim_expires_at = NULL,"
        " ready_at = $1, updated_at = $2, announced_at = NULL, announce_count = 0 WHERE id IN (SELECT id FROM runs WHERE state = 'running' AND "
        f"{where} FOR UPDATE SKIP LOCKED) RETURNING id, queue",
        now_ms,
        now_ms,
        arg,
    )
    await _history(tx, [r[0] for r in rows], now_ms, RunState.QUEUED, _json_error("ClaimReleased", why))
    return [r[1] for r in rows]


async def _wake(tx: Tx, run_ids: list[str], now_ms: int) -> list[str]:
    """Something these runs may wait for happened: queue the suspended ones; a running one is
    flagged so that its worker's next suspension requeues it instead. Returns queues to notify.

    The rows are locked first, whatever their state: a run that is queued right now may be claimed
    before this transaction commits, and that claim (and the reads and the suspension that follow
    it) must wait for this news rather than miss it."""
    await tx.fetch("SELECT id FROM runs WHERE id = ANY($1) ORDER BY id FOR UPDATE", run_ids)
    rows = await tx.fetch(
        "UPDATE runs SET state = 'queued', wake_at = NULL, ready_at = $1, updated_at = $1, announced_at = NULL,"
        " announce_count = 0 WHERE id = ANY($2) AND state = ANY($3) RETURNING id, queue",
        now_ms,
        run_ids,
        _SUSPENDED,
    )
    await _history(tx, [r[0] for r in rows], now_ms, RunState.QUEUED)
    await tx.execute("UPDATE runs SET wake_requested = 1 WHERE id = ANY($1) AND state = 'running'", run_ids)
    return [r[1] for r in rows]


async def _receive(tx: Tx, wait_id: int, event_id: int, now_ms: int) -> None:
    await tx.execute(
        "UPDATE waits SET state = 'received', event_id = $1, resolved_at = $2 WHERE id = $3", event_id, now_ms, wait_id
    )
    await tx.execute("UPDATE events SET wait_id = $1 WHERE id = $2", wait_id, event_id)


async def _record_wait(tx: Tx, run_id: str, w: NewWait, now_ms: int) -> bool:
    """Insert a wait the worker recorded. A new pending event wait receives the earliest event of
    its name that no wait has received yet; returns True when it did (the run must not suspend)."""
    try:
        row = await tx.fetchrow(
            "INSERT INTO waits (run_id, kind, name, seq, state, deadline, created_at, resolved_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            run_id,
            w.kind,
            w.name,
            w.seq,
            w.state,
            w.deadline_ms,
            now_ms,
            None if w.state == WaitState.PENDING else now_ms,
        )
    except UniqueViolation:
        raise errors.conflict(f"run {run_id} already recorded {w.kind} wait {w.name!r} #{w.seq}") from None
    wait_id = row[0]
    if w.kind != WaitKind.EVENT:
        return False
    if w.state == WaitState.RECEIVED:
        changed = await tx.execute(
            "UPDATE events SET wait_id = $1 WHERE id = $2 AND run_id = $3 AND name = $4 AND wait_id IS NULL",
            wait_id,
            w.event_id,
            run_id,
            w.name,
        )
        if changed == 0:
            raise errors.conflict(f"event {w.event_id} of run {run_id} is not an unreceived {w.name!r} event")
        await tx.execute("UPDATE waits SET event_id = $1 WHERE id = $2", w.event_id, wait_id)
        return False
    event = await tx.fetchrow(
        "SELECT id FROM events WHERE run_id = $1 AND name = $2 AND wait_id IS NULL ORDER BY id LIMIT 1", run_id, w.name
    )
    if event is None:
        return False
    await _receive(tx, wait_id, event[0], now_ms)
    return True


async def _any_finished(tx: Tx, parent_id: str, child_ids: Sequence[str]) -> bool:
    if not child_ids:
        return False
    row = await tx.fetchrow(
        "SELECT 1 FROM runs WHERE parent_id = $1 AND id = ANY($2) AND state = ANY($3) LIMIT 1",
        parent_id,
        list(child_ids),
        _TERMINAL,
    )
    return row is not None


async def _cancel_tree(tx: Tx, run_id: str, reason: str, now_ms: int) -> Effects:
    """Cancel the run and its unfinished descendants, waking a parent that may await the run."""
    row = await tx.fetchrow("SELECT parent_id FROM runs WHERE id = $1", run_id)
    if row is None:
        raise errors.not_found(f"no run with id {run_id!r}")
    error = _json_error("RunCancelled", reason)
    rows = await tx.fetch(
        "WITH RECURSIVE tree(id) AS (SELECT CAST($1 AS TEXT) UNION ALL"
        " SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id)"
        " UPDATE runs SET state = 'cancelled', revision = revision + 1, error = $2, worker_id = NULL,"
        " claim_expires_at = NULL, wake_at = NULL, ready_at = NULL, updated_at = $3"
        " WHERE id IN (SELECT id FROM tree) AND state = ANY($4) RETURNING id",
        run_id,
        error,
        now_ms,
        _CANCELLABLE,
    )
    effects = Effects(finished=[r[0] for r in rows])
    await _history(tx, effects.finished, now_ms, RunState.CANCELLED, error)
    if run_id in effects.finished and row[0] is not None:
        effects.queued = await _wake(tx, [row[0]], now_ms)
    return effects
