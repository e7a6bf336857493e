"""Task definitions: `@task("name", retry=...)` turns a function into a durable step."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._replay import TaskContext, invoke_callable
from .retry import RetryPolicy

if TYPE_CHECKING:
    from ._replay import WorkflowRun

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")


def _validate_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ValueError(f"{kind} name must be a non-empty string of at most 200 characters, got {name!r}")
    return name


class Task(Generic[InputT, OutputT]):
    """A function whose outcome is recorded per call: replays return the recorded result."""

    def __init__(self, name: str, fn: Callable[..., Any], retry: RetryPolicy | None) -> None:
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must come from aiki_client.retry (fixed/exponential/jittered), got {retry!r}")
        self.name = _validate_name("task", name)
        self.fn = fn
        self.retry = retry
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not 1 <= len(params) <= 2:
            raise TypeError(f"task {name!r}: the function must take (input) or (input, ctx)")
        self._wants_ctx = len(params) == 2

    async def start(self, run: WorkflowRun, task_input: InputT) -> OutputT:
        """Run this task inside a workflow (or return its recorded outcome on replay).

        Raises TaskFailed when the task's attempts are exhausted.
        """
        result: OutputT = await run._execution.call_task(self, task_input)
        return result

    async def invoke(self, task_input: Any, ctx: TaskContext) -> Any:
        return await invoke_callable(self.fn, self._wants_ctx, task_input, ctx)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the plain function, outside any workflow (handy in unit tests)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name!r}>"


def task(name: str, *, retry: RetryPolicy | None = None) -> Callable[[Callable[..., Any]], Task[Any, Any]]:
    """Declare a task. The function may be `async def` or plain `def` (run in a thread), and take
    `(input)` or `(input, ctx: TaskContext)`."""

    def decorate(fn: Callable[..., Any]) -> Task[Any, Any]:
        return Task(name, fn, retry)

    return decorate
