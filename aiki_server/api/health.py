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
    try:
        await request.app.ctx.store.ping()
    except Exception as exc:
        return json_response({"status": "unavailable", "database": f"error: {exc}"}, status=503)
    return json_response({"status": "ok", "database": "ok"})
