"""The listing endpoints behind the CLI: `GET /v1/runs` (filters, newest first, keyset paging) and
`GET /v1/workflows` (run counts by state); bad query parameters are 400s that change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from aiki_server import Server


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url) as h:
        yield h


async def start(http: httpx.AsyncClient, workflow: str, version: str = "1", **extra: object) -> str:
    resp = await http.post("/v1/runs", json={"workflow": workflow, "version": version, "input": None, **extra})
    assert resp.status_code == 201, resp.text
    # Newest first is by creation time in ms (ties by id): keep the expected order unambiguous.
    await asyncio.sleep(0.003)
    return str(resp.json()["id"])


async def test_runs_are_listed_newest_first_and_paged_without_gaps(http: httpx.AsyncClient) -> None:
    ids = [await start(http, "w", reference_id=f"r{i}") for i in range(7)]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = (await http.get("/v1/runs", params=params)).json()
        pages += 1
        seen += [r["id"] for r in body["runs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # A run started between pages lands before the cursor: it neither repeats nor shifts a page.
        if pages == 1:
            await start(http, "w", reference_id="late")

    assert pages == 3
    assert seen == list(reversed(ids))


async def test_filters_combine(http: httpx.AsyncClient) -> None:
    a1 = await start(http, "a", reference_id="x")
    a2 = await start(http, "a", version="2")
    b = await start(http, "b", reference_id="x")
    assert (await http.post(f"/v1/runs/{a2}/cancel", json={})).status_code == 200

    async def ids(**params: object) -> list[str]:
        resp = await http.get("/v1/runs", params=params)
        assert resp.status_code == 200, resp.text
        return [r["id"] for r in resp.json()["runs"]]

    assert await ids(workflow="a") == [a2, a1]
    assert await ids(state="cancelled") == [a2]
    assert await ids(state="queued,cancelled", workflow="a") == [a2, a1]
    assert await ids(reference_id="x") == [b, a1]
    assert await ids(reference_id="x", workflow="b") == [b]
    assert await ids(workflow="") == [b, a2, a1]  # an empty value is no filter
    assert await ids(workflow="none") == []


async def test_workflow_counts(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/workflows")).json() == {"workflows": []}
    await start(http, "a")
    cancelled = await start(http, "a")
    await start(http, "a", version="2")
    await start(http, "b")
    await http.post(f"/v1/runs/{cancelled}/cancel", json={})

    body = (await http.get("/v1/workflows")).json()

    assert body == {
        "workflows": [
            {
                "name": "a",
                "total": 3,
                "counts": {"cancelled": 1, "queued": 2},
                "versions": [
                    {"version": "1", "total": 2, "counts": {"cancelled": 1, "queued": 1}},
                    {"version": "2", "total": 1, "counts": {"queued": 1}},
                ],
            },
            {
                "name": "b",
                "total": 1,
                "counts": {"queued": 1},
                "versions": [{"version": "1", "total": 1, "counts": {"queued": 1}}],
            },
        ]
    }


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=abc", "'limit' must be an integer"),
        ("limit=0", "between 1 and 500"),
        ("limit=501", "between 1 and 500"),
        ("state=bogus", "'bogus' is not a run state"),
        ("state=queued,nope", "'nope' is not a run state"),
        ("cursor=zz", "not a cursor"),
        ("cursor=bm8tY29sb24", "not a cursor"),  # base64 of "no-colon"
        ("status=queued", "unknown query parameter(s) status"),
        ("workflow=a&workflow=b", "more than once"),
        ("workflow=%01x", "control characters"),
    ],
)
async def test_bad_query_parameters_are_400(http: httpx.AsyncClient, query: str, message: str) -> None:
    resp = await http.get(f"/v1/runs?{query}")

    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_request"
    assert message in resp.json()["error"]["message"]


async def test_workflows_take_no_parameters(http: httpx.AsyncClient) -> None:
    resp = await http.get("/v1/workflows?name=a")

    assert resp.status_code == 400
    assert "unknown query parameter(s) name" in resp.json()["error"]["message"]


async def test_listing_is_in_the_openapi_document(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/v1/openapi.json")).json()["paths"]

    assert {"get", "post"} <= set(paths["/v1/runs"])
    assert [p["name"] for p in paths["/v1/runs"]["get"]["parameters"]] == [
        "workflow",
        "state",
        "reference_id",
        "limit",
        "cursor",
    ]
    assert "get" in paths["/v1/workflows"]
