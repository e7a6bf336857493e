"""The store, used directly on SQLite and on PostgreSQL: idempotent inserts, claims, compare-and-set
checkpoints (on PostgreSQL the one-statement forms, and their fall-back to the general path),
publication, expired claims, due runs and cancellation; and the SQLite file's schema."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from aiki_client.wire import ErrorCode, RunState, TaskState
from aiki_server.errors import ApiError
from aiki_server.store import NewRun, NextState, Store, TaskOutcome, open_store
from aiki_server.store.sqlite_schema import MIGRATIONS

from ..conftest import fresh_pg_database

NOW = 1_800_000_000_000
LEASE = 60_000
Q = "wf\x1f1"


def new_run(
    run_id: str,
    *,
    workflow: str = "wf",
    input_json: str = "null",
    reference_id: str | None = None,
    parent_id: str | None = None,
    wake_at_ms: int | None = None,
    version: str = "1",
) -> NewRun:
    return NewRun(
        id=run_id,
        workflow=workflow,
        version=version,
        input_json=input_json,
        input_hash=f"hash-of-{input_json}",
        reference_id=reference_id,
        shard_key=None,
        parent_id=parent_id,
        wake_at_ms=wake_at_ms,
    )


def completed_task(name: str = "charge", output: str = '{"ok":true}') -> TaskOutcome:
    return TaskOutcome(
        id=None, address=f"{name}:abc", name=name, state=TaskState.COMPLETED.value, attempts=1,
        output_json=output, error_json=None, retry_at_ms=None,
    )  # fmt: skip


async def claimed(store: Store, run_id: str = "r1", worker: str = "w1", at: int = NOW) -> int:
    """Insert a run (unless there is one) and claim it; returns the revision the worker holds."""
    await store.insert_run(new_run(run_id), at)
    [claim] = await store.claim_runs(worker, [Q], 1, at, at + LEASE, [run_id])
    return claim.run.revision


def error_code(info: pytest.ExceptionInfo[ApiError]) -> ErrorCode:
    return info.value.code


# -- schema ------------------------------------------------------------------------------------


def schema(db_path: Path) -> tuple[dict[str, set[str]], set[str], list[int]]:
    conn = sqlite3.connect(db_path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
        indexes = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        }
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        conn.close()
    return columns, indexes, versions


async def test_migrations_create_the_expected_schema(sqlite_store: Store, sqlite_path: Path) -> None:
    columns, indexes, versions = schema(sqlite_path)
    assert {"runs", "task_calls", "run_history", "events", "waits", "schedules", "schema_migrations"} <= set(columns)
    assert {
        "id", "workflow", "version", "queue", "state", "revision", "input", "input_hash", "output", "error",
        "attempts", "reference_id", "shard_key", "parent_id", "wake_at", "ready_at", "worker_id",
        "claim_expires_at", "checkpoint_seq", "wake_requested", "announced_at", "announce_count",
        "created_at", "updated_at",
    } == columns["runs"]  # fmt: skip
    assert {
        "id", "run_id", "address", "name", "state", "attempts", "output", "error", "retry_at", "created_at",
        "updated_at",
    } == columns["task_calls"]  # fmt: skip
    assert {"id", "run_id", "at", "state", "detail"} == columns["run_history"]
    assert {"id", "run_id", "name", "data", "reference_id", "wait_id", "created_at"} == columns["events"]
    assert {"id", "run_id", "kind", "name", "seq", "state", "deadline", "event_id", "created_at", "resolved_at"} == (
        columns["waits"]
    )
    assert {"version", "applied_at"} == columns["schema_migrations"]
    assert {
        "runs_ready", "runs_wake", "runs_claim", "runs_worker", "runs_parent", "runs_unannounced",
        "task_calls_run", "run_history_run", "events_unreceived", "waits_pending", "schedules_due",
    } <= indexes  # fmt: skip
    assert versions == [v for v, _ in MIGRATIONS] and versions[0] == 1


async def test_reopening_is_idempotent_and_keeps_data(sqlite_store: Store, sqlite_path: Path) -> None:
    await sqlite_store.insert_run(new_run("kept", input_json='{"a":1}'), NOW)
    before = schema(sqlite_path)
    await sqlite_store.close()

    for _ in range(2):
        again = open_store(f"sqlite:///{sqlite_path}")
        await again.open()
        try:
            run = await again.get_run("kept")
            assert run is not None and run.input_json == '{"a":1}'
        finally:
            await again.close()

    after = schema(sqlite_path)
    assert after == before
    versions = after[2]
    assert versions.count(1) == 1 and len(versions) == len(set(versions))


# -- inserting runs ----------------------------------------------------------------------------


async def test_insert_run_is_idempotent_by_id(store: Store) -> None:
    first, created = await store.insert_run(new_run("r1", input_json="1"), NOW)
    assert created and first.state is RunState.QUEUED and first.revision == 0
    again, created = await store.insert_run(new_run("r1", input_json="1"), NOW + 5)
    assert not created
    assert again == first

    with pytest.raises(ApiError) as info:
        await store.insert_run(new_run("r1", input_json="2"), NOW + 6)
    assert error_code(info) is ErrorCode.CONFLICT
    with pytest.raises(ApiError) as info:
        await store.insert_run(new_run("r1", workflow="other", input_json="1"), NOW + 7)
    assert error_code(info) is ErrorCode.CONFLICT
    assert await store.get_run("r1") == first
    assert len(await store.list_history("r1")) == 1


async def test_insert_run_is_idempotent_by_workflow_and_reference_id(store: Store) -> None:
    first, created = await store.insert_run(new_run("r1", input_json="1", reference_id="ref"), NOW)
    assert created
    # Another id, same workflow + reference id + input: the same run.
    same, created = await store.insert_run(new_run("r2", input_json="1", reference_id="ref"), NOW + 1)
    assert not created and same.id == "r1"
    assert await store.get_run("r2") is None

    with pytest.raises(ApiError) as info:
        await store.insert_run(new_run("r3", input_json="2", reference_id="ref"), NOW + 2)
    assert error_code(info) is ErrorCode.CONFLICT
    assert "input" in info.value.message and "r1" in info.value.message
    with pytest.raises(ApiError) as info:
        await store.insert_run(new_run("r4", input_json="1", reference_id="ref", version="2"), NOW + 3)
    assert error_code(info) is ErrorCode.CONFLICT
    assert "version" in info.value.message
    assert await store.get_run("r3") is None and await store.get_run("r4") is None
    assert await store.get_run("r1") == first

    # A reference id is per workflow name.
    other, created = await store.insert_run(new_run("r5", workflow="other", input_json="2", reference_id="ref"), NOW)
    assert created and other.id == "r5"


# -- claims and checkpoints --------------------------------------------------------------------


async def test_claim_bumps_the_revision_and_returns_recorded_tasks(store: Store) -> None:
    await store.insert_run(new_run("r1"), NOW)
    [first] = await store.claim_runs("w1", [Q], 10, NOW, NOW + LEASE)
    assert (first.run.id, first.run.state, first.run.revision, first.run.worker_id) == ("r1", "running", 1, "w1")
    assert first.tasks == []
    assert await store.claim_runs("w2", [Q], 10, NOW, NOW + LEASE) == []  # held: not claimable again

    # The worker records a task and goes to sleep; the sleep ends; the next claim brings the task.
    effects = await store.checkpoint(
        "r1", "w1", 1, 1, [completed_task()], NextState(RunState.SLEEPING, wake_at_ms=NOW + 10), NOW + 1, NOW + LEASE
    )
    assert effects.result == "applied" and effects.wake_at_ms == NOW + 10
    assert await store.promote_due(NOW + 9) == []
    assert await store.promote_due(NOW + 10) == [Q]
    [second] = await store.claim_runs("w2", [Q], 10, NOW + 11, NOW + LEASE)
    assert (second.run.revision, second.run.worker_id) == (2, "w2")
    [task] = second.tasks
    assert (task["name"], task["state"], task["output"], task["attempts"]) == ("charge", "completed", '{"ok":true}', 1)


async def test_checkpoint_with_a_wrong_revision_is_fenced_and_writes_nothing(store: Store) -> None:
    revision = await claimed(store)
    before = await store.get_run("r1")
    for wrong_revision, worker in [(revision + 1, "w1"), (revision - 1, "w1"), (revision, "w2")]:
        with pytest.raises(ApiError) as info:
            await store.checkpoint(
                "r1", worker, wrong_revision, 1, [completed_task()], NextState(RunState.COMPLETED, output_json="1"),
                NOW + 1, NOW + LEASE,
            )  # fmt: skip
        assert error_code(info) is ErrorCode.FENCED
    assert await store.list_tasks("r1") == []
    assert await store.get_run("r1") == before
    # Checkpoint 1 was never used up: the holder's own applies.
    effects = await store.checkpoint("r1", "w1", revision, 1, [completed_task()], None, NOW + 2, NOW + LEASE)
    assert effects.result == "applied"


async def test_a_repeated_checkpoint_is_a_duplicate_applied_once(store: Store) -> None:
    revision = await claimed(store)
    assert (await store.checkpoint("r1", "w1", revision, 1, [completed_task("a")], None, NOW, NOW + LEASE)).result == (
        "applied"
    )
    assert (await store.checkpoint("r1", "w1", revision, 2, [completed_task("b")], None, NOW, NOW + LEASE)).result == (
        "applied"
    )
    tasks = await store.list_tasks("r1")
    assert [t["name"] for t in tasks] == ["a", "b"]
    # Both retried (the answers were lost): duplicates, nothing recorded twice.
    for seq, name in [(1, "a"), (2, "b")]:
        effects = await store.checkpoint("r1", "w1", revision, seq, [completed_task(name)], None, NOW, NOW + LEASE)
        assert effects.result == "duplicate"
    assert await store.list_tasks("r1") == tasks
    # Even a repeat carrying a final state is only a duplicate: the run stays running.
    effects = await store.checkpoint(
        "r1", "w1", revision, 2, [], NextState(RunState.COMPLETED, output_json="1"), NOW, NOW + LEASE
    )
    assert effects.result == "duplicate" and effects.finished == []
    assert (await store.get_run("r1")).state is RunState.RUNNING  # type: ignore[union-attr]


async def test_a_checkpoint_skipping_a_seq_is_a_conflict(store: Store) -> None:
    revision = await claimed(store)
    with pytest.raises(ApiError) as info:
        await store.checkpoint("r1", "w1", revision, 2, [completed_task()], None, NOW, NOW + LEASE)
    assert error_code(info) is ErrorCode.CONFLICT
    assert await store.list_tasks("r1") == []
    assert (await store.checkpoint("r1", "w1", revision, 1, [], None, NOW, NOW + LEASE)).result == "applied"
    with pytest.raises(ApiError) as info:
        await store.checkpoint("r1", "w1", revision, 3, [completed_task()], None, NOW, NOW + LEASE)
    assert error_code(info) is ErrorCode.CONFLICT
    assert await store.list_tasks("r1") == []


async def test_an_expired_claim_is_requeued_and_its_holder_fenced(store: Store) -> None:
    revision = await claimed(store, at=NOW)
    assert await store.release_expired_claims(NOW + LEASE - 1) == []  # not expired yet
    assert (await store.get_run("r1")).state is RunState.RUNNING  # type: ignore[union-attr]

    assert await store.release_expired_claims(NOW + LEASE + 1) == [Q]
    run = await store.get_run("r1")
    assert run is not None
    assert (run.state, run.revision, run.worker_id) == (RunState.QUEUED, revision + 1, None)
    assert (await store.list_history("r1"))[-1]["state"] == "queued"

    with pytest.raises(ApiError) as info:
        await store.checkpoint(
            "r1", "w1", revision, 1, [completed_task()], NextState(RunState.COMPLETED, output_json="1"),
            NOW + LEASE + 2, NOW + 2 * LEASE,
        )  # fmt: skip
    assert error_code(info) is ErrorCode.FENCED
    assert await store.get_run("r1") == run
    assert await store.list_tasks("r1") == []
    assert await store.heartbeat("w1", [("r1", revision)], NOW + 2 * LEASE) == ["r1"]

    # Someone else claims it at the next revision and finishes it.
    [again] = await store.claim_runs("w2", [Q], 1, NOW + LEASE + 3, NOW + 2 * LEASE)
    assert again.run.revision == revision + 2
    effects = await store.checkpoint(
        "r1", "w2", again.run.revision, 1, [], NextState(RunState.COMPLETED, output_json="2"), NOW + LEASE + 4,
        NOW + 2 * LEASE,
    )  # fmt: skip
    assert effects.finished == ["r1"]


async def test_a_heartbeat_keeps_the_claim(store: Store) -> None:
    revision = await claimed(store, at=NOW)
    assert await store.heartbeat("w1", [("r1", revision)], NOW + 3 * LEASE) == []
    assert await store.release_expired_claims(NOW + 2 * LEASE) == []
    assert (await store.get_run("r1")).state is RunState.RUNNING  # type: ignore[union-attr]


async def test_promote_due_queues_a_scheduled_run_when_due(store: Store) -> None:
    run, _ = await store.insert_run(new_run("later", wake_at_ms=NOW + 1_000), NOW)
    assert (run.state, run.wake_at_ms) == (RunState.SCHEDULED, NOW + 1_000)
    assert await store.next_wake_at() == NOW + 1_000
    assert await store.claim_runs("w1", [Q], 1, NOW, NOW + LEASE) == []

    assert await store.promote_due(NOW + 999) == []
    assert (await store.get_run("later")).state is RunState.SCHEDULED  # type: ignore[union-attr]
    assert await store.promote_due(NOW + 1_000) == [Q]
    promoted = await store.get_run("later")
    assert promoted is not None and (promoted.state, promoted.wake_at_ms) == (RunState.QUEUED, None)
    assert await store.next_wake_at() is None
    assert await store.promote_due(NOW + 2_000) == []  # once only
    [claim] = await store.claim_runs("w1", [Q], 1, NOW + 1_001, NOW + LEASE)
    assert claim.run.id == "later"


async def test_a_run_due_at_insert_is_queued_at_once(store: Store) -> None:
    run, _ = await store.insert_run(new_run("past", wake_at_ms=NOW - 1), NOW)
    assert run.state is RunState.QUEUED and run.wake_at_ms is None


# -- cancellation ------------------------------------------------------------------------------


async def test_cancel_cascades_to_descendants_and_leaves_finished_runs(store: Store) -> None:
    await store.insert_run(new_run("root"), NOW)
    await store.insert_run(new_run("child", workflow="kid", parent_id="root"), NOW)
    await store.insert_run(new_run("grandchild", workflow="kid", parent_id="child", wake_at_ms=NOW + 10_000), NOW)
    await store.insert_run(new_run("done-child", workflow="done", parent_id="root"), NOW)
    await store.insert_run(new_run("bystander", workflow="kid"), NOW)
    [c] = await store.claim_runs("w1", ["done\x1f1"], 1, NOW, NOW + LEASE)
    await store.checkpoint(
        "done-child", "w1", c.run.revision, 1, [], NextState(RunState.COMPLETED, output_json='"fine"'), NOW, NOW + LEASE
    )
    # The child is being worked on when the cancel comes.
    [held] = await store.claim_runs("w2", ["kid\x1f1"], 1, NOW, NOW + LEASE, ["child"])
    done_before = await store.get_run("done-child")

    effects = await store.cancel_run("root", "no longer needed", NOW + 1)

    assert sorted(effects.finished) == ["child", "grandchild", "root"]
    for run_id in ("root", "child", "grandchild"):
        run = await store.get_run(run_id)
        assert run is not None and run.state is RunState.CANCELLED, run_id
        assert run.error_json is not None and "no longer needed" in run.error_json
        assert run.wake_at_ms is None and run.worker_id is None
    assert await store.get_run("done-child") == done_before
    assert (await store.get_run("bystander")).state is RunState.QUEUED  # type: ignore[union-attr]
    assert await store.next_wake_at() is None
    # The child's worker is fenced out.
    with pytest.raises(ApiError) as info:
        await store.checkpoint(
            "child",
            "w2",
            held.run.revision,
            1,
            [],
            NextState(RunState.COMPLETED, output_json="1"),
            NOW + 2,
            NOW + LEASE,
        )
    assert error_code(info) is ErrorCode.FENCED

    # Cancelling again, or cancelling a finished run, changes nothing.
    snapshot = {r: await store.get_run(r) for r in ("root", "child", "grandchild", "done-child")}
    assert (await store.cancel_run("root", "again", NOW + 3)).finished == []
    assert (await store.cancel_run("done-child", "too late", NOW + 3)).finished == []
    assert {r: await store.get_run(r) for r in snapshot} == snapshot


async def test_cancel_of_an_unknown_run_is_not_found(store: Store) -> None:
    with pytest.raises(ApiError) as info:
        await store.cancel_run("nope", None, NOW)
    assert error_code(info) is ErrorCode.NOT_FOUND


# -- what the first claim brings, and publication ---------------------------------------------------


async def test_a_first_claim_brings_the_events_sent_before_it_and_no_records(store: Store) -> None:
    await store.insert_run(new_run("r1"), NOW)
    await store.send_event("r1", "go", '{"n":1}', None, NOW + 1)
    await store.send_event("r1", "go", '"two"', None, NOW + 2)
    [claim] = await store.claim_runs("w1", [Q], 1, NOW + 3, NOW + LEASE, ["r1"])
    assert claim.run.revision == 1
    assert [(e["name"], e["data"]) for e in claim.events] == [("go", '{"n":1}'), ("go", '"two"')]
    assert (claim.tasks, claim.waits, claim.children) == ([], [], [])
    assert [h["state"] for h in await store.list_history("r1")] == ["queued", "running"]


async def test_a_final_checkpoint_records_the_task_the_state_and_the_history(store: Store) -> None:
    revision = await claimed(store)
    effects = await store.checkpoint(
        "r1", "w1", revision, 1, [completed_task("a"), completed_task("b")],
        NextState(RunState.COMPLETED, output_json='"done"'), NOW + 1, NOW + LEASE,
    )  # fmt: skip
    assert (effects.result, effects.finished) == ("applied", ["r1"])
    run = await store.get_run("r1")
    assert run is not None
    assert (run.state, run.output_json, run.worker_id) == (RunState.COMPLETED, '"done"', None)
    assert [t["name"] for t in await store.list_tasks("r1")] == ["a", "b"]
    assert [h["state"] for h in await store.list_history("r1")] == ["queued", "running", "completed"]
    # The worker is no longer the holder: anything more it sends is fenced.
    with pytest.raises(ApiError) as info:
        await store.checkpoint("r1", "w1", revision, 2, [completed_task("c")], None, NOW + 2, NOW + LEASE)
    assert error_code(info) is ErrorCode.FENCED


async def test_a_run_started_as_published_is_not_published_again_until_handed_back(store: Store) -> None:
    published: list[list[tuple[str, str]]] = []

    async def publish(ready: list[tuple[str, str]]) -> None:
        published.append(ready)

    await store.insert_run(new_run("mine"), NOW, published=True)
    await store.insert_run(new_run("theirs"), NOW)
    assert await store.publish_ready(NOW + 1, 10_000, 100, publish) == 1
    assert published == [[("theirs", Q)]]
    # Publishing "mine" failed: handed back, the next pass publishes it.
    await store.unpublish(["mine"])
    assert await store.publish_ready(NOW + 2, 10_000, 100, publish) == 1
    assert published[-1] == [("mine", Q)]
    # A message that may have been lost is published again after the delay.
    assert await store.publish_ready(NOW + 3, 10_000, 100, publish) == 0
    assert await store.publish_ready(NOW + 3 + 10_000 * 2, 10_000, 100, publish) == 2  # 2 × after the first time


async def test_concurrent_checkpoints_of_many_runs_each_apply_or_fail_on_their_own(store: Store) -> None:
    """On PostgreSQL concurrent steps share one statement: a step that does not apply there (a
    fenced worker, a duplicate, a run with a parent) must not hold back or spoil the others."""
    revisions = {f"r{i}": await claimed(store, f"r{i}") for i in range(12)}
    await store.checkpoint("r1", "w1", revisions["r1"], 1, [completed_task("first")], None, NOW, NOW + LEASE)

    async def step(run_id: str) -> object:
        revision, seq, worker = revisions[run_id], 1, "w1"
        if run_id == "r0":
            worker = "intruder"  # fenced
        if run_id == "r1":
            seq = 1  # a retry of the checkpoint above: a duplicate
        then = NextState(RunState.COMPLETED, output_json=f'"{run_id}"') if run_id in ("r2", "r3") else None
        try:
            effects = await store.checkpoint(
                run_id, worker, revision, seq, [completed_task(f"t-{run_id}")], then, NOW + 1, NOW + LEASE
            )
        except ApiError as exc:
            return exc.code
        return (effects.result, effects.finished)

    results = dict(zip(revisions, await asyncio.gather(*(step(r) for r in revisions)), strict=True))
    assert results["r0"] is ErrorCode.FENCED
    assert results["r1"] == ("duplicate", [])
    assert results["r2"] == ("applied", ["r2"]) and results["r3"] == ("applied", ["r3"])
    assert all(results[f"r{i}"] == ("applied", []) for i in range(4, 12))
    assert await store.list_tasks("r0") == []
    assert [t["name"] for t in await store.list_tasks("r1")] == ["first"]
    for i in range(2, 12):
        assert [t["name"] for t in await store.list_tasks(f"r{i}")] == [f"t-r{i}"]
    assert (await store.get_run("r2")).state is RunState.COMPLETED  # type: ignore[union-attr]
    assert (await store.get_run("r4")).state is RunState.RUNNING  # type: ignore[union-attr]


async def test_a_deadlock_between_two_postgresql_writers_is_a_retryable_503() -> None:
    """Two writers locking the same runs in opposite orders: PostgreSQL breaks the cycle by
    aborting one, which must reach the caller as a retryable 503 (nothing written), not a 500."""
    with fresh_pg_database() as url:
        store = open_store(url)
        await store.open()
        try:
            for run_id in ("a", "b"):
                await store.insert_run(new_run(run_id), NOW)
            backend = store.backend  # type: ignore[attr-defined]
            both_hold_one = asyncio.Barrier(2)

            async def writer(first: str, second: str) -> object:
                try:
                    async with backend.transaction() as tx:
                        await tx.execute("UPDATE runs SET updated_at = $1 WHERE id = $2", NOW + 1, first)
                        await both_hold_one.wait()
                        await tx.execute("UPDATE runs SET updated_at = $1 WHERE id = $2", NOW + 2, second)
                except ApiError as exc:
                    return exc.code
                return "committed"

            outcomes = await asyncio.gather(writer("a", "b"), writer("b", "a"))
            assert sorted(map(str, outcomes)) == sorted(["committed", str(ErrorCode.UNAVAILABLE)])
        finally:
            await store.close()


async def test_sqlite_group_commit_keeps_each_transaction_whole_and_durable_on_return(
    sqlite_store: Store, sqlite_path: Path
) -> None:
    """Concurrent writes share commits; each returns only once its writes are committed (another
    connection sees them), and one that fails leaves nothing behind while the others stay."""
    backend = sqlite_store.backend  # type: ignore[attr-defined]
    commits = 0
    commit = backend._commit

    async def counted_commit(conn: sqlite3.Connection) -> None:
        nonlocal commits
        commits += 1
        await commit(conn)

    backend._commit = counted_commit

    def committed_ids() -> set[str]:
        with sqlite3.connect(sqlite_path) as other:
            return {r[0] for r in other.execute("SELECT id FROM runs")}

    async def write(i: int) -> str:
        try:
            async with backend.transaction() as tx:
                await tx.execute(
                    "INSERT INTO runs (id, workflow, version, queue, state, input, input_hash, created_at, updated_at)"
                    " VALUES ($1, 'wf', '1', $2, 'queued', 'null', 'h', $3, $3)",
                    f"r{i}",
                    Q,
                    NOW,
                )
                await asyncio.sleep(0)  # let the others queue up behind this one
                if i == 7:
                    raise RuntimeError("this one changes its mind")
        except RuntimeError:
            return "rolled back"
        assert f"r{i}" in committed_ids()  # durable before the transaction returned
        return "committed"

    outcomes = await asyncio.gather(*(write(i) for i in range(20)))
    assert outcomes.count("rolled back") == 1 and outcomes[7] == "rolled back"
    assert committed_ids() == {f"r{i}" for i in range(20) if i != 7}
    assert 1 <= commits < 20  # they shared commits
