"""The SDK's exceptions.

    AikiError                      every error the SDK raises on purpose
    ├── NotFound                   the run (or other object) does not exist        (HTTP 404)
    ├── Unauthorized               missing or wrong API key                        (HTTP 401)
    ├── InvalidRequest             the server (or the SDK) refused malformed input (HTTP 400/413/422)
    ├── Conflict                   the request clashes with stored state           (HTTP 409)
    ├── ServerUnavailable          the server could not be reached, or answered 5xx
    ├── RunFailed                  a run ended `failed`; `.error` is {"type", "message"}
    ├── RunCancelled               a run ended `cancelled`
    ├── TaskFailed                 a task exhausted its attempts (raised inside the workflow)
    └── NonDeterminismError        a replay cannot be reconciled with what was recorded

Internal control-flow signals (a run suspending, a worker fenced out) derive from BaseException
and live in the private modules that raise them, so user code's `except Exception` never swallows them.
"""

from __future__ import annotations

from typing import Any


class AikiError(Exception):
    """Root of every aiki_client exception. `code` is the server's error code, when it sent one."""

    code: str | None = None


class NotFound(AikiError):
    """The run (or other object) named in the request does not exist."""


class Unauthorized(AikiError):
    """The server requires an API key and the one given is missing or wrong."""


class InvalidRequest(AikiError):
    """The request was malformed; nothing was changed."""


class Conflict(AikiError):
    """The request clashes with what is stored (e.g. a reference id reused with other input)."""


class ServerUnavailable(AikiError):
    """The server could not be reached, or answered with a 5xx, after the SDK's retries."""


def _describe(error: dict[str, Any] | None) -> str:
    if not error:
        return "unknown error"
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


class RunFailed(AikiError):
    """A run ended in state `failed`. `.error` is `{"type": ..., "message": ...}`."""

    def __init__(self, run_id: str, error: dict[str, Any] | None) -> None:
        self.run_id = run_id
        self.error = error or {"type": "Error", "message": "unknown error"}
        super().__init__(f"run {run_id} failed: {_describe(self.error)}")


class RunCancelled(AikiError):
    """A run ended in state `cancelled`."""

    def __init__(self, run_id: str, reason: str | None = None) -> None:
        self.run_id = run_id
        self.reason = reason
        super().__init__(f"run {run_id} was cancelled" + (f": {reason}" if reason else ""))


class TaskFailed(AikiError):
    """A task exhausted its attempts. Raised inside the workflow, where it can be caught."""

    def __init__(self, task_name: str, error: dict[str, Any], attempts: int) -> None:
        self.task_name = task_name
        self.error = error
        self.attempts = attempts
        super().__init__(f"task {task_name!r} failed after {attempts} attempt(s): {_describe(error)}")


class NonDeterminismError(AikiError):
    """The workflow's calls cannot be reconciled with the run's recorded history."""
