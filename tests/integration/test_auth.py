"""A server started with an API key: every /v1 route needs `Authorization: Bearer <key>`; the
health checks stay open; the SDK sends the key it was given."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from aiki_client import Unauthorized, connect
from aiki_server import Server

KEY = "s3cret"
GOOD = {"authorization": f"Bearer {KEY}"}
BAD_HEADERS = {
    "no header": {},
    "wrong key": {"authorization": "Bearer wrong"},
    "key without scheme": {"authorization": KEY},
    "other scheme": {"authorization": f"Basic {KEY}"},
    "key with a suffix": {"authorization": f"Bearer {KEY}x"},
    "bearer without a key": {"authorization": "Bearer"},
}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with Server(database_url=f"sqlite:///{tmp_path / 'aiki.db'}", port=0, api_key=KEY) as srv:
        yield srv


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as h:
        yield h


def v1_routes(server: Server) -> list[tuple[str, str]]:
    """(method, concrete path) for every route the app registers under /v1."""
    assert server.app is not None
    found = []
    for route in server.app.router.routes:
        path = "/" + route.path.lstrip("/")
        if not path.startswith("/v1/"):
            continue
        concrete = re.sub(r"<[^>]+>", "some-id", path)
        found.extend((method, concrete) for method in sorted(route.methods))
    return sorted(found)


def assert_unauthorized(resp: httpx.Response) -> None:
    assert resp.status_code == 401, f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text}"
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == "unauthorized"
    assert isinstance(err["message"], str) and err["message"]


async def test_every_v1_route_refuses_a_missing_or_wrong_key(server: Server, http: httpx.AsyncClient) -> None:
    routes = v1_routes(server)
    # The routes a client needs are all there (so the loop below checks something).
    for needed in [("POST", "/v1/runs"), ("GET", "/v1/runs/some-id"), ("POST", "/v1/claims")]:
        assert needed in routes
    assert len(routes) >= 20
    for method, path in routes:
        for headers in BAD_HEADERS.values():
            body = {"workflow": "wf", "version": "1", "worker_id": "w", "workflows": [{"name": "wf", "version": "1"}]}
            resp = await http.request(method, path, json=body if method == "POST" else None, headers=headers)
            assert_unauthorized(resp)
    # Nor does the key's absence reveal which /v1 paths and methods exist.
    for method, path in [("GET", "/v1/no-such-route"), ("DELETE", "/v1/runs"), ("GET", "/v1/claims")]:
        assert_unauthorized(await http.request(method, path))
    # None of those requests did anything.
    runs = (await http.get("/v1/runs", headers=GOOD)).json()["runs"]
    assert runs == []


async def test_every_v1_route_accepts_the_right_key(server: Server, http: httpx.AsyncClient) -> None:
    for method, path in v1_routes(server):
        resp = await http.request(method, path, json={} if method == "POST" else None, headers=GOOD)
        # Past authentication: a real answer (an unknown id or a missing field is the route's own 4xx).
        assert resp.status_code != 401, f"{method} {path}: {resp.text}"
        assert resp.status_code < 500, f"{method} {path}: {resp.status_code} {resp.text}"
        assert resp.headers["content-type"].startswith("application/json")


async def test_the_right_key_starts_and_reads_a_run(http: httpx.AsyncClient) -> None:
    resp = await http.post("/v1/runs", json={"workflow": "wf", "version": "1", "input": {"a": 1}}, headers=GOOD)
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["id"]
    resp = await http.get(f"/v1/runs/{run_id}", headers=GOOD)
    assert resp.status_code == 200
    assert (resp.json()["state"], resp.json()["input"]) == ("queued", {"a": 1})
    assert (await http.get("/v1/openapi.json", headers=GOOD)).json()["openapi"].startswith("3.")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_checks_need_no_key(http: httpx.AsyncClient, path: str) -> None:
    for headers in BAD_HEADERS.values():
        resp = await http.get(path, headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "ok"


async def test_sdk_with_the_key_works_end_to_end(server: Server) -> None:
    async with await connect(server.url, api_key=KEY) as aiki:
        handle = await aiki.start_run("wf", "1", {"x": 1}, reference_id="ref-1")
        status = await handle.get_status()
        assert (status.id, status.state, status.reference_id) == (handle.id, "queued", "ref-1")
        again = await aiki.get_run(handle.id)
        assert (await again.cancel("done")).state == "cancelled"


@pytest.mark.parametrize("api_key", [None, "wrong"])
async def test_sdk_without_the_right_key_raises_unauthorized(server: Server, api_key: str | None) -> None:
    async with await connect(server.url, api_key=KEY) as owner:
        run = await owner.start_run("wf", "1", None)
        async with await connect(server.url, api_key=api_key) as aiki:  # /healthz is open: connect works
            with pytest.raises(Unauthorized) as info:
                await aiki.start_run("wf", "1", None)
            assert info.value.code == "unauthorized"
            assert "API key" in str(info.value)
            with pytest.raises(Unauthorized):
                await aiki.get_run(run.id)
            with pytest.raises(Unauthorized):
                await aiki._transport.request("POST", f"/v1/runs/{run.id}/cancel", {})
        # Nothing the refused client asked for happened.
        assert (await run.get_status()).state == "queued"
        listed = await owner._transport.request("GET", "/v1/runs")
        assert [r["id"] for r in listed["runs"]] == [run.id]
