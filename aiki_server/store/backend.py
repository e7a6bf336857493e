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
    # PostgreSQL runs data-modifying WITH clauses: several writes in one statement, atomic by itself
    # and one network round trip (the store's hot paths use them there; SQLite, whose statements
    # cost no round trip, runs the same steps as separate statements of a transaction).
    writes_in_one_statement: bool

    async def open(self) -> None:
        """Connect and bring the schema up to date (numbered migrations)."""
        ...

    async def close(self) -> None: ...

    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Tx]:
        """A transaction; `readonly` ones hold a single statement (which sees one snapshot by itself)."""
        ...

    def statement(self) -> AbstractAsyncContextManager[Tx]:
        """A connection for one statement that commits by itself: no BEGIN and COMMIT round trips."""
        ...
