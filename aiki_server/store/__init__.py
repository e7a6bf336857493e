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


def open_store(database_url: str) -> Store:
    """The store for a URL: `sqlite:///path.db` (PostgreSQL arrives with production mode)."""
    if database_url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(database_url)
    if database_url.startswith(("postgresql://", "postgres://")):
        raise ValueError("PostgreSQL support is not in this build yet; use a sqlite:/// URL")
    raise ValueError(f"unsupported database URL {database_url!r}: use sqlite:///path/to/file.db")


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
