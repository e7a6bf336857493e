"""Workflow definitions: `workflow("name")` and its versions `@wf.v("1.0")`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .retry import RetryPolicy
from .task import _validate_name

if TYPE_CHECKING:
    from ._replay import ChildRunHandle, WorkflowRun
    from .client import Client, RunHandle

WorkflowFn = Callable[["WorkflowRun", Any], Coroutine[Any, Any, Any]]


class WorkflowVersion:
    """One version of a workflow: the function workers run for runs started with this version."""

    def __init__(self, workflow: Workflow, version: str, fn: WorkflowFn, retry: RetryPolicy | None) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"workflow {workflow.name!r} v{version}: the function must be `async def fn(run, input)`")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must come from aiki_client.retry (fixed/exponential/jittered), got {retry!r}")
        self.workflow = workflow
        self.name = workflow.name
        self.version = version
        self.fn = fn
        self.retry = retry

    async def start(
        self,
        client: Client,
        workflow_input: Any = None,
        *,
        reference_id: str | None = None,
        delay: timedelta | None = None,
        start_at: datetime | None = None,
        shard_key: str | None = None,
    ) -> RunHandle:
        """Start a run of this version. With `reference_id`, starting again returns the same run."""
        return await client.start_run(
            self.name,
            self.version,
            workflow_input,
            reference_id=reference_id,
            delay=delay,
            start_at=start_at,
            shard_key=shard_key,
        )

    async def start_as_child(self, run: WorkflowRun, child_input: Any = None) -> ChildRunHandle:
        """Start a run of this version as a child of `run` (durably: a replay returns the same
        child). Await `handle.wait_for_completion()` for its output, or let it run on its own."""
        handle: ChildRunHandle = await run._execution.call_child(self, child_input)
        return handle

    def __repr__(self) -> str:
        return f"<WorkflowVersion {self.name!r} v{self.version}>"


class Workflow:
    """A named workflow; its code lives in versions declared with `.v(version)`."""

    def __init__(self, name: str) -> None:
        self.name = _validate_name("workflow", name)
        self.versions: dict[str, WorkflowVersion] = {}

    def v(self, version: str, *, retry: RetryPolicy | None = None) -> Callable[[WorkflowFn], WorkflowVersion]:
        """Declare version `version` of this workflow; `retry` retries the whole run on failure."""
        _validate_name("version", version)
        if version in self.versions:
            raise ValueError(f"workflow {self.name!r} already has a version {version!r}")

        def decorate(fn: WorkflowFn) -> WorkflowVersion:
            wv = WorkflowVersion(self, version, fn, retry)
            self.versions[version] = wv
            return wv

        return decorate

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} versions={sorted(self.versions)}>"


def workflow(name: str) -> Workflow:
    """Declare a workflow by name."""
    return Workflow(name)
