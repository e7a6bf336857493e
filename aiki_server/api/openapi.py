"""The served OpenAPI document (`GET /v1/openapi.json`), written out by hand so it says what the
handlers accept, including the limits they enforce."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint
from sanic.request import Request
from sanic.response import HTTPResponse

from aiki_client.wire import MAX_BODY_BYTES, MAX_WAIT_MS, ErrorCode, RunState, TaskState

from ._respond import json_response

bp = Blueprint("openapi")

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {_JSON: {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_ERRORS = {
    code: {"description": desc, "content": {_JSON: {"schema": _ref("Error")}}}
    for code, desc in {
        "400": "Malformed request",
        "401": "Missing or wrong API key",
        "404": "Unknown run",
        "409": "Conflict with stored state (`conflict`) or a lost claim (`fenced`)",
        "413": f"Body larger than {MAX_BODY_BYTES} bytes",
        "503": "Database unavailable (retry)",
    }.items()
}
_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
_SCHEDULE_ID = {"name": "schedule_id", "in": "path", "required": True, "schema": {"type": "string"}}
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "aiki server", "version": "0.1.0", "description": "Durable execution engine API."},
    "security": [{"bearer": []}],
    "paths": {
        "/v1/runs": {
            "get": {
                "summary": "List runs, newest first, filtered and paged (pass next_cursor back as cursor)",
                "parameters": [
                    {"name": "workflow", "in": "query", "schema": _NAME},
                    {
                        "name": "state",
                        "in": "query",
                        "description": "one or more run states, repeated or comma-separated",
                        "schema": {"type": "string"},
                    },
                    {"name": "reference_id", "in": "query", "schema": {"type": "string", "maxLength": 256}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "properties": {
                                "runs": {"type": "array", "items": _ref("Run")},
                                "next_cursor": {"type": ["string", "null"], "description": "null on the last page"},
                            },
                        }
                    ),
                    **_ERRORS,
                },
            },
            "post": {
                "summary": "Start a run (idempotent by id and by workflow + reference_id)",
                "requestBody": _body(_ref("StartRun")),
                "responses": {
                    "201": _ok(_ref("Run"), "Started"),
                    "200": _ok(_ref("Run"), "Already started: the existing run"),
                    **_ERRORS,
                },
            },
        },
        "/v1/workflows": {
            "get": {
                "summary": "Workflows that have runs: versions and run counts by state",
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "properties": {
                                "workflows": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "name": {"type": "string"},
                                            "total": {"type": "integer"},
                                            "counts": {
                                                "type": "object",
                                                "additionalProperties": {"type": "integer"},
                                                "description": "run state -> number of runs",
                                            },
                                            "versions": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "properties": {
                                                        "version": {"type": "string"},
                                                        "total": {"type": "integer"},
                                                        "counts": {
                                                            "type": "object",
                                                            "additionalProperties": {"type": "integer"},
                                                        },
                                                    },
                                                },
                                            },
                                        },
                                    },
                                }
                            },
                        }
                    ),
                    **_ERRORS,
                },
            }
        },
        "/v1/runs/{run_id}": {
            "get": {
                "summary": "A run's status; with wait_ms, wait up to that long for it to finish",
                "parameters": [
                    _RUN_ID,
                    {
                        "name": "wait_ms",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS},
                    },
                ],
                "responses": {"200": _ok(_ref("Run")), **_ERRORS},
            }
        },
        "/v1/runs/{run_id}/tasks": {
            "get": {
                "summary": "The run's recorded task calls, in call order",
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _ok(
                        {"type": "object", "properties": {"tasks": {"type": "array", "items": _ref("TaskCall")}}}
                    ),
                    **_ERRORS,
                },
            }
        },
        "/v1/runs/{run_id}/history": {
            "get": {
                "summary": "The run's state changes with times",
                "parameters": [_RUN_ID],
                "responses": {"200": _ok({"type": "object"}), **_ERRORS},
            }
        },
        "/v1/runs/{run_id}/cancel": {
            "post": {
                "summary": "Cancel a run and its descendants; a finished run is left as it is",
                "parameters": [_RUN_ID],
                "requestBody": _body({"type": "object", "properties": {"reason": {"type": "string"}}}),
                "responses": {"200": _ok(_ref("Run")), **_ERRORS},
            }
        },
        "/v1/runs/{run_id}/waits": {
            "get": {
                "summary": "The run's sleeps and event waits, with their outcomes",
                "parameters": [_RUN_ID],
                "responses": {"200": _ok({"type": "object", "properties": {"waits": {"type": "array"}}}), **_ERRORS},
            }
        },
        "/v1/runs/{run_id}/events": {
            "post": {
                "summary": "Send an event to a run (kept until a wait receives it; deduplicated by reference_id)",
                "parameters": [_RUN_ID],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": _NAME, "data": {}, "reference_id": {"type": "string", "maxLength": 256}},
                    }
                ),
                "responses": {
                    "201": _ok({"type": "object"}, "Stored"),
                    "200": _ok({"type": "object"}, "Already sent with this reference_id"),
                    **_ERRORS,
                },
            }
        },
        **{
            f"/v1/runs/{{run_id}}/{action}": {
                "post": {
                    "summary": summary,
                    "parameters": [_RUN_ID],
                    "responses": {"200": _ok(_ref("Run")), **_ERRORS},
                }
            }
            for action, summary in (
                ("wakeup", "End the run's current sleep now"),
                ("pause", "Pause the run (a worker holding it is fenced out)"),
                ("resume", "Resume a paused run"),
            )
        },
        "/v1/events/multicast": {
            "post": {
                "summary": "Send one event to many runs, by id or by reference id; reports what was sent and what failed",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": _NAME,
                            "data": {},
                            "run_ids": {"type": "array", "items": {"type": "string"}},
                            "workflow": _NAME,
                            "reference_ids": {"type": "array", "items": {"type": "string"}},
                            "reference_id": {"type": "string"},
                        },
                    }
                ),
                "responses": {"200": _ok({"type": "object", "properties": {"sent": {}, "failed": {}}}), **_ERRORS},
            }
        },
        "/v1/schedules": {
            "post": {
                "summary": "Create a schedule (cron + tz, or every_ms); idempotent by reference_id",
                "requestBody": _body(_ref("CreateSchedule")),
                "responses": {
                    "201": _ok(_ref("Schedule"), "Created"),
                    "200": _ok(_ref("Schedule"), "Already exists with this reference_id"),
                    **_ERRORS,
                },
            },
            "get": {
                "summary": "All schedules",
                "responses": {
                    "200": _ok({"type": "object", "properties": {"schedules": {"type": "array"}}}),
                    **_ERRORS,
                },
            },
        },
        "/v1/schedules/{schedule_id}": {
            "get": {
                "summary": "One schedule",
                "parameters": [_SCHEDULE_ID],
                "responses": {"200": _ok(_ref("Schedule")), **_ERRORS},
            },
            "delete": {
                "summary": "Delete a schedule",
                "parameters": [_SCHEDULE_ID],
                "responses": {"200": _ok({"type": "object"}), **_ERRORS},
            },
        },
        **{
            f"/v1/schedules/{{schedule_id}}/{action}": {
                "post": {
                    "summary": f"{action.capitalize()} a schedule",
                    "parameters": [_SCHEDULE_ID],
                    "responses": {"200": _ok(_ref("Schedule")), **_ERRORS},
                }
            }
            for action in ("pause", "resume")
        },
        "/v1/claims": {
            "post": {
                "summary": "Worker: claim ready runs (long-poll up to wait_ms)",
                "requestBody": _body(_ref("Claim")),
                "responses": {"200": _ok({"type": "object", "properties": {"runs": {"type": "array"}}}), **_ERRORS},
            }
        },
        "/v1/runs/{run_id}/checkpoint": {
            "post": {
                "summary": "Worker: record task outcomes and optionally the run's next state, atomically",
                "parameters": [_RUN_ID],
                "requestBody": _body(_ref("Checkpoint")),
                "responses": {"200": _ok({"type": "object"}), **_ERRORS},
            }
        },
        "/v1/heartbeats": {
            "post": {
                "summary": "Worker: extend claims; answers which runs the worker no longer holds",
                "requestBody": _body({"type": "object", "required": ["worker_id", "runs"]}),
                "responses": {"200": _ok({"type": "object", "properties": {"lost": {"type": "array"}}}), **_ERRORS},
            }
        },
        "/v1/workers/release": {
            "post": {
                "summary": "Worker: hand back every run it holds (graceful stop)",
                "requestBody": _body({"type": "object", "required": ["worker_id"]}),
                "responses": {"200": _ok({"type": "object"}), **_ERRORS},
            }
        },
        "/healthz": {
            "get": {"summary": "The process answers", "security": [], "responses": {"200": _ok({"type": "object"})}}
        },
        "/readyz": {
            "get": {
                "summary": "The database answers",
                "security": [],
                "responses": {"200": _ok({"type": "object"}), "503": _ok({"type": "object"}, "Not ready")},
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "AIKI_API_KEY, when set"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"enum": [c.value for c in ErrorCode]}, "message": {"type": "string"}},
                    }
                },
            },
            "StartRun": {
                "type": "object",
                "required": ["workflow", "version"],
                "properties": {
                    "id": {"type": "string", "description": "client-chosen run id (makes retries safe)"},
                    "workflow": _NAME,
                    "version": _NAME,
                    "input": {"description": "any JSON value"},
                    "reference_id": {"type": "string", "maxLength": 256},
                    "shard_key": _NAME,
                    "delay_ms": {"type": "integer", "minimum": 0},
                    "start_at_ms": {"type": "integer", "minimum": 0},
                },
            },
            "Run": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "workflow": {"type": "string"},
                    "version": {"type": "string"},
                    "state": {"enum": [s.value for s in RunState]},
                    "revision": {"type": "integer"},
                    "input": {},
                    "output": {},
                    "error": {"type": ["object", "null"]},
                    "attempts": {"type": "integer"},
                    "reference_id": {"type": ["string", "null"]},
                    "created_at_ms": {"type": "integer"},
                    "updated_at_ms": {"type": "integer"},
                },
            },
            "TaskCall": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "address": {"type": "string"},
                    "name": {"type": "string"},
                    "state": {"enum": [s.value for s in TaskState]},
                    "attempts": {"type": "integer"},
                    "output": {},
                    "error": {"type": ["object", "null"]},
                    "retry_at_ms": {"type": ["integer", "null"]},
                },
            },
            "CreateSchedule": {
                "type": "object",
                "required": ["workflow", "version"],
                "properties": {
                    "workflow": _NAME,
                    "version": _NAME,
                    "input": {},
                    "cron": {"type": "string", "description": "5 fields, or 6 with seconds first"},
                    "tz": {"type": "string", "description": "IANA time zone of the cron expression (default UTC)"},
                    "every_ms": {"type": "integer", "minimum": 100},
                    "overlap": {"enum": ["skip", "allow", "cancel_previous"]},
                    "reference_id": {"type": "string", "maxLength": 256},
                },
            },
            "Schedule": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "workflow": {"type": "string"},
                    "version": {"type": "string"},
                    "input": {},
                    "cron": {"type": ["string", "null"]},
                    "tz": {"type": ["string", "null"]},
                    "every_ms": {"type": ["integer", "null"]},
                    "overlap": {"type": "string"},
                    "state": {"enum": ["active", "paused"]},
                    "reference_id": {"type": ["string", "null"]},
                    "next_fire_at_ms": {"type": ["integer", "null"]},
                    "last_run_id": {"type": ["string", "null"]},
                    "fired": {"type": "integer"},
                    "skipped": {"type": "integer"},
                },
            },
            "Claim": {
                "type": "object",
                "required": ["worker_id", "workflows"],
                "properties": {
                    "worker_id": _NAME,
                    "workflows": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "version"],
                            "properties": {"name": _NAME, "version": _NAME},
                        },
                    },
                    "shard_keys": {"type": "array", "items": {"type": "string"}},
                    "max_runs": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "wait_ms": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS},
                },
            },
            "Checkpoint": {
                "type": "object",
                "required": ["worker_id", "revision", "seq"],
                "properties": {
                    "worker_id": _NAME,
                    "revision": {"type": "integer"},
                    "seq": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "1, 2, 3… within a claim; a repeat is a no-op",
                    },
                    "tasks": {"type": "array", "items": _ref("TaskCall")},
                    "then": {
                        "type": ["object", "null"],
                        "properties": {
                            "state": {
                                "enum": [
                                    "completed",
                                    "failed",
                                    "sleeping",
                                    "awaiting_event",
                                    "awaiting_child",
                                    "awaiting_retry",
                                ]
                            },
                            "output": {},
                            "error": {"type": "object"},
                            "wake_at_ms": {"type": "integer"},
                            "unconsumed": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}


@bp.get("/v1/openapi.json")
async def openapi(request: Request) -> HTTPResponse:
    return json_response(DOCUMENT)
