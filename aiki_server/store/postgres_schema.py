"""Numbered migrations for the PostgreSQL store, applied in order by the server on start (under
an advisory lock). Same tables as SQLite's; times are BIGINT milliseconds, JSON is stored as text.
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
            queue            TEXT NOT NULL,
            state            TEXT NOT NULL,
            revision         BIGINT NOT NULL DEFAULT 0,
            input            TEXT NOT NULL,
            input_hash       TEXT NOT NULL,
            output           TEXT,
            error            TEXT,
            attempts         INTEGER NOT NULL DEFAULT 1,
            reference_id     TEXT,
            shard_key        TEXT,
            parent_id        TEXT REFERENCES runs(id),
            wake_at          BIGINT,
            ready_at         BIGINT,
            worker_id        TEXT,
            claim_expires_at BIGINT,
            checkpoint_seq   INTEGER NOT NULL DEFAULT 0,
            wake_requested   INTEGER NOT NULL DEFAULT 0,
            created_at       BIGINT NOT NULL,
            updated_at       BIGINT NOT NULL,
            UNIQUE (workflow, reference_id)
        );
        CREATE INDEX runs_ready ON runs (queue, ready_at) WHERE state = 'queued';
        CREATE INDEX runs_wake ON runs (wake_at) WHERE wake_at IS NOT NULL;
        CREATE INDEX runs_claim ON runs (claim_expires_at) WHERE state = 'running';
        CREATE INDEX runs_worker ON runs (worker_id) WHERE worker_id IS NOT NULL;
        CREATE INDEX runs_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;
        CREATE INDEX runs_created ON runs (created_at DESC, id DESC);

        CREATE TABLE task_calls (
            id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id     TEXT NOT NULL REFERENCES runs(id),
            address    TEXT NOT NULL,
            name       TEXT NOT NULL,
            state      TEXT NOT NULL,
            attempts   INTEGER NOT NULL,
            output     TEXT,
            error      TEXT,
            retry_at   BIGINT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        );
        CREATE INDEX task_calls_run ON task_calls (run_id, id);

        CREATE TABLE run_history (
            id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id  TEXT NOT NULL REFERENCES runs(id),
            at      BIGINT NOT NULL,
            state   TEXT NOT NULL,
            detail  TEXT
        );
        CREATE INDEX run_history_run ON run_history (run_id, id);

        CREATE TABLE events (
            id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id       TEXT NOT NULL REFERENCES runs(id),
            name         TEXT NOT NULL,
            data         TEXT,
            reference_id TEXT,
            wait_id      BIGINT,
            created_at   BIGINT NOT NULL,
            UNIQUE (run_id, reference_id)
        );
        CREATE INDEX events_unreceived ON events (run_id, name, id) WHERE wait_id IS NULL;

        CREATE TABLE waits (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id      TEXT NOT NULL REFERENCES runs(id),
            kind        TEXT NOT NULL,
            name        TEXT NOT NULL,
            seq         INTEGER NOT NULL,
            state       TEXT NOT NULL,
            deadline    BIGINT,
            event_id    BIGINT REFERENCES events(id),
            created_at  BIGINT NOT NULL,
            resolved_at BIGINT,
            UNIQUE (run_id, kind, name, seq)
        );
        CREATE INDEX waits_pending ON waits (run_id, kind, name, seq) WHERE state = 'pending';

        CREATE TABLE schedules (
            id            TEXT PRIMARY KEY,
            workflow      TEXT NOT NULL,
            version       TEXT NOT NULL,
            input         TEXT NOT NULL,
            input_hash    TEXT NOT NULL,
            cron          TEXT,
            tz            TEXT,
            every_ms      BIGINT,
            overlap       TEXT NOT NULL,
            state         TEXT NOT NULL,
            reference_id  TEXT UNIQUE,
            next_fire_at  BIGINT,
            last_run_id   TEXT,
            fired         INTEGER NOT NULL DEFAULT 0,
            skipped       INTEGER NOT NULL DEFAULT 0,
            created_at    BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL
        );
        CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE state = 'active';
        """,
    ),
    (
        2,
        """
        -- Redis delivery: when a queued run was last published to its stream, and how often.
        ALTER TABLE runs ADD COLUMN announced_at BIGINT;
        ALTER TABLE runs ADD COLUMN announce_count INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX runs_unannounced ON runs (announced_at) WHERE state = 'queued';
        """,
    ),
]
