"""Listing routes for operators and the `aiki` CLI: `GET /v1/runs` (filtered, paged) and
`GET /v1/workflows` (names, versions, run counts by state). Read-only."""

from __future__ import annotations

from sanic import Blueprint
from sanic.request import Request
from sanic.response import HTTPResponse

from .. import errors
from ..services.listing import MAX_PAGE, ListingService, parse_states
from . import _parse as p
from ._respond import json_response, run_body

# No url_prefix: GET /v1/runs shares its path with POST /v1/runs in the runs blueprint.
bp = Blueprint("listing")

_RUN_QUERY = {"workflow", "state", "reference_id", "limit", "cursor"}


def _service(request: Request) -> ListingService:
    # Stateless over the store: built per request rather than wired into the app's start-up.
    return ListingService(request.app.ctx.store)


def _reject_unknown(request: Request, allowed: set[str]) -> None:
    """A misspelt filter (say `status=`) would otherwise silently list everything."""
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise errors.invalid(f"unknown query parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")


def _query_text(request: Request, name: str, max_len: int) -> str | None:
    values = request.args.getlist(name) or []
    if len(values) > 1:
        raise errors.invalid(f"query parameter {name!r} is given more than once")
    value: str | None = values[0] if values else None
    return p.text({name: value}, name, required=False, max_len=max_len)


@bp.get("/v1/runs")
async def list_runs(request: Request) -> HTTPResponse:
    _reject_unknown(request, _RUN_QUERY)
    runs, next_cursor = await _service(request).runs(
        workflow=_query_text(request, "workflow", 200),
        states=parse_states(request.args.getlist("state") or []),
        reference_id=_query_text(request, "reference_id", 256),
        limit=p.query_int(request, "limit", default=50, minimum=1, maximum=MAX_PAGE),
        cursor=_query_text(request, "cursor", 600),
    )
    return json_response({"runs": [run_body(r) for r in runs], "next_cursor": next_cursor})


@bp.get("/v1/workflows")
async def list_workflows(request: Request) -> HTTPResponse:
    _reject_unknown(request, set())
    return json_response({"workflows": await _service(request).workflows()})
