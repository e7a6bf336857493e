"""What the SQL store needs from a database: transactions of statements in PostgreSQL's dialect.

Two backends implement it: `sqlite.py` (one file, the embedded default) and `postgres.py`
(an asyncpg pool). Both turn the database's unique-key error into `UniqueViolation`, and losing
the database into `StoreUnavailable` (a retryable 503).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol


class UniqueViolation(Exception):
    """An INSERT hit a unique key."""


class Tx(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; returns the number of rows it changed."""
        ...

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> None: ...


class Backend(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date (numbered migrations)."""
        ...

    async def close(self) -> None: ...

    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Tx]: ...
