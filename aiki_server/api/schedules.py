"""Routes for schedules: create (idempotent by reference id), list, read, pause, resume, delete."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint
from sanic.request import Request
from sanic.response import HTTPResponse

from ..services.schedules import ScheduleRequest, ScheduleService
from ..store import Schedule
from . import _parse as p
from ._respond import json_response, stored

bp = Blueprint("schedules", url_prefix="/v1/schedules")


def _service(request: Request) -> ScheduleService:
    service: ScheduleService = request.app.ctx.schedules
    return service


def schedule_body(s: Schedule) -> dict[str, Any]:
    return {
        "id": s.id,
        "workflow": s.workflow,
        "version": s.version,
        "input": stored(s.input_json),
        "cron": s.cron,
        "tz": s.tz,
        "every_ms": s.every_ms,
        "overlap": s.overlap,
        "state": s.state,
        "reference_id": s.reference_id,
        "next_fire_at_ms": s.next_fire_at_ms,
        "last_run_id": s.last_run_id,
        "fired": s.fired,
        "skipped": s.skipped,
        "created_at_ms": s.created_at_ms,
    }


@bp.post("")
async def create(request: Request) -> HTTPResponse:
    body = p.body_object(request)
    input_json = p.json_text(body.get("input"))
    schedule, created = await _service(request).create(
        ScheduleRequest(
            workflow=p.required_text(body, "workflow"),
            version=p.required_text(body, "version"),
            input_json=input_json,
            input_hash=p.input_hash(input_json),
            cron=p.text(body, "cron", required=False),
            tz=p.text(body, "tz", required=False),
            every_ms=p.integer(body, "every_ms", maximum=10 * 365 * 24 * 3600 * 1000),
            overlap=p.text(body, "overlap", required=False) or "skip",
            reference_id=p.text(body, "reference_id", required=False, max_len=256),
        )
    )
    return json_response(schedule_body(schedule), status=201 if created else 200)


@bp.get("")
async def list_schedules(request: Request) -> HTTPResponse:
    return json_response({"schedules": [schedule_body(s) for s in await _service(request).list()]})


@bp.get("/<schedule_id:str>")
async def get(request: Request, schedule_id: str) -> HTTPResponse:
    return json_response(schedule_body(await _service(request).get(schedule_id)))


@bp.post("/<schedule_id:str>/pause")
async def pause(request: Request, schedule_id: str) -> HTTPResponse:
    return json_response(schedule_body(await _service(request).pause(schedule_id)))


@bp.post("/<schedule_id:str>/resume")
async def resume(request: Request, schedule_id: str) -> HTTPResponse:
    return json_response(schedule_body(await _service(request).resume(schedule_id)))


@bp.delete("/<schedule_id:str>")
async def delete(request: Request, schedule_id: str) -> HTTPResponse:
    await _service(request).delete(schedule_id)
    return json_response({"deleted": schedule_id})
