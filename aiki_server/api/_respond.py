"""Response helpers: JSON via orjson; stored JSON text is embedded as is (no re-parsing)."""

from __future__ import annotations

from typing import Any

import orjson
from sanic.response import HTTPResponse

from ..store import Run


def json_response(body: Any, status: int = 200) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(body), status=status, content_type="application/json")


def stored(text: str | None) -> Any:
    """Stored JSON text, embedded into a response without parsing it."""
    return None if text is None else orjson.Fragment(text)


def run_body(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "workflow": run.workflow,
        "version": run.version,
        "state": run.state.value,
        "revision": run.revision,
        "input": stored(run.input_json),
        "output": stored(run.output_json),
        "error": stored(run.error_json),
        "attempts": run.attempts,
        "reference_id": run.reference_id,
        "shard_key": run.shard_key,
        "parent_id": run.parent_id,
        "wake_at_ms": run.wake_at_ms,
        "created_at_ms": run.created_at_ms,
        "updated_at_ms": run.updated_at_ms,
    }


def task_body(task: dict[str, Any]) -> dict[str, Any]:
    return {**task, "output": stored(task["output"]), "error": stored(task["error"])}


def wait_body(wait: dict[str, Any]) -> dict[str, Any]:
    return {**wait, "data": stored(wait["data"])}
