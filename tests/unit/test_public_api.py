"""The public surface of both packages, and the client's light import footprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aiki_client
import aiki_server

REPO = Path(__file__).resolve().parents[2]

CLIENT_ALL = [
    "AikiError",
    "ChildRunHandle",
    "Client",
    "Conflict",
    "EventResult",
    "InvalidRequest",
    "MulticastResult",
    "NonDeterminismError",
    "NotFound",
    "RetryPolicy",
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "RunState",
    "RunStatus",
    "Schedule",
    "ScheduleHandle",
    "ScheduleStatus",
    "ServerUnavailable",
    "Task",
    "TaskContext",
    "TaskFailed",
    "Unauthorized",
    "Worker",
    "WorkerHandle",
    "Workflow",
    "WorkflowRun",
    "WorkflowVersion",
    "connect",
    "retry",
    "schedule",
    "task",
    "worker",
    "workflow",
]

SERVER_ALL = ["Server", "ServerConfig", "__version__", "create_app"]


def test_client_all_is_pinned_and_sorted() -> None:
    assert sorted(CLIENT_ALL) == CLIENT_ALL
    assert aiki_client.__all__ == sorted(aiki_client.__all__)
    assert aiki_client.__all__ == CLIENT_ALL


def test_server_all_is_pinned_and_sorted() -> None:
    assert aiki_server.__all__ == sorted(aiki_server.__all__)
    assert aiki_server.__all__ == SERVER_ALL


def test_every_exported_name_exists() -> None:
    for package in (aiki_client, aiki_server):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert missing == [], package.__name__


def test_errors_share_one_root() -> None:
    errors = [
        "NotFound",
        "Unauthorized",
        "InvalidRequest",
        "Conflict",
        "ServerUnavailable",
        "RunFailed",
        "RunCancelled",
        "TaskFailed",
        "NonDeterminismError",
    ]
    assert issubclass(aiki_client.AikiError, Exception)
    for name in errors:
        assert issubclass(getattr(aiki_client, name), aiki_client.AikiError), name


def test_run_failed_shows_type_and_message() -> None:
    exc = aiki_client.RunFailed("run-1", {"type": "ValueError", "message": "nope"})

    assert exc.error == {"type": "ValueError", "message": "nope"}
    assert "ValueError" in str(exc)
    assert "nope" in str(exc)


def test_internal_signals_are_not_exceptions() -> None:
    """User code's `except Exception` must never swallow a suspension or a lost claim."""
    from aiki_client._replay import Fenced, Suspend

    assert not issubclass(Suspend, Exception)
    assert not issubclass(Fenced, Exception)


def test_version_is_a_string() -> None:
    assert isinstance(aiki_client.__version__, str)
    assert aiki_server.__version__ == aiki_client.__version__


HEAVY = ["sanic", "uvloop", "asyncpg", "orjson", "aiki_server"]


def test_client_import_stays_light_in_a_fresh_interpreter() -> None:
    code = (
        "import json, sys\n"
        "import aiki_client\n"
        "from aiki_client import connect, task, workflow, worker, retry\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_fresh_interpreter_check_would_notice_a_heavy_import() -> None:
    """The probe above is not vacuous: importing the server does load the heavy modules."""
    code = "import sys, aiki_server; print('sanic' in sys.modules and 'aiki_server' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
