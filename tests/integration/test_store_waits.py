"""The races of durable waits, made to happen exactly, against the store (SQLite and PostgreSQL)."""

from __future__ import annotations

from aiki_client.wire import RunState
from aiki_server.store import NewChild, NewRun, NewWait, NextState, Store

NOW = 1_800_000_000_000


async def claimed_run(store: Store, run_id: str = "r1") -> int:
    new = NewRun(run_id, "wf", "1", "null", "h", None, None, None, None)
    await store.insert_run(new, NOW)
    [claim] = await store.claim_runs("w1", ["wf\x1f1"], 1, NOW, NOW + 60_000)
    return claim.run.revision


def pending_event(name: str, seq: int = 0) -> NewWait:
    return NewWait(kind="event", name=name, seq=seq, state="pending", deadline_ms=None)


async def test_event_arriving_between_claim_and_suspension_requeues_the_run(store: Store) -> None:
    revision = await claimed_run(store)
    # The worker's claim saw no event; one arrives while it is replaying.
    await store.send_event("r1", "go", '"late"', None, NOW + 1)
    effects = await store.checkpoint(
        "r1", "w1", revision, 1, [], NextState(RunState.AWAITING_EVENT), NOW + 2, NOW + 60_000,
        waits=[pending_event("go")],
    )  # fmt: skip
    run = await store.get_run("r1")
    assert run is not None and run.state is RunState.QUEUED
    assert effects.queued == ["wf\x1f1"]
    [wait] = await store.list_waits("r1")
    assert (wait["state"], wait["data"]) == ("received", '"late"')


async def test_event_arriving_after_suspension_wakes_the_run(store: Store) -> None:
    revision = await claimed_run(store)
    await store.checkpoint(
        "r1", "w1", revision, 1, [], NextState(RunState.AWAITING_EVENT), NOW + 1, NOW + 60_000,
        waits=[pending_event("go")],
    )  # fmt: skip
    assert (await store.get_run("r1")).state is RunState.AWAITING_EVENT  # type: ignore[union-attr]
    _, duplicate, queued = await store.send_event("r1", "go", "1", "ref-1", NOW + 2)
    assert not duplicate and queued == ["wf\x1f1"]
    assert (await store.get_run("r1")).state is RunState.QUEUED  # type: ignore[union-attr]
    # The same reference id again changes nothing.
    _, duplicate, queued = await store.send_event("r1", "go", "2", "ref-1", NOW + 3)
    assert duplicate and queued == []
    [claim] = await store.claim_runs("w1", ["wf\x1f1"], 1, NOW + 4, NOW + 60_000)
    assert [(w["state"], w["data"]) for w in claim.waits] == [("received", "1")]
    assert claim.events == []


async def test_wakeup_while_running_turns_the_next_sleep_into_a_requeue(store: Store) -> None:
    revision = await claimed_run(store)
    await store.wakeup("r1", NOW + 1)
    sleep = NewWait(kind="sleep", name="nap", seq=0, state="pending", deadline_ms=NOW + 3_600_000)
    await store.checkpoint(
        "r1", "w1", revision, 1, [], NextState(RunState.SLEEPING, wake_at_ms=NOW + 3_600_000), NOW + 2,
        NOW + 60_000, waits=[sleep],
    )  # fmt: skip
    assert (await store.get_run("r1")).state is RunState.QUEUED  # type: ignore[union-attr]


async def test_child_finishing_before_the_parent_suspends(store: Store) -> None:
    revision = await claimed_run(store, "parent")
    child = NewChild(id="child", workflow="wf", version="1", input_json="1", input_hash="h")
    await store.checkpoint("parent", "w1", revision, 1, [], None, NOW + 1, NOW + 60_000, children=[child])
    # The child is claimed and completed by another worker before the parent suspends on it.
    [claim] = await store.claim_runs("w2", ["wf\x1f1"], 1, NOW + 2, NOW + 60_000)
    assert claim.run.id == "child" and claim.run.parent_id == "parent"
    await store.checkpoint(
        "child", "w2", claim.run.revision, 1, [], NextState(RunState.COMPLETED, output_json="2"), NOW + 3, NOW
    )
    await store.checkpoint(
        "parent", "w1", revision, 2, [], NextState(RunState.AWAITING_CHILD, waiting_on=("child",)), NOW + 4,
        NOW + 60_000,
    )  # fmt: skip
    assert (await store.get_run("parent")).state is RunState.QUEUED  # type: ignore[union-attr]
    [again] = await store.claim_runs("w1", ["wf\x1f1"], 1, NOW + 5, NOW + 60_000)
    assert again.children == [{"id": "child", "state": "completed", "output": "2", "error": None}]


async def test_due_waits_resolve_at_claim(store: Store) -> None:
    revision = await claimed_run(store)
    waits = [
        NewWait(kind="sleep", name="nap", seq=0, state="pending", deadline_ms=NOW + 1_000),
        NewWait(kind="event", name="go", seq=0, state="pending", deadline_ms=NOW + 1_000),
        NewWait(kind="event", name="later", seq=0, state="pending", deadline_ms=NOW + 9_000),
    ]
    await store.checkpoint(
        "r1", "w1", revision, 1, [], NextState(RunState.SLEEPING, wake_at_ms=NOW + 1_000), NOW, NOW, waits=waits
    )
    assert await store.next_wake_at() == NOW + 1_000
    assert await store.promote_due(NOW + 999) == []
    assert await store.promote_due(NOW + 1_000) == ["wf\x1f1"]
    [claim] = await store.claim_runs("w1", ["wf\x1f1"], 1, NOW + 1_001, NOW + 60_000)
    assert [w["state"] for w in claim.waits] == ["done", "timed_out", "pending"]


async def test_wait_receiving_in_an_intermediate_checkpoint_requeues_the_later_suspension(store: Store) -> None:
    """The wait is flushed (and receives a stored event) in a checkpoint that does not suspend;
    the suspension comes in the next checkpoint, which carries no wait: it must requeue."""
    revision = await claimed_run(store)
    await store.send_event("r1", "go", '"early"', None, NOW + 1)
    await store.checkpoint("r1", "w1", revision, 1, [], None, NOW + 2, NOW + 60_000, waits=[pending_event("go")])
    await store.checkpoint("r1", "w1", revision, 2, [], NextState(RunState.AWAITING_EVENT), NOW + 3, NOW + 60_000)
    assert (await store.get_run("r1")).state is RunState.QUEUED  # type: ignore[union-attr]
