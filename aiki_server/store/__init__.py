"""Storage: the `Store` protocol and the implementation chosen by the database URL."""

from __future__ import annotations

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
    Store,
    TaskOutcome,
    queue_key,
)


def open_store(
    database_url: str, *, pool_min_size: int = 2, pool_max_size: int = 20, command_timeout_s: float = 30
) -> Store:
    """The store for a URL: `sqlite:///path.db` or `postgresql://user@host/db`."""
    from .sql import SqlStore

    if database_url.startswith("sqlite:///"):
        from .sqlite import SqliteBackend

        return SqlStore(SqliteBackend(database_url))
    if database_url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresBackend

        return SqlStore(
            PostgresBackend(
                database_url, min_size=pool_min_size, max_size=pool_max_size, command_timeout_s=command_timeout_s
            )
        )
    raise ValueError(
        f"unsupported database URL {database_url!r}: use sqlite:///path/to/file.db or postgresql://user@host/db"
    )


__all__ = [
    "CheckpointResult",
    "Claimed",
    "Effects",
    "NewChild",
    "NewRun",
    "NewWait",
    "NextState",
    "Run",
    "Schedule",
    "Store",
    "TaskOutcome",
    "open_store",
    "queue_key",
]
