"""Durable waits through a real server process and real worker processes: sleeps, events,
child runs, cancellation, delayed starts, pause/resume and schedules."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aiki_client import Client, Conflict, RunCancelled, connect, schedule

from ..procs import ServerProcess, WorkerProcess
from . import worker_app as app
from .conftest import effects_of

SpawnWorker = Callable[..., WorkerProcess]


@pytest.fixture
async def aiki(shared_server: ServerProcess, shared_worker: WorkerProcess) -> AsyncIterator[Client]:
    async with await connect(shared_server.url) as client:
        yield client


async def wait_for_state(handle: object, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (current := (await handle.get_status()).state) != state:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise AssertionError(f"still {current}, expected {state}")
        await asyncio.sleep(0.02)


# -- sleeps -------------------------------------------------------------------------------------


async def test_sleep_resumes_after_its_deadline_and_not_before(aiki: Client) -> None:
    handle = await app.sleeper_v1.start(aiki, {"seconds": 1.0})
    await wait_for_state(handle, "sleeping")
    await asyncio.sleep(0.5)
    assert (await handle.get_status()).state == "sleeping"  # no worker holds it meanwhile
    out = await handle.wait_for_completion(timeout=10)
    assert 1.0 <= out["after"] - out["before"] < 2.0


async def test_wakeup_ends_a_sleep_early(aiki: Client) -> None:
    handle = await app.sleeper_v1.start(aiki, {"seconds": 3600})
    await wait_for_state(handle, "sleeping")
    await handle.wakeup()
    out = await handle.wait_for_completion(timeout=10)
    assert out["after"] - out["before"] < 60


async def test_hundred_sleeping_runs_wake_within_a_second_of_their_deadline(aiki: Client) -> None:
    handles = await asyncio.gather(*(app.sleeper_v1.start(aiki, {"seconds": 1.0}) for _ in range(100)))
    outputs = await asyncio.gather(*(h.wait_for_completion(timeout=30) for h in handles))
    lateness = [o["after"] - o["before"] - 1.0 for o in outputs]
    assert min(lateness) >= 0, "a sleep ended before its deadline"
    assert max(lateness) < 1.0, f"latest wake {max(lateness):.3f} s after its deadline"
    assert statistics.median(lateness) < 0.5


async def test_sleep_survives_a_worker_kill_and_a_server_restart(
    server_process: ServerProcess, spawn_worker: SpawnWorker, effects_dir: Path
) -> None:
    first = spawn_worker(server_process, only="sleeper@1")
    async with await connect(server_process.url) as aiki:
        handle = await app.sleeper_v1.start(aiki, {"seconds": 2.0})
        await wait_for_state(handle, "sleeping")
        first.kill()
        server_process.kill()
        await asyncio.sleep(2.5)  # the deadline passes while nothing runs
        server_process.start()
        spawn_worker(server_process, only="sleeper@1")
        out = await handle.wait_for_completion(timeout=20)
    assert out["after"] - out["before"] >= 2.0
    # The clock read before the sleep was recorded: it did not run again after the crashes.
    assert [e["detail"] for e in effects_of(effects_dir, handle.id)] == ["before", "after"]


# -- events ---------------------------------------------------------------------------------------


async def test_event_sent_before_the_wait_is_kept(aiki: Client) -> None:
    handle = await app.waiter_v1.start(aiki, {"name": "approved", "timeout": 30})
    await handle.send_event("approved", {"by": "ada"})  # likely before the worker even claimed it
    assert await handle.wait_for_completion(timeout=10) == [[True, {"by": "ada"}]]


async def test_events_of_one_name_arrive_in_order_and_reference_ids_dedup(aiki: Client) -> None:
    handle = await app.waiter_v1.start(aiki, {"name": "tick", "count": 3})
    await handle.send_event("tick", 1, reference_id="a")
    await handle.send_event("tick", 1, reference_id="a")  # the same reference id: ignored
    await wait_for_state(handle, "awaiting_event")
    await handle.send_event("tick", 2, reference_id="b")
    await aiki.send_event(handle.id, "tick", 3)
    assert await handle.wait_for_completion(timeout=10) == [[True, 1], [True, 2], [True, 3]]
    with pytest.raises(Conflict):
        await handle.send_event("tick", 4)  # the run has finished


async def test_event_wait_times_out(aiki: Client) -> None:
    handle = await app.waiter_v1.start(aiki, {"name": "never-sent", "timeout": 0.5})
    started = time.monotonic()
    assert await handle.wait_for_completion(timeout=10) == [[False, None]]
    assert time.monotonic() - started >= 0.5


async def test_several_waits_at_once(aiki: Client) -> None:
    handle = await app.waiter_gather.start(aiki, {"names": ["a", "b", "c"]})
    await wait_for_state(handle, "awaiting_event")
    for name in ("c", "a", "b"):
        await handle.send_event(name, name.upper())
    assert await handle.wait_for_completion(timeout=10) == ["A", "B", "C"]


async def test_events_sent_while_runs_suspend_are_not_lost(aiki: Client) -> None:
    """Each event is sent the moment its run is seen running: some land while the worker is
    suspending the run. None may be lost."""
    handles = await asyncio.gather(*(app.waiter_v1.start(aiki, {"name": "go"}) for _ in range(40)))

    async def send_when_running(handle: object) -> None:
        while (await handle.get_status()).state in ("queued", "scheduled"):  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        await handle.send_event("go", "now")  # type: ignore[attr-defined]

    await asyncio.gather(*(send_when_running(h) for h in handles))
    outputs = await asyncio.gather(*(h.wait_for_completion(timeout=20) for h in handles))
    assert outputs == [[[True, "now"]]] * 40


async def test_multicast_reports_what_was_sent_and_what_failed(aiki: Client) -> None:
    a = await app.waiter_v1.start(aiki, {"name": "broadcast"}, reference_id="mc-a")
    b = await app.waiter_v1.start(aiki, {"name": "broadcast"}, reference_id="mc-b")
    result = await aiki.send_event_to_many(
        "broadcast", {"n": 1}, run_ids=[a.id, "no-such-run"], workflow="waiter", reference_ids=["mc-b", "mc-missing"]
    )
    assert sorted(result.sent) == sorted([a.id, b.id])
    assert set(result.failed) == {"no-such-run", "mc-missing"}
    assert result.failed["no-such-run"]["code"] == "not_found"
    for h in (a, b):
        assert await h.wait_for_completion(timeout=10) == [[True, {"n": 1}]]


# -- children and cancellation -------------------------------------------------------------------


async def test_fan_out_to_twenty_children(aiki: Client) -> None:
    handle = await app.parent_v1.start(aiki, {"inputs": list(range(20))})
    out = await handle.wait_for_completion(timeout=30)
    assert out["outcomes"] == [{"output": i * 10} for i in range(20)]
    assert len(set(out["children"])) == 20
    for child_id in out["children"]:
        assert (await (await aiki.get_run(child_id)).get_status()).state == "completed"


async def test_child_failure_and_cancellation_reach_the_parent(aiki: Client) -> None:
    handle = await app.parent_v1.start(aiki, {"inputs": [1, "fail", "hang"]})
    await wait_for_state(handle, "awaiting_child")
    # Find the hanging child (it waits for an event that never comes) and cancel it.
    hanging = None
    deadline = time.monotonic() + 10
    while hanging is None and time.monotonic() < deadline:
        for child_id in await _runs_with_parent(aiki, handle.id):
            child = await aiki.get_run(child_id)
            if (await child.get_status()).state == "awaiting_event":
                hanging = child
        await asyncio.sleep(0.05)
    assert hanging is not None
    await hanging.cancel("not needed")
    out = await handle.wait_for_completion(timeout=10)
    assert out["outcomes"][0] == {"output": 10}
    assert out["outcomes"][1]["error"] == "RunFailed" and "the child failed" in out["outcomes"][1]["detail"]
    assert out["outcomes"][2]["error"] == "RunCancelled" and "not needed" in out["outcomes"][2]["detail"]


async def test_cancellation_cascades_three_levels(aiki: Client) -> None:
    handle = await app.parent_v1.start(aiki, {"inputs": [{"grandchild": "hang"}]})
    await wait_for_state(handle, "awaiting_child")
    child_id = None
    grandchild_id = None
    deadline = time.monotonic() + 10
    while grandchild_id is None and time.monotonic() < deadline:
        runs = await _runs_with_parent(aiki, handle.id)
        if runs:
            child_id = runs[0]
            grand = await _runs_with_parent(aiki, child_id)
            grandchild_id = grand[0] if grand else None
        await asyncio.sleep(0.05)
    assert child_id and grandchild_id
    await handle.cancel("stop everything")
    for run_id in (handle.id, child_id, grandchild_id):
        status = await (await aiki.get_run(run_id)).get_status()
        assert status.state == "cancelled", (run_id, status.state)
    with pytest.raises(RunCancelled):
        await handle.wait_for_completion(timeout=5)


async def _runs_with_parent(aiki: Client, parent_id: str) -> list[str]:
    tasks = (await aiki._transport.request("GET", f"/v1/runs/{parent_id}/tasks"))["tasks"]
    return [t["output"]["child_id"] for t in tasks if t["name"].startswith("child:")]


# -- delayed start, pause/resume, schedules --------------------------------------------------------


async def test_delayed_start(aiki: Client) -> None:
    handle = await app.echo_v1.start(aiki, "later", delay=timedelta(seconds=1))
    assert (await handle.get_status()).state == "scheduled"
    await asyncio.sleep(0.6)
    assert (await handle.get_status()).state == "scheduled"
    assert await handle.wait_for_completion(timeout=10) == "later"
    at = await app.echo_v1.start(aiki, "at", start_at=datetime.now(UTC) + timedelta(seconds=0.5))
    assert (await at.get_status()).state == "scheduled"
    assert await at.wait_for_completion(timeout=10) == "at"


async def test_pause_and_resume(aiki: Client) -> None:
    handle = await app.waiter_v1.start(aiki, {"name": "resume-me"})
    await wait_for_state(handle, "awaiting_event")
    await handle.pause()
    await handle.send_event("resume-me", "x")
    await asyncio.sleep(0.5)
    assert (await handle.get_status()).state == "paused"  # the event is kept, the run stays paused
    await handle.resume()
    assert await handle.wait_for_completion(timeout=10) == [[True, "x"]]


async def test_schedule_every_second_and_skip_overlap(aiki: Client) -> None:
    quick = await schedule(every=timedelta(seconds=1)).activate(aiki, app.echo_v1, "tick", reference_id="each-second")
    again = await schedule(every=timedelta(seconds=1)).activate(aiki, app.echo_v1, "tick", reference_id="each-second")
    assert again.id == quick.id
    slow = await schedule(every=timedelta(seconds=1), overlap="skip").activate(aiki, app.sleeper_v1, {"seconds": 2.5})
    await asyncio.sleep(4.3)
    await quick.pause()
    await slow.pause()
    fired = await quick.get()
    assert 3 <= fired.fired <= 5 and fired.skipped == 0 and fired.state == "paused"
    skipping = await slow.get()
    # Every firing while the 2.5 s run is still going is skipped.
    assert skipping.fired >= 1 and skipping.skipped >= 2
    assert skipping.fired + skipping.skipped in (3, 4, 5)
    listed = {s.id for s in await aiki.list_schedules()}
    assert {quick.id, slow.id} <= listed
    await quick.delete()
    assert quick.id not in {s.id for s in await aiki.list_schedules()}
