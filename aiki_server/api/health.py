"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers)."""

from __future__ import annotations

from sanic import Blueprint
from sanic.request import Request
from sanic.response import HTTPResponse

from ._respond import json_response

bp = Blueprint("health")


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    return json_response({"status": "ok"})


@bp.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    body = {"status": "ok", "database": "ok"}
    delivery = request.app.ctx.delivery
    if delivery is not None:
        # Redis only speeds delivery up: without it workers claim over HTTP, so it never fails readiness.
        body["redis"] = await delivery.ping()
    try:
        await request.app.ctx.store.ping()
    except Exception as exc:
        return json_response({**body, "status": "unavailable", "database": f"error: {exc}"}, status=503)
    return json_response(body)
