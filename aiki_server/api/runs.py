"""Routes for callers: start runs, read them, wait for them, cancel them."""

from __future__ import annotations

from sanic import Blueprint
from sanic.request import Request
from sanic.response import HTTPResponse

from aiki_client.wire import MAX_WAIT_MS

from .. import errors
from ..services.runs import RunService, StartRequest
from . import _parse as p
from ._respond import json_response, run_body, stored, task_body, wait_body

bp = Blueprint("runs", url_prefix="/v1/runs")

_MAX_DELAY_MS = 10 * 365 * 24 * 3600 * 1000  # ten years


def _service(request: Request) -> RunService:
    service: RunService = request.app.ctx.runs
    return service


@bp.post("")
async def start_run(request: Request) -> HTTPResponse:
    body = p.body_object(request)
    if "input" not in body:
        body["input"] = None
    run_id = p.text(body, "id", required=False)
    reference_id = p.text(body, "reference_id", required=False, max_len=256)
    delay_ms = p.integer(body, "delay_ms", maximum=_MAX_DELAY_MS)
    start_at_ms = p.integer(body, "start_at_ms", maximum=2**53)
    if delay_ms is not None and start_at_ms is not None:
        raise errors.invalid("give either 'delay_ms' or 'start_at_ms', not both")
    input_json = p.json_text(body["input"])
    run, created = await _service(request).start(
        StartRequest(
            id=p.identifier(run_id, "id") if run_id else None,
            workflow=p.required_text(body, "workflow"),
            version=p.required_text(body, "version"),
            input_json=input_json,
            input_hash=p.input_hash(input_json),
            reference_id=reference_id,
            shard_key=p.text(body, "shard_key", required=False),
            delay_ms=delay_ms,
            start_at_ms=start_at_ms,
        )
    )
    return json_response(run_body(run), status=201 if created else 200)


@bp.get("/<run_id:str>")
async def get_run(request: Request, run_id: str) -> HTTPResponse:
    wait_ms = p.query_int(request, "wait_ms", default=0, minimum=0, maximum=MAX_WAIT_MS)
    return json_response(run_body(await _service(request).get(run_id, wait_ms)))


@bp.get("/<run_id:str>/tasks")
async def get_run_tasks(request: Request, run_id: str) -> HTTPResponse:
    tasks = await _service(request).tasks(run_id)
    return json_response({"tasks": [task_body(t) for t in tasks]})


@bp.get("/<run_id:str>/history")
async def get_run_history(request: Request, run_id: str) -> HTTPResponse:
    history = await _service(request).history(run_id)
    return json_response({"history": [{**h, "detail": stored(h["detail"])} for h in history]})


@bp.post("/<run_id:str>/cancel")
async def cancel_run(request: Request, run_id: str) -> HTTPResponse:
    body = p.body_object(request)
    reason = p.text(body, "reason", required=False, max_len=2000)
    return json_response(run_body(await _service(request).cancel(run_id, reason)))


@bp.get("/<run_id:str>/waits")
async def get_run_waits(request: Request, run_id: str) -> HTTPResponse:
    waits = await _service(request).waits(run_id)
    return json_response({"waits": [wait_body(w) for w in waits]})


@bp.post("/<run_id:str>/events")
async def send_event(request: Request, run_id: str) -> HTTPResponse:
    body = p.body_object(request)
    event_id, duplicate = await _service(request).send_event(
        run_id,
        p.required_text(body, "name"),
        p.json_text(body.get("data")),
        p.text(body, "reference_id", required=False, max_len=256),
    )
    return json_response({"event_id": event_id, "duplicate": duplicate}, status=200 if duplicate else 201)


@bp.post("/<run_id:str>/wakeup")
async def wakeup(request: Request, run_id: str) -> HTTPResponse:
    return json_response(run_body(await _service(request).wakeup(run_id)))


@bp.post("/<run_id:str>/pause")
async def pause(request: Request, run_id: str) -> HTTPResponse:
    return json_response(run_body(await _service(request).pause(run_id)))


@bp.post("/<run_id:str>/resume")
async def resume(request: Request, run_id: str) -> HTTPResponse:
    return json_response(run_body(await _service(request).resume(run_id)))


events_bp = Blueprint("events", url_prefix="/v1/events")


@events_bp.post("/multicast")
async def multicast(request: Request) -> HTTPResponse:
    body = p.body_object(request)
    run_ids = p.texts(body, "run_ids")
    reference_ids = p.texts(body, "reference_ids", max_len=256)
    workflow = p.text(body, "workflow", required=reference_ids != [])
    if not run_ids and not reference_ids:
        raise errors.invalid("give 'run_ids' and/or 'reference_ids' (with 'workflow')")
    sent, failed = await _service(request).send_event_to_many(
        run_ids,
        workflow,
        reference_ids,
        p.required_text(body, "name"),
        p.json_text(body.get("data")),
        p.text(body, "reference_id", required=False, max_len=256),
    )
    return json_response({"sent": sent, "failed": failed})
