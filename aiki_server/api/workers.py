"""Routes for workers: claim ready runs, checkpoint them, heartbeat, hand runs back."""

from __future__ import annotations

from sanic import Blueprint
from sanic.request import Request
from sanic.response import HTTPResponse

from aiki_client.wire import MAX_WAIT_MS, RunState, TaskState, WaitKind, WaitState

from .. import errors
from ..services.workers import WorkerService
from ..store import NewChild, NewWait, NextState, TaskOutcome, queue_key
from . import _parse as p
from ._parse import input_hash
from ._respond import json_response, stored, task_body, wait_body

bp = Blueprint("workers", url_prefix="/v1")

_MAX_CLAIM = 1000


def _service(request: Request) -> WorkerService:
    service: WorkerService = request.app.ctx.workers
    return service


@bp.post("/claims")
async def claim(request: Request) -> HTTPResponse:
    body = p.body_object(request)
    worker_id = p.required_text(body, "worker_id")
    shard_keys = p.texts(body, "shard_keys")
    queues: list[str] = []
    for i, wf in enumerate(p.array(body, "workflows", max_items=1000)):
        wf = p.obj(wf, f"workflows[{i}]")
        name, version = p.required_text(wf, "name"), p.required_text(wf, "version")
        if "shard_keys" in body:
            queues.extend(queue_key(name, version, s) for s in shard_keys)
        else:
            queues.append(queue_key(name, version))
    if not queues:
        raise errors.invalid("'workflows' must name at least one workflow version")
    run_ids = None
    if "run_ids" in body:
        run_ids = p.texts(body, "run_ids", required=True, max_items=_MAX_CLAIM)
    max_runs = p.integer(body, "max_runs", minimum=1, maximum=_MAX_CLAIM) or (len(run_ids) if run_ids else 1)
    wait_ms = p.integer(body, "wait_ms", maximum=MAX_WAIT_MS) or 0
    claimed = await _service(request).claim(worker_id, queues, max_runs, wait_ms, run_ids)
    return json_response(
        {
            "runs": [
                {
                    "id": c.run.id,
                    "workflow": c.run.workflow,
                    "version": c.run.version,
                    "revision": c.run.revision,
                    "attempts": c.run.attempts,
                    "input": stored(c.run.input_json),
                    "tasks": [task_body(t) for t in c.tasks],
                    "waits": [wait_body(w) for w in c.waits],
                    "events": [{**e, "data": stored(e["data"])} for e in c.events],
                    "children": [
                        {**ch, "output": stored(ch["output"]), "error": stored(ch["error"])} for ch in c.children
                    ],
                }
                for c in claimed
            ]
        }
    )


def _task_outcome(raw: object, index: int) -> TaskOutcome:
    t = p.obj(raw, f"tasks[{index}]")
    try:
        state = TaskState(p.required_text(t, "state"))
    except ValueError:
        raise errors.invalid(f"tasks[{index}].state must be completed, failed or retrying") from None
    if state is TaskState.SUPERSEDED:
        raise errors.invalid(f"tasks[{index}].state cannot be superseded")
    if state is TaskState.RETRYING and t.get("retry_at_ms") is None:
        raise errors.invalid(f"tasks[{index}] is retrying but has no retry_at_ms")
    return TaskOutcome(
        id=p.integer(t, "id", minimum=1),
        address=p.required_text(t, "address", max_len=300),
        name=p.required_text(t, "name"),
        state=state.value,
        attempts=p.required_int(t, "attempts", minimum=1, maximum=1_000_000),
        output_json=p.json_text(t.get("output")) if state is TaskState.COMPLETED else None,
        error_json=p.json_text(p.obj(t["error"], f"tasks[{index}].error")) if t.get("error") is not None else None,
        retry_at_ms=p.integer(t, "retry_at_ms", maximum=2**53),
    )


def _wait(raw: object, index: int) -> NewWait:
    w = p.obj(raw, f"waits[{index}]")
    try:
        kind = WaitKind(p.required_text(w, "kind"))
        state = WaitState(p.required_text(w, "state"))
    except ValueError:
        raise errors.invalid(f"waits[{index}]: kind must be sleep or event, state a wait state") from None
    allowed = {
        WaitKind.SLEEP: {WaitState.PENDING, WaitState.DONE},
        WaitKind.EVENT: {WaitState.PENDING, WaitState.RECEIVED},
    }
    if state not in allowed[kind]:
        raise errors.invalid(f"waits[{index}]: a new {kind} wait cannot be {state}")
    event_id = p.integer(w, "event_id", minimum=1)
    if (state is WaitState.RECEIVED) != (event_id is not None):
        raise errors.invalid(f"waits[{index}]: event_id is given exactly for received event waits")
    return NewWait(
        kind=kind.value,
        name=p.required_text(w, "name"),
        seq=p.required_int(w, "seq", maximum=1_000_000),
        state=state.value,
        deadline_ms=p.integer(w, "deadline_ms", maximum=2**53),
        event_id=event_id,
    )


def _child(raw: object, index: int) -> NewChild:
    ch = p.obj(raw, f"children[{index}]")
    input_json = p.json_text(ch.get("input"))
    return NewChild(
        id=p.identifier(p.required_text(ch, "id"), f"children[{index}].id"),
        workflow=p.required_text(ch, "workflow"),
        version=p.required_text(ch, "version"),
        input_json=input_json,
        input_hash=input_hash(input_json),
    )


def _next_state(raw: object) -> NextState | None:
    if raw is None:
        return None
    then = p.obj(raw, "then")
    try:
        state = RunState(p.required_text(then, "state"))
    except ValueError:
        raise errors.invalid("then.state is not a run state") from None
    detail = None
    if then.get("unconsumed"):
        detail = p.json_text({"unconsumed": p.array(then, "unconsumed")})
    return NextState(
        state=state,
        output_json=p.json_text(then.get("output")) if state is RunState.COMPLETED else None,
        error_json=p.json_text(p.obj(then["error"], "then.error")) if then.get("error") is not None else None,
        wake_at_ms=p.integer(then, "wake_at_ms", maximum=2**53),
        detail_json=detail,
        waiting_on=tuple(p.texts(then, "waiting_on")),
    )


@bp.post("/runs/<run_id:str>/checkpoint")
async def checkpoint(request: Request, run_id: str) -> HTTPResponse:
    body = p.body_object(request)
    tasks = [_task_outcome(t, i) for i, t in enumerate(p.array(body, "tasks", required=False))]
    result = await _service(request).checkpoint(
        run_id,
        worker_id=p.required_text(body, "worker_id"),
        revision=p.required_int(body, "revision"),
        seq=p.required_int(body, "seq", minimum=1),
        tasks=tasks,
        then=_next_state(body.get("then")),
        waits=[_wait(w, i) for i, w in enumerate(p.array(body, "waits", required=False))],
        children=[_child(c, i) for i, c in enumerate(p.array(body, "children", required=False))],
    )
    return json_response({"result": result})


@bp.post("/heartbeats")
async def heartbeat(request: Request) -> HTTPResponse:
    body = p.body_object(request)
    worker_id = p.required_text(body, "worker_id")
    runs = []
    for i, raw in enumerate(p.array(body, "runs")):
        r = p.obj(raw, f"runs[{i}]")
        runs.append((p.required_text(r, "id"), p.required_int(r, "revision")))
    return json_response({"lost": await _service(request).heartbeat(worker_id, runs)})


@bp.post("/workers/release")
async def release(request: Request) -> HTTPResponse:
    body = p.body_object(request)
    released = await _service(request).release(p.required_text(body, "worker_id"))
    return json_response({"released": released})
