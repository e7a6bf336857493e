"""The SQLite backend: the embedded default, one file, no other process.

One writing connection, one write transaction at a time (an asyncio lock), and one reading
connection beside it (WAL: reads never wait for a writer). Statements run on the event loop
itself — they take microseconds on a local file — and only COMMIT, which waits for the disk, runs
on a worker thread. WAL journal with `synchronous=FULL`: a committed checkpoint survives a power
cut, not only a process crash. Run one server per SQLite file.

The store's SQL is written in PostgreSQL's dialect; `translate` rewrites the few constructs SQLite
lacks (`$n` placeholders, `= ANY($n)` lists, row locks that SQLite's single writer makes moot).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from .. import errors
from .backend import Tx, UniqueViolation
from .sqlite_schema import MIGRATIONS


def path_from_url(url: str) -> str:
    """`sqlite:///relative/or/./path.db`, `sqlite:////abs/path.db` or `sqlite:///:memory:`."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a SQLite URL (want sqlite:///path/to/file.db): {url!r}")
    path = url[len("sqlite:///") :]
    if not path:
        raise ValueError(f"SQLite URL without a file path: {url!r}")
    return path


_PLACEHOLDER = re.compile(r"\$(\d+)")
_ANY = re.compile(r"([\w.]+) = ANY\((\?\d+)\)")
_ROW_LOCKS = re.compile(r" FOR UPDATE( SKIP LOCKED)?")


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """PostgreSQL-dialect statement → SQLite: `$1` → `?1`, `x = ANY($1)` → `x IN (json_each(?1))`
    (list arguments travel as JSON), row locks dropped."""
    sql = _PLACEHOLDER.sub(r"?\1", sql)
    sql = _ANY.sub(r"\1 IN (SELECT value FROM json_each(\2))", sql)
    return _ROW_LOCKS.sub("", sql)


def _params(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(orjson.dumps(a).decode() if isinstance(a, list | tuple) else a for a in args)


class SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _run(self, sql: str, args: Sequence[Any]) -> sqlite3.Cursor:
        try:
            return self._conn.execute(translate(sql), _params(args))
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise UniqueViolation(str(exc)) from exc
            raise

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return self._run(sql, args).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return self._run(sql, args).fetchone()

    async def execute(self, sql: str, *args: Any) -> int:
        return self._run(sql, args).rowcount

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        self._conn.executemany(translate(sql), [_params(a) for a in args])


# Write transactions that share one commit at most (bounds how long the first of them waits).
_MAX_BATCH = 64


class SqliteBackend:
    writes_in_one_statement = False

    def __init__(self, url: str) -> None:
        self.path = path_from_url(url)
        self._conn: sqlite3.Connection | None = None
        # Write transactions take turns on the one connection (the lock); see `transaction`.
        self._lock = asyncio.Lock()
        self._waiting = 0  # write transactions waiting for their turn
        self._batch: asyncio.Future[None] | None = None  # the open SQLite transaction's commit
        self._batch_size = 0
        # Reads use a connection of their own: in WAL mode they never wait for a writer's COMMIT.
        self._reader: sqlite3.Connection | None = None
        self._read_lock = asyncio.Lock()
        # COMMIT waits for the disk: off the event loop, on this one thread.
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aiki-sqlite-commit")

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn
        self._migrate(conn)
        if self.path != ":memory:":  # a second connection to :memory: would be another database
            self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._reader.execute("PRAGMA busy_timeout=5000")

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
        async with self._lock, self._read_lock:
            if self._batch is not None and self._conn is not None:
                await self._commit(self._conn)
            for conn in (self._conn, self._reader):
                if conn is not None:
                    conn.close()
            self._conn = self._reader = None
        self._committer.shutdown(wait=True)

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[Tx]:
        if readonly and self._reader is not None:
            async with self._read_lock:
                self._reader.execute("BEGIN")
                try:
                    yield SqliteTx(self._reader)
                finally:
                    self._reader.execute("COMMIT")
            return
        # Group commit. Write transactions take turns on the connection, each in a savepoint of
        # one SQLite transaction that stays open while others wait for their turn; the last of a
        # run of them commits for all (one fsync), and each returns only once that commit is done.
        # A transaction that finds no one waiting commits at once, so batching adds no wait; one
        # that fails is rolled back to its savepoint, leaving the others' writes in place.
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            conn = self._conn
            if conn is None:
                raise errors.StoreUnavailable("the SQLite store is closed")
            if self._batch is None:
                conn.execute("BEGIN IMMEDIATE")
                self._batch = asyncio.get_running_loop().create_future()
            committed = self._batch
            self._batch_size += 1
            conn.execute("SAVEPOINT tx")
            try:
                yield SqliteTx(conn)
            except BaseException:
                conn.execute("ROLLBACK TO tx")
                conn.execute("RELEASE tx")
                raise
            conn.execute("RELEASE tx")
        finally:
            try:
                if self._batch is not None and (self._waiting == 0 or self._batch_size >= _MAX_BATCH):
                    await self._commit(self._conn)
            finally:
                self._lock.release()
        # Durable once this returns (or the commit failed, and it raises). Shielded: a member that
        # is cancelled meanwhile must not cancel the others' wait.
        await asyncio.shield(committed)

    async def _commit(self, conn: sqlite3.Connection | None) -> None:
        """COMMIT the open transaction on the committer thread, and tell every member."""
        batch, self._batch, self._batch_size = self._batch, None, 0
        assert batch is not None and conn is not None
        future = asyncio.get_running_loop().run_in_executor(self._committer, conn.execute, "COMMIT")
        try:
            await _uncancellable(future)
        finally:
            failure = future.exception()
            if failure is None:
                batch.set_result(None)
            else:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                batch.set_exception(failure)
                batch.exception()  # retrieved: each member raises it on its own

    def statement(self) -> AbstractAsyncContextManager[Tx]:
        # Statements run in-process: a transaction around one costs nothing worth saving.
        return self.transaction()


async def _uncancellable(future: asyncio.Future[Any]) -> None:
    """Wait for the commit even if the caller is cancelled meanwhile: the connection must not be
    handed to the next transaction while COMMIT still runs on the other thread."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    future.result()
    if cancelled:
        raise asyncio.CancelledError
