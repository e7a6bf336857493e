"""The run and task transition tables."""

from __future__ import annotations

import pytest

from aiki_client.wire import SUSPENDED_STATES, TERMINAL_STATES, RunState, TaskState
from aiki_server.state_machine import (
    RUN_TRANSITIONS,
    TASK_TRANSITIONS,
    TIMED_STATES,
    WORKER_OUTCOMES,
    can_transition,
    sources,
)

NON_TERMINAL = [s for s in RunState if s not in TERMINAL_STATES]


def test_every_run_state_has_a_row() -> None:
    assert set(RUN_TRANSITIONS) == set(RunState)
    assert all(isinstance(nexts, frozenset) for nexts in RUN_TRANSITIONS.values())


def test_terminal_states_are_the_last_three() -> None:
    assert {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED} == TERMINAL_STATES


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_states_have_no_exits(state: RunState) -> None:
    assert RUN_TRANSITIONS[state] == frozenset()
    assert not any(can_transition(state, target) for target in RunState)


@pytest.mark.parametrize("state", NON_TERMINAL)
def test_every_non_terminal_state_can_be_cancelled(state: RunState) -> None:
    assert can_transition(state, RunState.CANCELLED)


@pytest.mark.parametrize("state", NON_TERMINAL)
def test_no_state_moves_to_itself(state: RunState) -> None:
    assert not can_transition(state, state)


def test_running_may_go_to_every_suspended_state() -> None:
    assert {
        RunState.SLEEPING,
        RunState.AWAITING_EVENT,
        RunState.AWAITING_CHILD,
        RunState.AWAITING_RETRY,
    } == SUSPENDED_STATES
    for state in SUSPENDED_STATES:
        assert can_transition(RunState.RUNNING, state)


def test_only_a_claim_starts_running() -> None:
    assert sources(RunState.RUNNING) == {RunState.QUEUED}


@pytest.mark.parametrize("state", sorted(SUSPENDED_STATES | {RunState.SCHEDULED, RunState.PAUSED}))
def test_waiting_states_are_requeued(state: RunState) -> None:
    assert can_transition(state, RunState.QUEUED)
    assert not can_transition(state, RunState.RUNNING)


@pytest.mark.parametrize("target", list(RunState))
def test_sources_agree_with_the_table(target: RunState) -> None:
    expected = {s for s in RunState if target in RUN_TRANSITIONS[s]}
    assert sources(target) == expected
    for s in RunState:
        assert can_transition(s, target) == (s in sources(target))


def test_sources_of_cancelled_are_exactly_the_non_terminal_states() -> None:
    assert sources(RunState.CANCELLED) == set(NON_TERMINAL)
    assert sources(RunState.SCHEDULED) == frozenset()  # only an insert creates a scheduled run


def test_worker_outcomes() -> None:
    assert {RunState.COMPLETED, RunState.FAILED} | SUSPENDED_STATES == WORKER_OUTCOMES
    assert RunState.CANCELLED not in WORKER_OUTCOMES
    assert RunState.RUNNING not in WORKER_OUTCOMES
    assert WORKER_OUTCOMES <= RUN_TRANSITIONS[RunState.RUNNING]


def test_timed_states_are_the_suspended_ones_and_scheduled() -> None:
    assert SUSPENDED_STATES | {RunState.SCHEDULED} == TIMED_STATES
    assert not TIMED_STATES & TERMINAL_STATES


def _reachable(start: RunState) -> set[RunState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in RUN_TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_from_scheduled() -> None:
    assert _reachable(RunState.SCHEDULED) == set(RunState)


@pytest.mark.parametrize("state", list(RunState))
def test_every_state_can_reach_completed(state: RunState) -> None:
    if state in TERMINAL_STATES:
        assert _reachable(state) == {state}
    else:
        assert RunState.COMPLETED in _reachable(state)


def test_task_transitions() -> None:
    assert set(TASK_TRANSITIONS) == {None, *TaskState}
    assert TASK_TRANSITIONS[TaskState.COMPLETED] == frozenset()
    assert TASK_TRANSITIONS[TaskState.SUPERSEDED] == frozenset()
    assert TASK_TRANSITIONS[TaskState.FAILED] == {TaskState.SUPERSEDED}
    assert TaskState.SUPERSEDED not in TASK_TRANSITIONS[None]  # only a whole-run retry supersedes
    assert TaskState.RETRYING in TASK_TRANSITIONS[TaskState.RETRYING]
    assert {TaskState.COMPLETED, TaskState.FAILED} <= TASK_TRANSITIONS[TaskState.RETRYING]
