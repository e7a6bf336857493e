"""The SQLite store: the embedded default, one file, no other process.

All SQL runs on one dedicated thread that owns the connection, and each store method is one
function executed there inside one `BEGIN IMMEDIATE` transaction: one thread hop per operation
(not per statement), and operations are serialized, so the read-check-write steps inside one are
atomic. WAL journal with `synchronous=FULL`: a committed checkpoint survives a power cut, not only
a process crash.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from aiki_client.wire import RunState, TaskState

from .. import errors
from ..state_machine import TIMED_STATES, sources
from .base import CheckpointResult, Claimed, NewRun, NextState, Run, TaskOutcome, queue_key
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
            due = new.wake_at_ms is None or new.wake_at_ms <= now_ms
            state = RunState.QUEUED if due else RunState.SCHEDULED
            c.execute(
                "INSERT INTO runs (id, workflow, version, queue, state, input, input_hash, reference_id, shard_key,"
                " parent_id, wake_at, ready_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
            )
            _history(c, [new.id], now_ms, state)
            run = _one_run(c, "id = ?", (new.id,))
            assert run is not None
            return run, True

        return await self._call(insert)

    async def get_run(self, run_id: str) -> Run | None:
        return await self._call(lambda c: _one_run(c, "id = ?", (run_id,)))

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
                " checkpoint_seq = 0, ready_at = NULL, updated_at = ?"
                " WHERE id IN (SELECT id FROM runs WHERE state = 'queued' AND queue IN (" + marks + ")"
                " ORDER BY ready_at LIMIT ?)"
                f" RETURNING {_RUN_COLUMNS}",
                (worker_id, claim_expires_at_ms, now_ms, *values, limit),
            ).fetchall()
            if not rows:
                return []
            runs = [_run(r) for r in rows]
            _history(c, [r.id for r in runs], now_ms, RunState.RUNNING, worker_id)
            id_marks, ids = _in(r.id for r in runs)
            tasks: dict[str, list[dict[str, Any]]] = {r.id: [] for r in runs}
            for row in c.execute(
                f"SELECT run_id, {_TASK_COLUMNS} FROM task_calls WHERE run_id IN ({id_marks})"
                " AND state != 'superseded' ORDER BY id",
                ids,
            ):
                tasks[row[0]].append(_task(row[1:]))
            return [Claimed(r, tasks[r.id]) for r in runs]

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
    ) -> str:
        def apply(c: sqlite3.Connection) -> str:
            row = c.execute(
                "SELECT state, revision, worker_id, checkpoint_seq FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise errors.not_found(f"no run with id {run_id!r}")
            state, current_revision, holder, applied_seq = row
            if current_revision == revision and seq <= applied_seq:
                return CheckpointResult.DUPLICATE  # a retried request whose first try landed
            if state != RunState.RUNNING or current_revision != revision or holder != worker_id:
                raise errors.fenced(
                    f"run {run_id} is no longer held by {worker_id} at revision {revision} "
                    f"(it is {state}, revision {current_revision})"
                )
            if seq != applied_seq + 1:
                raise errors.conflict(f"checkpoint {seq} of run {run_id} arrived before checkpoint {applied_seq + 1}")
            for t in tasks:
                _record_task(c, run_id, t, now_ms)
            if then is None:
                c.execute(
                    "UPDATE runs SET checkpoint_seq = ?, claim_expires_at = ?, updated_at = ? WHERE id = ?",
                    (seq, claim_expires_at_ms, now_ms, run_id),
                )
                return CheckpointResult.APPLIED
            attempts_step = 0
            if then.state is RunState.AWAITING_RETRY and then.error_json is not None:
                # A whole-run retry: failed calls run afresh next time, completed ones stay recorded.
                attempts_step = 1
                c.execute(
                    "UPDATE task_calls SET state = 'superseded', updated_at = ? WHERE run_id = ? AND state = 'failed'",
                    (now_ms, run_id),
                )
            c.execute(
                "UPDATE runs SET state = ?, output = ?, error = ?, wake_at = ?, attempts = attempts + ?,"
                " worker_id = NULL, claim_expires_at = NULL, checkpoint_seq = ?, updated_at = ? WHERE id = ?",
                (
                    then.state,
                    then.output_json,
                    then.error_json,
                    then.wake_at_ms if then.state in TIMED_STATES else None,
                    attempts_step,
                    seq,
                    now_ms,
                    run_id,
                ),
            )
            _history(c, [run_id], now_ms, then.state, then.detail_json or then.error_json)
            return CheckpointResult.APPLIED

        return await self._call(apply)

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

    async def cancel_run(self, run_id: str, reason: str | None, now_ms: int) -> list[str]:
        marks, states = _in(sources(RunState.CANCELLED))
        error = _json_error("RunCancelled", reason or "cancelled")

        def cancel(c: sqlite3.Connection) -> list[str]:
            if c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise errors.not_found(f"no run with id {run_id!r}")
            rows = c.execute(
                "WITH RECURSIVE tree(id) AS (SELECT ? UNION ALL SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id)"
                " UPDATE runs SET state = 'cancelled', revision = revision + 1, error = ?, worker_id = NULL,"
                " claim_expires_at = NULL, wake_at = NULL, ready_at = NULL, updated_at = ?"
                f" WHERE id IN (SELECT id FROM tree) AND state IN ({marks}) RETURNING id",
                (run_id, error, now_ms, *states),
            ).fetchall()
            ids = [r[0] for r in rows]
            _history(c, ids, now_ms, RunState.CANCELLED, error)
            return ids

        return await self._call(cancel)


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
