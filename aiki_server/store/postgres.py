"""The PostgreSQL backend: an asyncpg pool, for production and for several servers sharing one
database. Migrations run on start under an advisory lock, so servers starting together apply each
migration once. Losing the database (restart, network) turns into StoreUnavailable: a 503 the SDK
retries, while the pool reconnects on its own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg

from .. import errors
from .backend import Tx, UniqueViolation
from .postgres_schema import MIGRATIONS

_MIGRATION_LOCK = 0x61696B69  # "aiki": the advisory lock key held while migrating

# Errors that mean "the database is not reachable right now", not "the request is wrong".
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    # A connection that broke mid-operation (e.g. the server restarted) refuses further use.
    asyncpg.InternalClientError,
)


async def _keep_connection_as_is(conn: asyncpg.Connection) -> None:
    pass


# Two writers that met (a deadlock PostgreSQL broke, a serialization failure): nothing was written,
# and the same request succeeds when tried again — a retryable 503, not a 500.
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


class PostgresTx:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def _run(self, method: Callable[..., Awaitable[Any]], sql: str, *args: Any) -> Any:
        try:
            return await method(sql, *args)
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from exc
        except _RETRYABLE as exc:
            raise errors.unavailable(f"the write met a concurrent one ({exc}); retry") from exc

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await self._run(self._conn.fetch, sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._run(self._conn.fetchrow, sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._run(self._conn.execute, sql, *args)
        # "UPDATE 3", "INSERT 0 1", "DELETE 0": the last word is the row count.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        await self._run(self._conn.executemany, sql, args)


class PostgresBackend:
    writes_in_one_statement = True

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 20, command_timeout_s: float = 30.0) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout_s = command_timeout_s
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=self._min_size,
            max_size=self._max_size,
            command_timeout=self._command_timeout_s,
            # No reset on release: the store keeps no session state (its only advisory lock is
            # transaction-scoped), and the default reset costs a round trip per transaction.
            reset=_keep_connection_as_is,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
            )
            applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, script in MIGRATIONS:
                if version not in applied:
                    await conn.execute(script)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                        version,
                        int(time.time() * 1000),
                    )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Tx]:
        # The store's reads are single statements: BEGIN and COMMIT would only add round trips.
        return self._connection(begin=not readonly)

    def statement(self) -> AbstractAsyncContextManager[Tx]:
        return self._connection(begin=False)

    @asynccontextmanager
    async def _connection(self, *, begin: bool) -> AsyncIterator[Tx]:
        if self._pool is None:
            raise errors.StoreUnavailable("the PostgreSQL store is closed")
        try:
            async with self._pool.acquire() as conn, conn.transaction() if begin else contextlib.nullcontext():
                yield PostgresTx(conn)
        except _UNAVAILABLE as exc:
            raise errors.StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
