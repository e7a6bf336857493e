"""Numbered migrations for the SQLite store, applied in order by the server on start.

Times are integer milliseconds since the epoch; JSON values are stored as text.
Never edit a released migration: add the next number.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE runs (
            id               TEXT PRIMARY KEY,
            workflow         TEXT NOT NULL,
            version          TEXT NOT NULL,
            queue            TEXT NOT NULL,       -- workflow \\x1f version [\\x1f shard]: who may claim it
            state            TEXT NOT NULL,
            revision         INTEGER NOT NULL DEFAULT 0,  -- bumped by every claim, release and cancel
            input            TEXT NOT NULL,
            input_hash       TEXT NOT NULL,
            output           TEXT,
            error            TEXT,
            attempts         INTEGER NOT NULL DEFAULT 1,
            reference_id     TEXT,
            shard_key        TEXT,
            parent_id        TEXT REFERENCES runs(id),
            wake_at          INTEGER,             -- deadline of a scheduled / waiting run
            ready_at         INTEGER,             -- when it was queued: claim order
            worker_id        TEXT,                -- the claimant while running
            claim_expires_at INTEGER,
            checkpoint_seq   INTEGER NOT NULL DEFAULT 0,  -- last checkpoint applied in this claim
            created_at       INTEGER NOT NULL,
            updated_at       INTEGER NOT NULL,
            UNIQUE (workflow, reference_id)
        );
        CREATE INDEX runs_ready ON runs (queue, ready_at) WHERE state = 'queued';
        CREATE INDEX runs_wake ON runs (wake_at) WHERE wake_at IS NOT NULL;
        CREATE INDEX runs_claim ON runs (claim_expires_at) WHERE state = 'running';
        CREATE INDEX runs_worker ON runs (worker_id) WHERE worker_id IS NOT NULL;
        CREATE INDEX runs_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;

        CREATE TABLE task_calls (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- call order within a run
            run_id     TEXT NOT NULL REFERENCES runs(id),
            address    TEXT NOT NULL,
            name       TEXT NOT NULL,
            state      TEXT NOT NULL,
            attempts   INTEGER NOT NULL,
            output     TEXT,
            error      TEXT,
            retry_at   INTEGER,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        );
        CREATE INDEX task_calls_run ON task_calls (run_id, id);

        CREATE TABLE run_history (
            id      INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id  TEXT NOT NULL REFERENCES runs(id),
            at      INTEGER NOT NULL,
            state   TEXT NOT NULL,
            detail  TEXT
        );
        CREATE INDEX run_history_run ON run_history (run_id, id);
        """,
    ),
    (
        2,
        """
        -- Set when something the run may be waiting for happens while a worker holds it (an event,
        -- a wakeup, a child's end): the worker's next suspension then requeues it instead.
        ALTER TABLE runs ADD COLUMN wake_requested INTEGER NOT NULL DEFAULT 0;

        CREATE TABLE events (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order
            run_id       TEXT NOT NULL REFERENCES runs(id),
            name         TEXT NOT NULL,
            data         TEXT,
            reference_id TEXT,
            wait_id      INTEGER,                            -- the wait that received it
            created_at   INTEGER NOT NULL,
            UNIQUE (run_id, reference_id)
        );
        CREATE INDEX events_unreceived ON events (run_id, name, id) WHERE wait_id IS NULL;

        CREATE TABLE waits (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id      TEXT NOT NULL REFERENCES runs(id),
            kind        TEXT NOT NULL,      -- sleep | event
            name        TEXT NOT NULL,
            seq         INTEGER NOT NULL,   -- call order among the run's waits of this kind and name
            state       TEXT NOT NULL,      -- pending, then done (sleep) / received / timed_out (event)
            deadline    INTEGER,            -- wake time of a sleep, timeout of an event wait
            event_id    INTEGER REFERENCES events(id),
            created_at  INTEGER NOT NULL,
            resolved_at INTEGER,
            UNIQUE (run_id, kind, name, seq)
        );
        CREATE INDEX waits_pending ON waits (run_id, kind, name, seq) WHERE state = 'pending';
        """,
    ),
    (
        3,
        """
        CREATE TABLE schedules (
            id            TEXT PRIMARY KEY,
            workflow      TEXT NOT NULL,
            version       TEXT NOT NULL,
            input         TEXT NOT NULL,
            input_hash    TEXT NOT NULL,
            cron          TEXT,               -- a cron expression (5 or 6 fields) in time zone tz
            tz            TEXT,
            every_ms      INTEGER,            -- or a fixed interval
            overlap       TEXT NOT NULL,      -- skip | allow | cancel_previous
            state         TEXT NOT NULL,      -- active | paused
            reference_id  TEXT UNIQUE,
            next_fire_at  INTEGER,
            last_run_id   TEXT,
            fired         INTEGER NOT NULL DEFAULT 0,
            skipped       INTEGER NOT NULL DEFAULT 0,
            created_at    INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL
        );
        CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE state = 'active';
        """,
    ),
    (
        4,
        """
        -- Redis delivery: when a queued run was last published to its stream, and how often.
        ALTER TABLE runs ADD COLUMN announced_at INTEGER;
        ALTER TABLE runs ADD COLUMN announce_count INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX runs_unannounced ON runs (announced_at) WHERE state = 'queued';
        """,
    ),
    (
        5,
        """
        -- Listing runs newest first (the CLI, GET /v1/runs).
        CREATE INDEX runs_created ON runs (created_at, id);
        """,
    ),
]
