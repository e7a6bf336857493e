"""Bad input against the real server: every malformed request gets a 4xx with a JSON error body
naming the right code, and changes nothing that is stored. The SDK turns these answers into the
matching exceptions, and refuses what it can catch itself before sending anything."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from aiki_client import Client, Conflict, InvalidRequest, NotFound, RunHandle, connect
from aiki_client.wire import MAX_BODY_BYTES
from aiki_server import Server

from ..conftest import fresh_pg_database

WORKER = "worker-1"

# The table of bad requests runs against one server per database (module-scoped: a server per
# case would cost most of this file's runtime); each case gets runs of its own workflows.
on_shared_server = pytest.mark.asyncio(loop_scope="module")


@dataclass(frozen=True)
class Ctx:
    known_wf: str
    known_id: str  # a queued run of known_wf with reference_id "known" and input {"n": 1}
    claimed_wf: str
    claimed_id: str  # a run of claimed_wf held by WORKER at `revision`
    revision: int


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('bad-input') / 'aiki.db'}"
    else:
        with fresh_pg_database() as url:
            yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_server(shared_db_url: str) -> AsyncIterator[Server]:
    async with Server(database_url=shared_db_url, port=0, claim_idle_timeout_ms=60_000) as srv:
        yield srv


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_http(shared_server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=shared_server.url, timeout=10) as h:
        yield h


@pytest_asyncio.fixture(loop_scope="module")
async def ctx(shared_http: httpx.AsyncClient) -> Ctx:
    http = shared_http
    suffix = uuid.uuid4().hex[:8]
    known_wf, claimed_wf = f"bad-input-{suffix}", f"bad-input-claimed-{suffix}"
    resp = await http.post(
        "/v1/runs", json={"workflow": known_wf, "version": "1", "input": {"n": 1}, "reference_id": "known"}
    )
    assert resp.status_code == 201, resp.text
    known_id = resp.json()["id"]
    resp = await http.post("/v1/runs", json={"workflow": claimed_wf, "version": "1", "input": None})
    assert resp.status_code == 201, resp.text
    resp = await http.post(
        "/v1/claims", json={"worker_id": WORKER, "workflows": [{"name": claimed_wf, "version": "1"}]}
    )
    assert resp.status_code == 200, resp.text
    [claimed] = resp.json()["runs"]
    return Ctx(known_wf, known_id, claimed_wf, claimed["id"], claimed["revision"])


async def snapshot(http: httpx.AsyncClient, c: Ctx) -> dict[str, Any]:
    """Everything a bad request could have touched: every run there is (state, revision, input,
    output, update time), plus the recorded tasks and history of this case's runs."""
    resp = await http.get("/v1/runs", params={"limit": 500})
    assert resp.status_code == 200, resp.text
    runs = {r["id"]: r for r in resp.json()["runs"]}
    assert {c.known_id, c.claimed_id} <= set(runs)
    details: dict[str, Any] = {}
    for run_id in (c.known_id, c.claimed_id):
        tasks = (await http.get(f"/v1/runs/{run_id}/tasks")).json()["tasks"]
        history = (await http.get(f"/v1/runs/{run_id}/history")).json()["history"]
        details[run_id] = (tasks, history)
    return {"runs": runs, "details": details}


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, f"{resp.status_code}: {resp.text[:300]}"
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"code", "message"}, body
    assert err["code"] == code, body
    assert isinstance(err["message"], str) and err["message"].strip(), body
    return err


def start(c: Ctx, **fields: Any) -> dict[str, Any]:
    return {"method": "POST", "url": "/v1/runs", "json": {"workflow": c.known_wf, "version": "1", **fields}}


def checkpoint(c: Ctx, **fields: Any) -> dict[str, Any]:
    body = {"worker_id": WORKER, "revision": c.revision, "seq": 1, **fields}
    return {"method": "POST", "url": f"/v1/runs/{c.claimed_id}/checkpoint", "json": body}


def claims(**fields: Any) -> dict[str, Any]:
    return {"method": "POST", "url": "/v1/claims", "json": {"worker_id": "worker-2", **fields}}


DEEP = ("[" * 5000 + "]" * 5000).encode()

# name -> (request for a context, expected status, expected code, a word the message must contain)
CASES: dict[str, tuple[Callable[[Ctx], dict[str, Any]], int, str, str]] = {
    "body_not_json": (
        lambda c: {"method": "POST", "url": "/v1/runs", "content": b'{"workflow": "x", "version":'},
        400, "invalid_request", "JSON",
    ),
    "body_json_array": (
        lambda c: {"method": "POST", "url": "/v1/runs", "json": [{"workflow": c.known_wf, "version": "1"}]},
        400, "invalid_request", "object",
    ),
    "body_nested_too_deep": (
        lambda c: {"method": "POST", "url": "/v1/runs", "content": b'{"workflow":"w","version":"1","input":' + DEEP + b"}"},
        400, "invalid_request", "JSON",
    ),
    "missing_workflow": (
        lambda c: {"method": "POST", "url": "/v1/runs", "json": {"version": "1", "input": {"n": 1}}},
        400, "invalid_request", "workflow",
    ),
    "workflow_is_an_int": (
        lambda c: {"method": "POST", "url": "/v1/runs", "json": {"workflow": 7, "version": "1"}},
        400, "invalid_request", "workflow",
    ),
    "empty_version": (lambda c: start(c, version=""), 400, "invalid_request", "version"),
    "workflow_with_control_chars": (lambda c: start(c, workflow="a\nb"), 400, "invalid_request", "workflow"),
    "bad_run_id": (lambda c: start(c, id="has spaces"), 400, "invalid_request", "id"),
    "negative_delay": (lambda c: start(c, delay_ms=-1), 400, "invalid_request", "delay_ms"),
    "delay_and_start_at": (
        lambda c: start(c, delay_ms=1000, start_at_ms=1_900_000_000_000), 400, "invalid_request", "start_at_ms",
    ),
    "delay_is_a_bool": (lambda c: start(c, delay_ms=True), 400, "invalid_request", "delay_ms"),
    "delay_is_a_float": (lambda c: start(c, delay_ms=1.5), 400, "invalid_request", "delay_ms"),
    "reference_id_reused_with_other_input": (
        lambda c: start(c, input={"n": 2}, reference_id="known"), 409, "conflict", "known",
    ),
    "reference_id_reused_with_other_version": (
        lambda c: start(c, version="2", input={"n": 1}, reference_id="known"), 409, "conflict", "version",
    ),
    "get_unknown_run": (lambda c: {"method": "GET", "url": "/v1/runs/no-such-run"}, 404, "not_found", "no-such-run"),
    "cancel_unknown_run": (
        lambda c: {"method": "POST", "url": "/v1/runs/no-such-run/cancel", "json": {}}, 404, "not_found", "no-such-run",
    ),
    "event_to_unknown_run": (
        lambda c: {"method": "POST", "url": "/v1/runs/no-such-run/events", "json": {"name": "x"}},
        404, "not_found", "no-such-run",
    ),
    "wait_ms_not_an_integer": (
        lambda c: {"method": "GET", "url": f"/v1/runs/{c.known_id}", "params": {"wait_ms": "soon"}},
        400, "invalid_request", "wait_ms",
    ),
    "wait_ms_negative": (
        lambda c: {"method": "GET", "url": f"/v1/runs/{c.known_id}", "params": {"wait_ms": "-5"}},
        400, "invalid_request", "wait_ms",
    ),
    "unknown_endpoint": (lambda c: {"method": "GET", "url": "/v1/nothing-here"}, 404, "not_found", "/v1/nothing-here"),
    "wrong_method": (
        lambda c: {"method": "DELETE", "url": f"/v1/runs/{c.known_id}"}, 405, "method_not_allowed", "DELETE",
    ),
    "claims_without_workflows": (lambda c: claims(), 400, "invalid_request", "workflows"),
    "claims_with_empty_workflows": (lambda c: claims(workflows=[]), 400, "invalid_request", "workflows"),
    "claims_with_max_runs_0": (
        lambda c: claims(workflows=[{"name": c.known_wf, "version": "1"}], max_runs=0), 400, "invalid_request", "max_runs",
    ),
    "checkpoint_bad_task_state": (
        lambda c: checkpoint(c, tasks=[{"address": "t:1", "name": "t", "state": "exploded", "attempts": 1}]),
        400, "invalid_request", "state",
    ),
    "checkpoint_then_queued": (
        lambda c: checkpoint(c, then={"state": "queued"}), 400, "invalid_request", "queued",
    ),
    "checkpoint_sleeping_without_wake_at": (
        lambda c: checkpoint(c, then={"state": "sleeping"}), 400, "invalid_request", "wake_at_ms",
    ),
    "checkpoint_wrong_revision": (
        lambda c: checkpoint(c, revision=c.revision + 7, then={"state": "completed", "output": 1}),
        409, "fenced", "revision",
    ),
    "checkpoint_by_another_worker": (
        lambda c: checkpoint(c, worker_id="worker-2", then={"state": "completed", "output": 1}), 409, "fenced", "worker-2",
    ),
    "checkpoint_unknown_run": (
        lambda c: {**checkpoint(c), "url": "/v1/runs/no-such-run/checkpoint"}, 404, "not_found", "no-such-run",
    ),
    "heartbeat_runs_not_a_list": (
        lambda c: {"method": "POST", "url": "/v1/heartbeats", "json": {"worker_id": WORKER, "runs": c.claimed_id}},
        400, "invalid_request", "runs",
    ),
}  # fmt: skip


@on_shared_server
@pytest.mark.parametrize("case", list(CASES))
async def test_malformed_request_gets_a_json_4xx_and_changes_nothing(
    shared_http: httpx.AsyncClient, ctx: Ctx, case: str
) -> None:
    http = shared_http
    make_request, status, code, word = CASES[case]
    before = await snapshot(http, ctx)

    resp = await http.request(**make_request(ctx))

    err = assert_error(resp, status, code)
    assert word in err["message"], err
    assert await snapshot(http, ctx) == before
    # The claim is intact and checkpoint 1 is still unused: the holder's first checkpoint applies.
    resp = await http.post(f"/v1/runs/{ctx.claimed_id}/checkpoint", json=checkpoint(ctx)["json"])
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"result": "applied"}


@on_shared_server
async def test_oversized_body_announced_by_content_length_gets_413(
    shared_http: httpx.AsyncClient, shared_server: Server, ctx: Ctx
) -> None:
    """A body announced beyond what the server reads at all (4× the limit) is refused at once,
    from the headers alone; bodies between the limit and that are read and refused (next test)."""
    before = await snapshot(shared_http, ctx)
    reader, writer = await asyncio.open_connection("127.0.0.1", shared_server.port)
    try:
        writer.write(
            b"POST /v1/runs HTTP/1.1\r\nHost: aiki\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (4 * MAX_BODY_BYTES + 1)
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"application/json" in head.lower()
    err = json.loads(payload)["error"]
    assert err["code"] == "payload_too_large" and err["message"]
    assert await snapshot(shared_http, ctx) == before


@on_shared_server
async def test_oversized_body_sent_in_full_gets_413(shared_http: httpx.AsyncClient, ctx: Ctx) -> None:
    """An ordinary client sends the whole body before reading the answer: it must still get the
    413 (not a reset connection), and nothing is stored."""
    before = await snapshot(shared_http, ctx)
    body = b'{"workflow":"w","version":"1","input":"' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    try:
        resp = await shared_http.post("/v1/runs", content=body, headers={"content-type": "application/json"})
    except httpx.TransportError as exc:
        pytest.fail(f"the server dropped the connection instead of answering 413: {exc!r}")
    assert_error(resp, 413, "payload_too_large")
    assert await snapshot(shared_http, ctx) == before


@on_shared_server
async def test_integer_beyond_64_bits_is_kept_exactly_or_refused(shared_http: httpx.AsyncClient, ctx: Ctx) -> None:
    """JSON allows integers of any size. The server must store the input it was given, or refuse
    it with a 400 — never silently store a rounded float in its place."""
    big = 2**70 + 1
    content = json.dumps({"workflow": ctx.known_wf, "version": "1", "input": {"n": big}}).encode()
    before = await snapshot(shared_http, ctx)
    resp = await shared_http.post("/v1/runs", content=content, headers={"content-type": "application/json"})
    if resp.status_code == 400:
        assert_error(resp, 400, "invalid_request")
        assert await snapshot(shared_http, ctx) == before
        return
    assert resp.status_code == 201, resp.text
    stored = (await shared_http.get(f"/v1/runs/{resp.json()['id']}")).json()["input"]
    assert stored == {"n": big}, f"input {{'n': {big}}} was stored as {stored!r}"


# -- the SDK -----------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_client(shared_server: Server) -> AsyncIterator[Client]:
    async with await connect(shared_server.url) as aiki:
        yield aiki


@pytest.fixture
def wf() -> str:
    """A workflow name of this test's own, on the shared server."""
    return f"wf-{uuid.uuid4().hex[:8]}"


async def run_count(client: Client, workflow: str) -> int:
    answer = await client._transport.request("GET", "/v1/runs", params={"workflow": workflow, "limit": 500})
    return len(answer["runs"])


@on_shared_server
async def test_sdk_raises_invalid_request_with_the_servers_message(shared_client: Client, wf: str) -> None:
    client = shared_client
    with pytest.raises(InvalidRequest) as info:
        await client.start_run("", "1", {"a": 1})
    assert info.value.code == "invalid_request"
    assert "'workflow'" in str(info.value) and "non-empty" in str(info.value)

    with pytest.raises(InvalidRequest) as info:
        await client.start_run(wf, "1", None, delay=timedelta(seconds=-3))
    assert info.value.code == "invalid_request"
    assert "delay_ms" in str(info.value)
    assert await run_count(client, wf) == 0


@on_shared_server
async def test_sdk_raises_not_found_for_unknown_runs(shared_client: Client) -> None:
    client = shared_client
    with pytest.raises(NotFound) as info:
        await client.get_run("no-such-run")
    assert info.value.code == "not_found"
    assert "no-such-run" in str(info.value)
    with pytest.raises(NotFound, match="no-such-run"):
        await RunHandle(client, "no-such-run").cancel("why not")
    with pytest.raises(NotFound, match="no-such-run"):
        await client.send_event("no-such-run", "ping", {"x": 1})
    with pytest.raises(NotFound):
        await client.get_run("no-such-run")  # still nothing there


@on_shared_server
async def test_sdk_raises_conflict_for_a_reused_reference_id_and_leaves_the_first_run(
    shared_client: Client, wf: str
) -> None:
    client = shared_client
    first = await client.start_run(wf, "1", {"email": "a@b.c"}, reference_id="user-1")
    before = await first.get_status()

    with pytest.raises(Conflict) as info:
        await client.start_run(wf, "1", {"email": "other@b.c"}, reference_id="user-1")
    assert info.value.code == "conflict"
    assert "user-1" in str(info.value) and first.id in str(info.value)

    after = await first.get_status()
    assert after == before
    assert after.state == "queued"
    assert await run_count(client, wf) == 1


@on_shared_server
async def test_sdk_refuses_delay_with_start_at_before_sending(shared_client: Client, wf: str) -> None:
    with pytest.raises(InvalidRequest, match="delay"):
        await shared_client.start_run(wf, "1", None, delay=timedelta(seconds=1), start_at=datetime.now(UTC))
    with pytest.raises(InvalidRequest, match="timezone"):
        await shared_client.start_run(wf, "1", None, start_at=datetime(2030, 1, 1))
    assert await run_count(shared_client, wf) == 0


@on_shared_server
@pytest.mark.parametrize(
    "value",
    [{1, 2}, object(), float("nan"), {"when": datetime(2030, 1, 1, tzinfo=UTC)}, b"bytes"],
    ids=["set", "object", "nan", "datetime", "bytes"],
)
async def test_sdk_refuses_input_that_is_not_json(shared_client: Client, wf: str, value: object) -> None:
    with pytest.raises(InvalidRequest, match="JSON"):
        await shared_client.start_run(wf, "1", value)
    assert await run_count(shared_client, wf) == 0


@on_shared_server
async def test_sdk_event_data_that_is_not_json_is_refused(shared_client: Client, wf: str) -> None:
    client = shared_client
    handle = await client.start_run(wf, "1", None)
    with pytest.raises(InvalidRequest, match="JSON"):
        await handle.send_event("ev", {"s": {1}})
    # Events no wait has received yet travel with a claim: there must be none.
    claimed = await client._transport.request(
        "POST", "/v1/claims", {"worker_id": "w", "workflows": [{"name": wf, "version": "1"}]}
    )
    assert [r["id"] for r in claimed["runs"]] == [handle.id]
    assert claimed["runs"][0]["events"] == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sdk_oversized_input_raises_invalid_request_promptly(client: Client) -> None:
    """An input over the server's body limit is the caller's mistake: InvalidRequest, at once —
    not 30 s of retries ending in ServerUnavailable."""
    try:
        async with asyncio.timeout(3):
            with pytest.raises(InvalidRequest):
                await client.start_run("wf", "1", "x" * (MAX_BODY_BYTES + 10))
    except TimeoutError:
        pytest.fail("start_run with an oversized input was still retrying after 3 s")
    assert await run_count(client, "wf") == 0


@on_shared_server
async def test_sdk_reference_id_with_another_big_integer_input_conflicts(shared_client: Client, wf: str) -> None:
    """Two inputs that differ only beyond float precision must never be taken for the same input:
    integers beyond 64 bits are refused outright, so neither start creates a run."""
    for n in (2**70, 2**70 + 1):
        with pytest.raises(InvalidRequest, match="beyond 64 bits"):
            await shared_client.start_run(wf, "1", {"n": n}, reference_id="big")
