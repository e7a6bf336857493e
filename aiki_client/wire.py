"""The HTTP contract between the SDK and the server: state names, error codes and limits.

The server imports this module (and nothing else from aiki_client), so both sides agree on every
name by construction. It must stay dependency-free: standard library only.
"""

from __future__ import annotations

import enum
import hashlib
import json
from typing import Any

API_PREFIX = "/v1"


class RunState(enum.StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SLEEPING = "sleeping"
    AWAITING_EVENT = "awaiting_event"
    AWAITING_CHILD = "awaiting_child"
    AWAITING_RETRY = "awaiting_retry"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})
# States a worker may move its running run into when the workflow cannot go on yet.
SUSPENDED_STATES = frozenset(
    {RunState.SLEEPING, RunState.AWAITING_EVENT, RunState.AWAITING_CHILD, RunState.AWAITING_RETRY}
)


class TaskState(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"  # attempts exhausted: replays raise TaskFailed
    RETRYING = "retrying"  # failed, another attempt is due at `retry_at`
    SUPERSEDED = "superseded"  # a failed call cleared by a whole-run retry; never replayed


class WaitKind(enum.StrEnum):
    SLEEP = "sleep"
    EVENT = "event"


class WaitState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"  # a sleep whose time came (or that was woken up early)
    RECEIVED = "received"  # an event wait that got its event
    TIMED_OUT = "timed_out"  # an event wait whose timeout passed first


class ErrorCode(enum.StrEnum):
    INVALID_REQUEST = "invalid_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    FENCED = "fenced"  # a worker's claim on a run was lost; its write was rejected
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


# Largest request body the server accepts (JSON inputs, outputs and task results included).
MAX_BODY_BYTES = 4 * 1024 * 1024
# Longest a single long-poll request is held open by the server.
MAX_WAIT_MS = 30_000


# Redis Streams delivery: one stream per workflow name + version (+ shard), one consumer group.
STREAM_PREFIX = "aiki:stream:"
CONSUMER_GROUP = "aiki-workers"
# Server → servers notifications (runs queued or finished), for long-polls held by another server.
NOTIFY_CHANNEL = "aiki:notify"


def stream_name(queue: str) -> str:
    """The Redis stream of a queue (`workflow\x1fversion[\x1fshard]`)."""
    return STREAM_PREFIX + queue


def queue_key(workflow: str, version: str, shard_key: str | None = None) -> str:
    """Where a ready run waits: one queue per workflow name + version (+ shard)."""
    key = f"{workflow}\x1f{version}"
    return key if shard_key is None else f"{key}\x1f{shard_key}"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text.

    Raises TypeError/ValueError for values JSON cannot carry (NaN, sets, objects...).
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_hash(value: Any) -> str:
    """Stable 128-bit hex digest of a JSON value's canonical form."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:32]


def task_address(task_name: str, task_input: Any) -> str:
    """A task call's content address: its name plus the hash of its canonical input."""
    return f"{task_name}:{content_hash(task_input)}"
