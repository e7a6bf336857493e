"""The SQLite store: the embedded default, one file, no other process.

All SQL runs on one dedicated thread that owns the connection, and each store method is one
function executed there inside one `BEGIN IMMEDIATE` transaction: one thread hop per operation
(not per statement), and operations are serialized, so the read-check-write steps inside one are
atomic. WAL journal with `synchronous=FULL`: a committed checkpoint survives a power cut, not only
a process crash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from aiki_client.wire import SUSPENDED_STATES, TERMINAL_STATES, RunState, TaskState, WaitKind, WaitState

from .. import errors
from ..state_machine import TIMED_STATES, sources
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
from .sqlite_schema import MIGRATIONS

T = TypeVar("T")

_RUN_COLUMNS = (
    "id, workflow, version, state, revision, input, input_hash, output, error, attempts, reference_id, "
    "shard_key, parent_id, wake_at, worker_id, created_at, updated_at"
)
_TASK_COLUMNS = "id, address, name, state, attempts, output, error, retry_at"


def _in(values: Iterable[str]) -> tuple[str, list[str]]:
    vals = list(values)
    return ",".join("?" * len(vals)), vals


def _run(row: tuple[Any, ...]) -> Run:
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


def _task(row: tuple[Any, ...]) -> dict[str, Any]:
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


def path_from_url(url: str) -> str:
    """`sqlite:///relative/or/./path.db`, `sqlite:////abs/path.db` or `sqlite:///:memory:`."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a SQLite URL (want sqlite:///path/to/file.db): {url!r}")
    path = url[len("sqlite:///") :]
    if not path:
        raise ValueError(f"SQLite URL without a file path: {url!r}")
    return path


class SqliteStore:
    def __init__(self, url: str) -> None:
        self.path = path_from_url(url)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aiki-sqlite")
        self._conn: sqlite3.Connection | None = None

    # -- plumbing -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._in_transaction, fn)

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise errors.StoreUnavailable("the SQLite store is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = fn(conn)
            conn.execute("COMMIT")
            return result
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def open(self) -> None:
        def connect() -> None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            self._conn = conn
            self._migrate(conn)

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
            )
            applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            for version, script in MIGRATIONS:
                if version in applied:
                    continue
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, int(time.time() * 1000)),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._call(lambda c: c.execute("SELECT 1").fetchone())

    # -- runs -------------------------------------------------------------------------------------

    async def insert_run(self, new: NewRun, now_ms: int) -> tuple[Run, bool]:
        def insert(c: sqlite3.Connection) -> tuple[Run, bool]:
            existing = None
            if new.reference_id is not None:
                existing = _one_run(c, "workflow = ? AND reference_id = ?", (new.workflow, new.reference_id))
                if existing is not None and (existing.version, existing.input_hash) != (new.version, new.input_hash):
                    raise errors.conflict(
                        f"reference_id {new.reference_id!r} of workflow {new.workflow!r} already names run "
                        f"{existing.id} with a different {'version' if existing.version != new.version else 'input'}"
                    )
            if existing is None:
                existing = _one_run(c, "id = ?", (new.id,))
                if existing is not None and (existing.workflow, existing.version, existing.input_hash) != (
                    new.workflow,
                    new.version,
                    new.input_hash,
                ):
                    raise errors.conflict(f"run id {new.id!r} is already taken by another run")
            if existing is not None:
                return existing, False
            return _insert_new_run(c, new, now_ms), True

        return await self._call(insert)

    async def get_run(self, run_id: str) -> Run | None:
        return await self._call(lambda c: _one_run(c, "id = ?", (run_id,)))

    async def find_run_by_reference(self, workflow: str, reference_id: str) -> Run | None:
        return await self._call(lambda c: _one_run(c, "workflow = ? AND reference_id = ?", (workflow, reference_id)))

    async def list_history(self, run_id: str) -> list[dict[str, Any]]:
        rows = await self._call(
            lambda c: c.execute(
                "SELECT at, state, detail FROM run_history WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
        )
        return [{"at_ms": at, "state": state, "detail": detail} for at, state, detail in rows]

    async def list_tasks(self, run_id: str) -> list[dict[str, Any]]:
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT {_TASK_COLUMNS} FROM task_calls WHERE run_id = ? ORDER BY id", (run_id,)
            ).fetchall()
        )
        return [_task(r) for r in rows]

    # -- claims -----------------------------------------------------------------------------------

    async def claim_runs(
        self, worker_id: str, queues: list[str], limit: int, now_ms: int, claim_expires_at_ms: int
    ) -> list[Claimed]:
        marks, values = _in(queues)

        def claim(c: sqlite3.Connection) -> list[Claimed]:
            rows = c.execute(
                "UPDATE runs SET state = 'running', revision = revision + 1, worker_id = ?, claim_expires_at = ?,"
                " checkpoint_seq = 0, ready_at = NULL, wake_requested = 0, updated_at = ?"
                " WHERE id IN (SELECT id FROM runs WHERE state = 'queued' AND queue IN (" + marks + ")"
                " ORDER BY ready_at LIMIT ?)"
                f" RETURNING {_RUN_COLUMNS}",
                (worker_id, claim_expires_at_ms, now_ms, *values, limit),
            ).fetchall()
            if not rows:
                return []
            runs = [_run(r) for r in rows]
            _history(c, [r.id for r in runs], now_ms, RunState.RUNNING, orjson.dumps({"worker_id": worker_id}).decode())
            id_marks, ids = _in(r.id for r in runs)
            # The claim is where waits are observed: what is due now is resolved, once and for all.
            c.execute(
                f"UPDATE waits SET state = CASE kind WHEN 'sleep' THEN 'done' ELSE 'timed_out' END, resolved_at = ?"
                f" WHERE run_id IN ({id_marks}) AND state = 'pending' AND deadline <= ?",
                (now_ms, *ids, now_ms),
            )
            history = {r.id: Claimed(r, []) for r in runs}
            for row in c.execute(
                f"SELECT run_id, {_TASK_COLUMNS} FROM task_calls WHERE run_id IN ({id_marks})"
                " AND state != 'superseded' ORDER BY id",
                ids,
            ):
                history[row[0]].tasks.append(_task(row[1:]))
            for run_id, *wait in c.execute(
                "SELECT w.run_id, w.kind, w.name, w.seq, w.state, w.deadline, e.data FROM waits w"
                f" LEFT JOIN events e ON e.id = w.event_id WHERE w.run_id IN ({id_marks}) ORDER BY w.id",
                ids,
            ):
                history[run_id].waits.append(_wait(wait))
            for run_id, event_id, name, data in c.execute(
                f"SELECT run_id, id, name, data FROM events WHERE run_id IN ({id_marks}) AND wait_id IS NULL ORDER BY id",
                ids,
            ):
                history[run_id].events.append({"id": event_id, "name": name, "data": data})
            for parent_id, child_id, state, output, error in c.execute(
                f"SELECT parent_id, id, state, output, error FROM runs WHERE parent_id IN ({id_marks})", ids
            ):
                history[parent_id].children.append({"id": child_id, "state": state, "output": output, "error": error})
            return list(history.values())

        return await self._call(claim)

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
        def apply(c: sqlite3.Connection) -> Effects:
            effects = Effects()
            row = c.execute(
                "SELECT state, revision, worker_id, checkpoint_seq, wake_requested, parent_id FROM runs WHERE id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                raise errors.not_found(f"no run with id {run_id!r}")
            state, current_revision, holder, applied_seq, wake_requested, parent_id = row
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
                _record_task(c, run_id, t, now_ms)
            for child in children:
                _insert_child(c, run_id, child, now_ms)
                effects.queued.append(queue_key(child.workflow, child.version))
            received_now = any([_record_wait(c, run_id, w, now_ms) for w in waits])
            if then is None:
                c.execute(
                    "UPDATE runs SET checkpoint_seq = ?, claim_expires_at = ?, updated_at = ? WHERE id = ?",
                    (seq, claim_expires_at_ms, now_ms, run_id),
                )
                return effects
            next_state, wake_at = then.state, then.wake_at_ms
            if next_state in SUSPENDED_STATES and (
                wake_requested or received_now or _any_finished(c, run_id, then.waiting_on)
            ):
                # What the run would wait for has already happened: it goes straight back to work.
                next_state, wake_at = RunState.QUEUED, None
                effects.queued.append(_queue_of(c, run_id))
            attempts_step = 0
            if next_state is RunState.AWAITING_RETRY and then.error_json is not None:
                # A whole-run retry: failed calls run afresh next time, completed ones stay recorded.
                attempts_step = 1
                c.execute(
                    "UPDATE task_calls SET state = 'superseded', updated_at = ? WHERE run_id = ? AND state = 'failed'",
                    (now_ms, run_id),
                )
            c.execute(
                "UPDATE runs SET state = ?, output = ?, error = ?, wake_at = ?, attempts = attempts + ?,"
                " ready_at = ?, worker_id = NULL, claim_expires_at = NULL, checkpoint_seq = ?, updated_at = ?"
                " WHERE id = ?",
                (
                    next_state,
                    then.output_json,
                    then.error_json,
                    wake_at if next_state in TIMED_STATES else None,
                    attempts_step,
                    now_ms if next_state is RunState.QUEUED else None,
                    seq,
                    now_ms,
                    run_id,
                ),
            )
            _history(c, [run_id], now_ms, next_state, then.detail_json or then.error_json)
            if next_state in TERMINAL_STATES:
                effects.finished.append(run_id)
                if parent_id is not None:
                    effects.queued.extend(_wake(c, [parent_id], now_ms))
            effects.wake_at_ms = wake_at
            return effects

        return await self._call(apply)

    # -- what happens to a run from outside ------------------------------------------------------

    async def send_event(
        self, run_id: str, name: str, data_json: str, reference_id: str | None, now_ms: int
    ) -> tuple[int, bool, list[str]]:
        """Store an event for a run; returns (event id, duplicate, queues to notify). The earliest
        pending wait for that name receives it, and a suspended run is queued."""

        def send(c: sqlite3.Connection) -> tuple[int, bool, list[str]]:
            state = _state_of(c, run_id)
            if reference_id is not None:
                row = c.execute(
                    "SELECT id FROM events WHERE run_id = ? AND reference_id = ?", (run_id, reference_id)
                ).fetchone()
                if row is not None:
                    return row[0], True, []
            if state in TERMINAL_STATES:
                raise errors.conflict(f"run {run_id} is {state}: it receives no more events")
            event_id = c.execute(
                "INSERT INTO events (run_id, name, data, reference_id, created_at) VALUES (?,?,?,?,?) RETURNING id",
                (run_id, name, data_json, reference_id, now_ms),
            ).fetchone()[0]
            wait = c.execute(
                "SELECT id FROM waits WHERE run_id = ? AND kind = 'event' AND name = ? AND state = 'pending'"
                " ORDER BY seq LIMIT 1",
                (run_id, name),
            ).fetchone()
            if wait is None:
                return event_id, False, []
            _receive(c, wait[0], event_id, now_ms)
            return event_id, False, _wake(c, [run_id], now_ms)

        return await self._call(send)

    async def wakeup(self, run_id: str, now_ms: int) -> list[str]:
        """End the run's pending sleeps now; returns queues to notify."""

        def wake(c: sqlite3.Connection) -> list[str]:
            if _state_of(c, run_id) in TERMINAL_STATES:
                return []
            c.execute(
                "UPDATE waits SET state = 'done', resolved_at = ? WHERE run_id = ? AND kind = 'sleep'"
                " AND state = 'pending'",
                (now_ms, run_id),
            )
            return _wake(c, [run_id], now_ms)

        return await self._call(wake)

    async def pause(self, run_id: str, now_ms: int) -> None:
        marks, states = _in(sources(RunState.PAUSED))

        def pause(c: sqlite3.Connection) -> None:
            state = _state_of(c, run_id)
            if state is RunState.PAUSED:
                return
            cur = c.execute(
                "UPDATE runs SET state = 'paused', revision = revision + 1, worker_id = NULL, claim_expires_at = NULL,"
                f" ready_at = NULL, updated_at = ? WHERE id = ? AND state IN ({marks})",
                (now_ms, run_id, *states),
            )
            if cur.rowcount == 0:
                raise errors.conflict(f"run {run_id} is {state}: it cannot be paused")
            _history(c, [run_id], now_ms, RunState.PAUSED)

        await self._call(pause)

    async def resume(self, run_id: str, now_ms: int) -> list[str]:
        def resume(c: sqlite3.Connection) -> list[str]:
            state = _state_of(c, run_id)
            if state is not RunState.PAUSED:
                raise errors.conflict(f"run {run_id} is {state}, not paused")
            # Replay re-derives what the run waits for; deadlines still pending suspend it again.
            c.execute(
                "UPDATE runs SET state = 'queued', wake_at = NULL, ready_at = ?, updated_at = ? WHERE id = ?",
                (now_ms, now_ms, run_id),
            )
            _history(c, [run_id], now_ms, RunState.QUEUED, _json_error("Resumed", "resumed"))
            return [_queue_of(c, run_id)]

        return await self._call(resume)

    async def list_waits(self, run_id: str) -> list[dict[str, Any]]:
        rows = await self._call(
            lambda c: c.execute(
                "SELECT w.kind, w.name, w.seq, w.state, w.deadline, e.data FROM waits w"
                " LEFT JOIN events e ON e.id = w.event_id WHERE w.run_id = ? ORDER BY w.id",
                (run_id,),
            ).fetchall()
        )
        return [_wait(r) for r in rows]

    async def heartbeat(self, worker_id: str, runs: list[tuple[str, int]], claim_expires_at_ms: int) -> list[str]:
        def beat(c: sqlite3.Connection) -> list[str]:
            lost = []
            for run_id, revision in runs:
                cur = c.execute(
                    "UPDATE runs SET claim_expires_at = ? WHERE id = ? AND revision = ? AND worker_id = ?"
                    " AND state = 'running'",
                    (claim_expires_at_ms, run_id, revision, worker_id),
                )
                if cur.rowcount == 0:
                    lost.append(run_id)
            return lost

        return await self._call(beat)

    async def release_worker(self, worker_id: str, now_ms: int) -> list[str]:
        return await self._call(lambda c: _requeue_running(c, "worker_id = ?", (worker_id,), now_ms, "released"))

    async def release_expired_claims(self, now_ms: int) -> list[str]:
        return await self._call(
            lambda c: _requeue_running(c, "claim_expires_at < ?", (now_ms,), now_ms, "claim expired")
        )

    async def promote_due(self, now_ms: int) -> list[str]:
        marks, states = _in(TIMED_STATES)

        def promote(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "UPDATE runs SET state = 'queued', wake_at = NULL, ready_at = ?, updated_at = ?"
                f" WHERE wake_at <= ? AND state IN ({marks}) RETURNING id, queue",
                (now_ms, now_ms, now_ms, *states),
            ).fetchall()
            _history(c, [r[0] for r in rows], now_ms, RunState.QUEUED)
            return [r[1] for r in rows]

        return await self._call(promote)

    async def next_wake_at(self) -> int | None:
        marks, states = _in(TIMED_STATES)
        row = await self._call(
            lambda c: c.execute(
                f"SELECT MIN(wake_at) FROM runs WHERE wake_at IS NOT NULL AND state IN ({marks})", states
            ).fetchone()
        )
        return row[0] if row else None

    # -- schedules ----------------------------------------------------------------------------------

    async def insert_schedule(self, schedule: Schedule) -> tuple[Schedule, bool]:
        def insert(c: sqlite3.Connection) -> tuple[Schedule, bool]:
            if schedule.reference_id is not None:
                existing = _one_schedule(c, "reference_id = ?", (schedule.reference_id,))
                if existing is not None:
                    if _settings(existing) != _settings(schedule):
                        raise errors.conflict(
                            f"reference_id {schedule.reference_id!r} already names schedule {existing.id} "
                            "with other settings"
                        )
                    return existing, False
            values = dataclasses.astuple(schedule)
            c.execute(
                f"INSERT INTO schedules ({_SCHEDULE_COLUMNS}, updated_at) VALUES ({','.join('?' * (len(values) + 1))})",
                (*values, schedule.created_at_ms),
            )
            return schedule, True

        return await self._call(insert)

    async def get_schedule(self, schedule_id: str) -> Schedule | None:
        return await self._call(lambda c: _one_schedule(c, "id = ?", (schedule_id,)))

    async def list_schedules(self) -> list[Schedule]:
        rows = await self._call(
            lambda c: c.execute(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY created_at, id").fetchall()
        )
        return [Schedule(*r) for r in rows]

    async def set_schedule_state(self, schedule_id: str, state: str, next_fire_at_ms: int | None, now_ms: int) -> None:
        def update(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE schedules SET state = ?, next_fire_at = ?, updated_at = ? WHERE id = ?",
                (state, next_fire_at_ms, now_ms, schedule_id),
            )
            if cur.rowcount == 0:
                raise errors.not_found(f"no schedule with id {schedule_id!r}")

        await self._call(update)

    async def delete_schedule(self, schedule_id: str) -> None:
        def delete(c: sqlite3.Connection) -> None:
            if c.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,)).rowcount == 0:
                raise errors.not_found(f"no schedule with id {schedule_id!r}")

        await self._call(delete)

    async def due_schedules(self, now_ms: int) -> list[Schedule]:
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE state = 'active' AND next_fire_at <= ?"
                " ORDER BY next_fire_at LIMIT 100",
                (now_ms,),
            ).fetchall()
        )
        return [Schedule(*r) for r in rows]

    async def next_schedule_fire_at(self) -> int | None:
        row = await self._call(
            lambda c: c.execute("SELECT MIN(next_fire_at) FROM schedules WHERE state = 'active'").fetchone()
        )
        return row[0] if row else None

    async def fire_schedule(
        self, schedule: Schedule, next_fire_at_ms: int | None, run: NewRun | None, skipped: bool, now_ms: int
    ) -> tuple[Run | None, Effects]:
        def fire(c: sqlite3.Connection) -> tuple[Run | None, Effects]:
            cur = c.execute(
                "UPDATE schedules SET next_fire_at = ?, skipped = skipped + ?, updated_at = ?"
                " WHERE id = ? AND state = 'active' AND next_fire_at = ?",
                (next_fire_at_ms, int(skipped), now_ms, schedule.id, schedule.next_fire_at_ms),
            )
            effects = Effects()
            if cur.rowcount == 0 or run is None:
                return None, effects  # fired by another server meanwhile, or skipped
            if schedule.overlap == "cancel_previous" and schedule.last_run_id is not None:
                effects = _cancel_tree(c, schedule.last_run_id, "cancelled by the next run of its schedule", now_ms)
            started = _insert_new_run(c, run, now_ms)
            c.execute("UPDATE schedules SET last_run_id = ?, fired = fired + 1 WHERE id = ?", (started.id, schedule.id))
            effects.queued.append(started.queue)
            return started, effects

        return await self._call(fire)

    async def cancel_run(self, run_id: str, reason: str | None, now_ms: int) -> Effects:
        return await self._call(lambda c: _cancel_tree(c, run_id, reason or "cancelled", now_ms))


# -- helpers run on the store thread -----------------------------------------------------------


def _one_run(c: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> Run | None:
    row = c.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE {where}", args).fetchone()
    return _run(row) if row else None


def _history(c: sqlite3.Connection, ids: list[str], now_ms: int, state: str, detail: str | None = None) -> None:
    if ids:
        c.executemany(
            "INSERT INTO run_history (run_id, at, state, detail) VALUES (?,?,?,?)",
            [(i, now_ms, state, detail) for i in ids],
        )


def _record_task(c: sqlite3.Connection, run_id: str, t: TaskOutcome, now_ms: int) -> None:
    if t.id is None:
        c.execute(
            "INSERT INTO task_calls (run_id, address, name, state, attempts, output, error, retry_at, created_at,"
            " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                run_id,
                t.address,
                t.name,
                t.state,
                t.attempts,
                t.output_json,
                t.error_json,
                t.retry_at_ms,
                now_ms,
                now_ms,
            ),
        )
        return
    cur = c.execute(
        "UPDATE task_calls SET state = ?, attempts = ?, output = ?, error = ?, retry_at = ?, updated_at = ?"
        " WHERE id = ? AND run_id = ? AND address = ? AND state = ?",
        (
            t.state,
            t.attempts,
            t.output_json,
            t.error_json,
            t.retry_at_ms,
            now_ms,
            t.id,
            run_id,
            t.address,
            TaskState.RETRYING,
        ),
    )
    if cur.rowcount == 0:
        raise errors.conflict(f"task call {t.id} of run {run_id} is not awaiting a retry")


def _requeue_running(c: sqlite3.Connection, where: str, args: tuple[Any, ...], now_ms: int, why: str) -> list[str]:
    rows = c.execute(
        "UPDATE runs SET state = 'queued', revision = revision + 1, worker_id = NULL, claim_expires_at = NULL,"
        f" ready_at = ?, updated_at = ? WHERE state = 'running' AND {where} RETURNING id, queue",
        (now_ms, now_ms, *args),
    ).fetchall()
    _history(c, [r[0] for r in rows], now_ms, RunState.QUEUED, _json_error("ClaimReleased", why))
    return [r[1] for r in rows]


def _json_error(kind: str, message: str) -> str:
    return orjson.dumps({"type": kind, "message": message}).decode()


def _state_of(c: sqlite3.Connection, run_id: str) -> RunState:
    row = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise errors.not_found(f"no run with id {run_id!r}")
    return RunState(row[0])


def _queue_of(c: sqlite3.Connection, run_id: str) -> str:
    return str(c.execute("SELECT queue FROM runs WHERE id = ?", (run_id,)).fetchone()[0])


def _wake(c: sqlite3.Connection, run_ids: list[str], now_ms: int) -> list[str]:
    """Something these runs may wait for happened: queue the suspended ones; a running one is
    flagged so that its worker's next suspension requeues it instead. Returns queues to notify."""
    marks, ids = _in(run_ids)
    suspended_marks, suspended = _in(SUSPENDED_STATES)
    rows = c.execute(
        "UPDATE runs SET state = 'queued', wake_at = NULL, ready_at = ?, updated_at = ?"
        f" WHERE id IN ({marks}) AND state IN ({suspended_marks}) RETURNING id, queue",
        (now_ms, now_ms, *ids, *suspended),
    ).fetchall()
    _history(c, [r[0] for r in rows], now_ms, RunState.QUEUED)
    c.execute(f"UPDATE runs SET wake_requested = 1 WHERE id IN ({marks}) AND state = 'running'", ids)
    return [r[1] for r in rows]


def _wait(row: Sequence[Any]) -> dict[str, Any]:
    kind, name, seq, state, deadline, data = row
    return {"kind": kind, "name": name, "seq": seq, "state": state, "deadline_ms": deadline, "data": data}


def _receive(c: sqlite3.Connection, wait_id: int, event_id: int, now_ms: int) -> None:
    c.execute(
        "UPDATE waits SET state = 'received', event_id = ?, resolved_at = ? WHERE id = ?", (event_id, now_ms, wait_id)
    )
    c.execute("UPDATE events SET wait_id = ? WHERE id = ?", (wait_id, event_id))


def _record_wait(c: sqlite3.Connection, run_id: str, w: NewWait, now_ms: int) -> bool:
    """Insert a wait the worker recorded. A new pending event wait receives the earliest event of
    its name that no wait has received yet; returns True when it did (the run must not suspend)."""
    try:
        wait_id = c.execute(
            "INSERT INTO waits (run_id, kind, name, seq, state, deadline, created_at, resolved_at)"
            " VALUES (?,?,?,?,?,?,?,?) RETURNING id",
            (run_id, w.kind, w.name, w.seq, w.state, w.deadline_ms, now_ms, None if w.state == "pending" else now_ms),
        ).fetchone()[0]
    except sqlite3.IntegrityError:
        raise errors.conflict(f"run {run_id} already recorded {w.kind} wait {w.name!r} #{w.seq}") from None
    if w.kind != WaitKind.EVENT:
        return False
    if w.state == WaitState.RECEIVED:
        cur = c.execute(
            "UPDATE events SET wait_id = ? WHERE id = ? AND run_id = ? AND name = ? AND wait_id IS NULL",
            (wait_id, w.event_id, run_id, w.name),
        )
        if cur.rowcount == 0:
            raise errors.conflict(f"event {w.event_id} of run {run_id} is not an unreceived {w.name!r} event")
        c.execute("UPDATE waits SET event_id = ? WHERE id = ?", (w.event_id, wait_id))
        return False
    event = c.execute(
        "SELECT id FROM events WHERE run_id = ? AND name = ? AND wait_id IS NULL ORDER BY id LIMIT 1", (run_id, w.name)
    ).fetchone()
    if event is None:
        return False
    _receive(c, wait_id, event[0], now_ms)
    return True


def _insert_child(c: sqlite3.Connection, parent_id: str, child: NewChild, now_ms: int) -> None:
    if c.execute("SELECT 1 FROM runs WHERE id = ?", (child.id,)).fetchone() is not None:
        raise errors.conflict(f"run id {child.id!r} is already taken")
    _insert_new_run(
        c,
        NewRun(
            id=child.id,
            workflow=child.workflow,
            version=child.version,
            input_json=child.input_json,
            input_hash=child.input_hash,
            reference_id=None,
            shard_key=None,
            parent_id=parent_id,
            wake_at_ms=None,
        ),
        now_ms,
    )


def _insert_new_run(c: sqlite3.Connection, new: NewRun, now_ms: int) -> Run:
    due = new.wake_at_ms is None or new.wake_at_ms <= now_ms
    state = RunState.QUEUED if due else RunState.SCHEDULED
    row = c.execute(
        "INSERT INTO runs (id, workflow, version, queue, state, input, input_hash, reference_id, shard_key,"
        " parent_id, wake_at, ready_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
        f" RETURNING {_RUN_COLUMNS}",
        (
            new.id,
            new.workflow,
            new.version,
            queue_key(new.workflow, new.version, new.shard_key),
            state,
            new.input_json,
            new.input_hash,
            new.reference_id,
            new.shard_key,
            new.parent_id,
            None if due else new.wake_at_ms,
            now_ms if due else None,
            now_ms,
            now_ms,
        ),
    ).fetchone()
    _history(c, [new.id], now_ms, state)
    return _run(row)


def _any_finished(c: sqlite3.Connection, parent_id: str, child_ids: Sequence[str]) -> bool:
    if not child_ids:
        return False
    marks, ids = _in(child_ids)
    terminal_marks, terminal = _in(TERMINAL_STATES)
    row = c.execute(
        f"SELECT 1 FROM runs WHERE parent_id = ? AND id IN ({marks}) AND state IN ({terminal_marks}) LIMIT 1",
        (parent_id, *ids, *terminal),
    ).fetchone()
    return row is not None


def _cancel_tree(c: sqlite3.Connection, run_id: str, reason: str, now_ms: int) -> Effects:
    """Cancel the run and its unfinished descendants, waking a parent that may await the run."""
    row = c.execute("SELECT parent_id FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise errors.not_found(f"no run with id {run_id!r}")
    marks, states = _in(sources(RunState.CANCELLED))
    error = _json_error("RunCancelled", reason)
    rows = c.execute(
        "WITH RECURSIVE tree(id) AS (SELECT ? UNION ALL SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id)"
        " UPDATE runs SET state = 'cancelled', revision = revision + 1, error = ?, worker_id = NULL,"
        " claim_expires_at = NULL, wake_at = NULL, ready_at = NULL, updated_at = ?"
        f" WHERE id IN (SELECT id FROM tree) AND state IN ({marks}) RETURNING id",
        (run_id, error, now_ms, *states),
    ).fetchall()
    effects = Effects(finished=[r[0] for r in rows])
    _history(c, effects.finished, now_ms, RunState.CANCELLED, error)
    if run_id in effects.finished and row[0] is not None:
        effects.queued = _wake(c, [row[0]], now_ms)
    return effects


_SCHEDULE_COLUMNS = (
    "id, workflow, version, input, input_hash, cron, tz, every_ms, overlap, state, reference_id, next_fire_at,"
    " last_run_id, fired, skipped, created_at"
)


def _settings(s: Schedule) -> tuple[Any, ...]:
    """What makes two schedule requests the same schedule."""
    return (s.workflow, s.version, s.input_hash, s.cron, s.tz, s.every_ms, s.overlap)


def _one_schedule(c: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> Schedule | None:
    row = c.execute(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE {where}", args).fetchone()
    return Schedule(*row) if row else None
