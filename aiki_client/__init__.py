"""aiki_client: define durable workflows and tasks, start runs, and run workers.

from aiki_client import connect, task, workflow, worker, retry
"""

from . import retry
from ._replay import ChildRunHandle, EventResult, TaskContext, WorkflowRun
from .client import Client, MulticastResult, RunHandle, RunStatus, connect
from .errors import (
    AikiError,
    Conflict,
    InvalidRequest,
    NonDeterminismError,
    NotFound,
    RunCancelled,
    RunFailed,
    ServerUnavailable,
    TaskFailed,
    Unauthorized,
)
from .retry import RetryPolicy
from .schedule import Schedule, ScheduleHandle, ScheduleStatus, schedule
from .task import Task, task
from .wire import RunState
from .worker import Worker, WorkerHandle, worker
from .workflow import Workflow, WorkflowVersion, workflow

__version__ = "0.1.0"

__all__ = [
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
