"""`GET /v1/openapi.json` is an OpenAPI 3.1 document that describes the routes the app really
serves: every /v1 route with its methods, and no route the app does not have."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from aiki_server import Server

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# The document does not describe where it is itself served (the usual convention).
SELF = "/v1/openapi.json"


@pytest.fixture
async def document(server: Server) -> AsyncIterator[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as h:
        resp = await h.get(SELF)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    yield resp.json()


def registered(server: Server) -> dict[str, set[str]]:
    """{OpenAPI-style path: lower-case methods} from the Sanic router."""
    assert server.app is not None
    paths: dict[str, set[str]] = {}
    for route in server.app.router.routes:
        path = re.sub(r"<(\w+)(?::[^>]*)?>", r"{\1}", "/" + route.path.lstrip("/"))
        paths.setdefault(path, set()).update(m.lower() for m in route.methods)
    return paths


def documented_methods(item: dict[str, Any]) -> set[str]:
    return {k for k in item if k in HTTP_METHODS}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


async def test_document_is_openapi_3_1(document: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"]), document.get("openapi")
    info = document["info"]
    assert isinstance(info["title"], str) and info["title"]
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(document["paths"], dict) and document["paths"]
    for path, item in document["paths"].items():
        assert path.startswith("/"), path
        assert documented_methods(item), f"{path} documents no operation"
        for method in documented_methods(item):
            operation = item[method]
            assert operation["responses"], f"{method.upper()} {path} has no responses"
            for status in operation["responses"]:
                assert re.fullmatch(r"[1-5]\d\d|[1-5]XX|default", status), f"{method.upper()} {path}: {status}"
            # Every path parameter in the template is declared, and the other way round.
            in_template = set(re.findall(r"{(\w+)}", path))
            declared = {
                p["name"] for p in operation.get("parameters", []) + item.get("parameters", []) if p["in"] == "path"
            }
            assert declared == in_template, f"{method.upper()} {path}: path parameters {declared} vs {in_template}"
    # Every $ref points at a component that exists.
    schemas = document.get("components", {}).get("schemas", {})
    for ref in refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, f"dangling {ref}"
    assert "bearer" in document["components"]["securitySchemes"]


async def test_every_v1_route_is_documented_with_its_methods(server: Server, document: dict[str, Any]) -> None:
    routes = {p: m for p, m in registered(server).items() if p.startswith("/v1/") and p != SELF}
    assert len(routes) >= 15  # the comparison below covers the real API, not an empty router
    documented = document["paths"]
    missing = sorted(f"{'/'.join(sorted(m)).upper()} {p}" for p, m in routes.items() if p not in documented)
    assert not missing, f"routes the document leaves out: {missing}"
    wrong = {
        p: {"served": sorted(m), "documented": sorted(documented_methods(documented[p]))}
        for p, m in routes.items()
        if documented_methods(documented[p]) != m
    }
    assert not wrong, f"methods differ: {wrong}"


async def test_every_documented_path_is_served(server: Server, document: dict[str, Any]) -> None:
    routes = registered(server)
    phantom = {
        p: sorted(documented_methods(item) - routes.get(p, set()))
        for p, item in document["paths"].items()
        if documented_methods(item) - routes.get(p, set())
    }
    assert not phantom, f"documented but not served: {phantom}"
