"""Run and task state machines as data.

The tables are checked in Python by the services and enforced again in SQL: every state change is
an UPDATE whose WHERE clause names the states it may leave (`sources(target)`) and, for a run held
by a worker, the revision that worker holds. Zero rows changed means a conflict, never an overwrite.
"""

from __future__ import annotations

from aiki_client.wire import SUSPENDED_STATES, TERMINAL_STATES, RunState, TaskState

_WAITING = SUSPENDED_STATES | {RunState.SCHEDULED}

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.SCHEDULED: frozenset({RunState.QUEUED, RunState.PAUSED, RunState.CANCELLED}),
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.PAUSED, RunState.CANCELLED}),
    RunState.RUNNING: frozenset(
        {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.QUEUED, RunState.PAUSED} | SUSPENDED_STATES
    ),
    RunState.PAUSED: frozenset({RunState.QUEUED, RunState.CANCELLED}),
    **{s: frozenset({RunState.QUEUED, RunState.PAUSED, RunState.CANCELLED}) for s in SUSPENDED_STATES},
    **{s: frozenset() for s in TERMINAL_STATES},
}

# What a worker may report as the next state of the run it holds.
WORKER_OUTCOMES = frozenset({RunState.COMPLETED, RunState.FAILED}) | SUSPENDED_STATES

# States whose runs carry a deadline (`wake_at`) after which they are queued again.
TIMED_STATES = frozenset(_WAITING)

TASK_TRANSITIONS: dict[TaskState | None, frozenset[TaskState]] = {
    None: frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.RETRYING}),  # a new call
    TaskState.RETRYING: frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.RETRYING}),
    TaskState.FAILED: frozenset({TaskState.SUPERSEDED}),  # a whole-run retry clears failed calls
    TaskState.COMPLETED: frozenset(),
    TaskState.SUPERSEDED: frozenset(),
}


def can_transition(current: RunState, target: RunState) -> bool:
    return target in RUN_TRANSITIONS[current]


def sources(target: RunState) -> frozenset[RunState]:
    """Every state from which a run may move to `target`."""
    return frozenset(s for s, nexts in RUN_TRANSITIONS.items() if target in nexts)
