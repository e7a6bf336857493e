"""Runs through the SDK against the in-process server, with no worker: starting (idempotent,
delayed), reading, waiting, cancelling; and a claim whose worker goes silent, over raw HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from aiki_client import Client, Conflict, NotFound, RunCancelled, RunHandle, WorkflowRun, workflow
from aiki_server import Server

signup = workflow("signup")


@signup.v("1")
async def signup_v1(run: WorkflowRun, inp: dict[str, Any]) -> dict[str, Any]:
    return inp  # never executed here: no worker runs in these tests


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as h:
        yield h


async def raw_run(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    resp = await http.get(f"/v1/runs/{run_id}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def claim(http: httpx.AsyncClient, workflow_name: str, worker_id: str = "w1") -> dict[str, Any]:
    resp = await http.post(
        "/v1/claims", json={"worker_id": worker_id, "workflows": [{"name": workflow_name, "version": "1"}]}
    )
    assert resp.status_code == 200, resp.text
    [run] = resp.json()["runs"]
    return dict(run)


async def complete(http: httpx.AsyncClient, run_id: str, revision: int, output: Any, worker_id: str = "w1") -> None:
    body = {"worker_id": worker_id, "revision": revision, "seq": 1, "then": {"state": "completed", "output": output}}
    resp = await http.post(f"/v1/runs/{run_id}/checkpoint", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"result": "applied"}


async def poll_state(handle: RunHandle, want: str, within_s: float) -> float:
    """Seconds until the run is in state `want` (fails after `within_s`)."""
    started = time.monotonic()
    while (state := (await handle.get_status()).state) != want:
        assert time.monotonic() - started < within_s, f"run {handle.id} still {state}, not {want}, after {within_s} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_start_returns_a_queued_run(client: Client, http: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    handle = await signup_v1.start(client, {"email": "a@b.c"})
    status = await handle.get_status()
    assert status.id == handle.id and handle.id
    assert (status.workflow, status.version, status.state) == ("signup", "1", "queued")
    assert (status.output, status.error, status.attempts, status.reference_id) == (None, None, 1, None)
    assert not status.finished
    assert before - timedelta(seconds=1) <= status.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    raw = await raw_run(http, handle.id)
    assert (raw["input"], raw["revision"]) == ({"email": "a@b.c"}, 0)
    assert (await client.get_run(handle.id)).id == handle.id


async def test_start_with_a_reference_id_is_idempotent(client: Client, http: httpx.AsyncClient) -> None:
    first = await signup_v1.start(client, {"email": "a@b.c"}, reference_id="user-42")
    again = await signup_v1.start(client, {"email": "a@b.c"}, reference_id="user-42")
    assert again.id == first.id
    assert (await first.get_status()).reference_id == "user-42"

    with pytest.raises(Conflict, match="user-42"):
        await signup_v1.start(client, {"email": "other@b.c"}, reference_id="user-42")
    # Another workflow may use the same reference id for a run of its own.
    other = await client.start_run("other-workflow", "1", {"email": "other@b.c"}, reference_id="user-42")
    assert other.id != first.id
    listed = (await http.get("/v1/runs", params={"reference_id": "user-42"})).json()["runs"]
    assert sorted(r["id"] for r in listed) == sorted([first.id, other.id])
    assert (await raw_run(http, first.id))["input"] == {"email": "a@b.c"}


async def test_a_delayed_run_is_scheduled_then_queued_when_due(client: Client) -> None:
    handle = await signup_v1.start(client, {"email": "a@b.c"}, delay=timedelta(milliseconds=800))
    assert (await handle.get_status()).state == "scheduled"
    waited = await poll_state(handle, "queued", within_s=5)
    assert waited >= 0.5  # not queued early (some of the 800 ms went by before the first poll)


async def test_start_at_schedules_in_the_future_and_queues_a_past_time_now(client: Client) -> None:
    future = await client.start_run("wf", "1", None, start_at=datetime.now(UTC) + timedelta(hours=1))
    past = await client.start_run("wf", "1", None, start_at=datetime.now(UTC) - timedelta(hours=1))
    assert (await future.get_status()).state == "scheduled"
    assert (await past.get_status()).state == "queued"


async def test_cancel_ends_the_run_and_wait_for_completion_raises(client: Client, http: httpx.AsyncClient) -> None:
    handle = await signup_v1.start(client, {"email": "a@b.c"})
    status = await handle.cancel("changed my mind")
    assert status.state == "cancelled" and status.finished
    assert status.error is not None and "changed my mind" in status.error["message"]
    with pytest.raises(RunCancelled) as info:
        await handle.wait_for_completion(timeout=5)
    assert info.value.run_id == handle.id
    assert "changed my mind" in str(info.value)
    # Nothing is left to claim.
    resp = await http.post("/v1/claims", json={"worker_id": "w", "workflows": [{"name": "signup", "version": "1"}]})
    assert resp.json() == {"runs": []}


async def test_cancelling_a_cancelled_run_leaves_it_as_it_is(client: Client, http: httpx.AsyncClient) -> None:
    handle = await client.start_run("wf", "1", None, delay=timedelta(hours=1))
    await handle.cancel("first reason")
    before = await raw_run(http, handle.id)
    status = await handle.cancel("second reason")
    assert status.state == "cancelled"
    after = await raw_run(http, handle.id)
    assert after == before
    assert "first reason" in after["error"]["message"]


async def test_cancelling_a_completed_run_leaves_it_as_it_is(client: Client, http: httpx.AsyncClient) -> None:
    handle = await client.start_run("finishing", "1", {"n": 1})
    claimed = await claim(http, "finishing")
    await complete(http, handle.id, claimed["revision"], {"done": True})
    before = await raw_run(http, handle.id)

    status = await handle.cancel("too late")

    assert (status.state, status.output, status.error) == ("completed", {"done": True}, None)
    assert await raw_run(http, handle.id) == before
    assert await handle.wait_for_completion(timeout=1) == {"done": True}


async def test_wait_for_completion_returns_the_output_once_the_run_completes(
    client: Client, http: httpx.AsyncClient
) -> None:
    handle = await client.start_run("finishing", "1", {"n": 1})
    waiter = asyncio.create_task(handle.wait_for_completion(timeout=10))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    claimed = await claim(http, "finishing")
    started = time.monotonic()
    await complete(http, handle.id, claimed["revision"], [1, 2, 3])
    assert await waiter == [1, 2, 3]
    assert time.monotonic() - started < 2  # the long-poll was woken, not left to time out


async def test_get_run_of_an_unknown_id_raises_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match="no-such-run"):
        await client.get_run("no-such-run")
    with pytest.raises(NotFound):
        await RunHandle(client, "no-such-run").wait_for_completion(timeout=1)


async def test_wait_for_completion_times_out_on_a_queued_run(client: Client) -> None:
    handle = await client.start_run("wf", "1", None)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="queued"):
        await handle.wait_for_completion(timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3, elapsed
    assert (await handle.get_status()).state == "queued"


async def test_a_silent_claim_is_requeued_and_its_late_writes_are_fenced(
    client: Client, http: httpx.AsyncClient
) -> None:
    """The server's claim idle timeout is 2 s here: a worker that claims and never heartbeats
    loses the run, which goes back to the queue at a new revision; its late writes are refused."""
    handle = await client.start_run("silent", "1", {"n": 1})
    claimed = await claim(http, "silent", worker_id="sleepy")
    assert claimed["id"] == handle.id
    old_revision = claimed["revision"]
    assert (await raw_run(http, handle.id))["state"] == "running"

    waited = await poll_state(handle, "queued", within_s=6)
    assert waited >= 1.0  # held for (about) the idle timeout first, not released at once
    requeued = await raw_run(http, handle.id)
    assert requeued["revision"] > old_revision
    history = (await http.get(f"/v1/runs/{handle.id}/history")).json()["history"]
    assert [h["state"] for h in history] == ["queued", "running", "queued"]

    # The old holder wakes up: its checkpoint and its heartbeat are refused.
    late = {
        "worker_id": "sleepy",
        "revision": old_revision,
        "seq": 1,
        "tasks": [{"address": "t:1", "name": "t", "state": "completed", "attempts": 1, "output": 1}],
        "then": {"state": "completed", "output": "late"},
    }
    resp = await http.post(f"/v1/runs/{handle.id}/checkpoint", json=late)
    assert resp.status_code == 409, resp.text
    assert resp.json()["error"]["code"] == "fenced"
    resp = await http.post(
        "/v1/heartbeats", json={"worker_id": "sleepy", "runs": [{"id": handle.id, "revision": old_revision}]}
    )
    assert resp.json() == {"lost": [handle.id]}
    assert await raw_run(http, handle.id) == requeued
    assert (await http.get(f"/v1/runs/{handle.id}/tasks")).json()["tasks"] == []

    # Another worker claims it at a newer revision and finishes it; the old holder is still fenced.
    again = await claim(http, "silent", worker_id="fresh")
    assert again["revision"] > requeued["revision"]
    late["revision"] = again["revision"]
    resp = await http.post(f"/v1/runs/{handle.id}/checkpoint", json=late)  # right revision, wrong worker
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "fenced"
    await complete(http, handle.id, again["revision"], "on time", worker_id="fresh")
    assert await handle.wait_for_completion(timeout=2) == "on time"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # timing, not storage: once is enough
async def test_a_heartbeating_claim_is_kept_past_the_idle_timeout(client: Client, http: httpx.AsyncClient) -> None:
    handle = await client.start_run("busy", "1", None)
    claimed = await claim(http, "busy", worker_id="diligent")
    deadline = time.monotonic() + 2.8  # past the 2 s idle timeout and a sweep
    while time.monotonic() < deadline:
        resp = await http.post(
            "/v1/heartbeats",
            json={"worker_id": "diligent", "runs": [{"id": handle.id, "revision": claimed["revision"]}]},
        )
        assert resp.json() == {"lost": []}
        await asyncio.sleep(0.4)
    run = await raw_run(http, handle.id)
    assert (run["state"], run["revision"]) == ("running", claimed["revision"])
