"""The client: start runs, look at them, wait for them, cancel them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from ._transport import Transport
from .errors import InvalidRequest, RunCancelled, RunFailed
from .schedule import ScheduleHandle, ScheduleStatus
from .wire import API_PREFIX, MAX_WAIT_MS, TERMINAL_STATES, RunState, canonical_json


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A run as stored by the server."""

    id: str
    workflow: str
    version: str
    state: str
    output: Any
    error: dict[str, Any] | None
    attempts: int
    reference_id: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> RunStatus:
        return cls(
            id=d["id"],
            workflow=d["workflow"],
            version=d["version"],
            state=d["state"],
            output=d.get("output"),
            error=d.get("error"),
            attempts=d["attempts"],
            reference_id=d.get("reference_id"),
            created_at=_from_ms(d["created_at_ms"]),
            updated_at=_from_ms(d["updated_at_ms"]),
        )


def _json_value(value: Any, what: str) -> Any:
    try:
        canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{what} is not a JSON value: {exc}") from None
    return value


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class RunHandle:
    """A handle on one run."""

    def __init__(self, client: Client, run_id: str) -> None:
        self._client = client
        self.id = run_id

    async def get_status(self) -> RunStatus:
        return RunStatus.from_wire(await self._client._transport.request("GET", f"{API_PREFIX}/runs/{self.id}"))

    async def wait_for_completion(self, timeout: float | None = None) -> Any:
        """Wait until the run ends and return its output.

        Raises RunFailed or RunCancelled for those ends, TimeoutError after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = MAX_WAIT_MS
            if deadline is not None:
                wait_ms = max(0, min(wait_ms, int((deadline - time.monotonic()) * 1000)))
            status = RunStatus.from_wire(
                await self._client._transport.request(
                    "GET", f"{API_PREFIX}/runs/{self.id}", params={"wait_ms": wait_ms}
                )
            )
            if status.state == RunState.COMPLETED:
                return status.output
            if status.state == RunState.FAILED:
                raise RunFailed(self.id, status.error)
            if status.state == RunState.CANCELLED:
                raise RunCancelled(self.id, (status.error or {}).get("message"))
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.id} is still {status.state} after {timeout} s")

    async def cancel(self, reason: str | None = None) -> RunStatus:
        """Cancel the run (and its child runs). A finished run is left as it is."""
        body = {"reason": reason} if reason is not None else {}
        return RunStatus.from_wire(
            await self._client._transport.request("POST", f"{API_PREFIX}/runs/{self.id}/cancel", body)
        )

    async def send_event(self, name: str, data: Any = None, reference_id: str | None = None) -> None:
        """Send an event to the run. With `reference_id`, sending again is a no-op.
        Raises Conflict if the run has finished."""
        await self._client.send_event(self.id, name, data, reference_id=reference_id)

    async def wakeup(self) -> RunStatus:
        """End the run's current sleep now."""
        return await self._post("wakeup")

    async def pause(self) -> RunStatus:
        """Pause the run: it is not executed until `resume()` (a worker holding it lets go)."""
        return await self._post("pause")

    async def resume(self) -> RunStatus:
        return await self._post("resume")

    async def _post(self, action: str) -> RunStatus:
        return RunStatus.from_wire(
            await self._client._transport.request("POST", f"{API_PREFIX}/runs/{self.id}/{action}", {})
        )

    def __repr__(self) -> str:
        return f"<RunHandle {self.id}>"


@dataclass(frozen=True, slots=True)
class MulticastResult:
    """Which runs an event reached (`sent`: run ids) and which not (`failed`: target → error)."""

    sent: list[str]
    failed: dict[str, dict[str, str]]


class Client:
    """A connection to an aiki server. Create with `await connect(url)`."""

    def __init__(self, url: str, *, redis: str | None = None, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.redis_url = redis
        self._transport = Transport(self.url, api_key=api_key)

    async def start_run(
        self,
        workflow: str,
        version: str,
        workflow_input: Any = None,
        *,
        reference_id: str | None = None,
        delay: timedelta | None = None,
        start_at: datetime | None = None,
        shard_key: str | None = None,
    ) -> RunHandle:
        """Start a run of `workflow` at `version` (usually via `WorkflowVersion.start`)."""
        _json_value(workflow_input, "workflow input")
        if delay is not None and start_at is not None:
            raise InvalidRequest("give either delay= or start_at=, not both")
        # The run id is chosen here so that a retried request can never start a second run.
        body: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "workflow": workflow,
            "version": version,
            "input": workflow_input,
        }
        if reference_id is not None:
            body["reference_id"] = reference_id
        if shard_key is not None:
            body["shard_key"] = shard_key
        if delay is not None:
            body["delay_ms"] = int(delay.total_seconds() * 1000)
        if start_at is not None:
            if start_at.tzinfo is None:
                raise InvalidRequest("start_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
            body["start_at_ms"] = int(start_at.timestamp() * 1000)
        run = await self._transport.request("POST", f"{API_PREFIX}/runs", body)
        return RunHandle(self, run["id"])

    async def get_run(self, run_id: str) -> RunHandle:
        """A handle on an existing run. Raises NotFound if there is none with this id."""
        handle = RunHandle(self, run_id)
        await handle.get_status()
        return handle

    async def send_event(self, run_id: str, name: str, data: Any = None, *, reference_id: str | None = None) -> None:
        """Send an event to a run (see `RunHandle.send_event`)."""
        body: dict[str, Any] = {"name": name, "data": _json_value(data, "event data")}
        if reference_id is not None:
            body["reference_id"] = reference_id
        await self._transport.request("POST", f"{API_PREFIX}/runs/{run_id}/events", body)

    async def send_event_to_many(
        self,
        name: str,
        data: Any = None,
        *,
        run_ids: Sequence[str] = (),
        workflow: str | None = None,
        reference_ids: Sequence[str] = (),
        reference_id: str | None = None,
    ) -> MulticastResult:
        """Send one event to many runs, named by id and/or by reference id (of `workflow`)."""
        body: dict[str, Any] = {
            "name": name,
            "data": _json_value(data, "event data"),
            "run_ids": list(run_ids),
            "reference_ids": list(reference_ids),
        }
        if workflow is not None:
            body["workflow"] = workflow
        if reference_id is not None:
            body["reference_id"] = reference_id
        answer = await self._transport.request("POST", f"{API_PREFIX}/events/multicast", body)
        return MulticastResult(sent=answer["sent"], failed=answer["failed"])

    async def list_schedules(self) -> list[ScheduleStatus]:
        answer = await self._transport.request("GET", f"{API_PREFIX}/schedules")
        return [ScheduleStatus.from_wire(s) for s in answer["schedules"]]

    async def get_schedule(self, schedule_id: str) -> ScheduleHandle:
        """A handle on an existing schedule. Raises NotFound if there is none with this id."""
        handle = ScheduleHandle(self, schedule_id)
        await handle.get()
        return handle

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def connect(url: str, redis: str | None = None, api_key: str | None = None) -> Client:
    """Connect to an aiki server (waiting up to 10 s for it to answer). `redis` is optional."""
    client = Client(url, redis=redis, api_key=api_key)
    try:
        await client._transport.request("GET", "/healthz", retry_for_s=10.0)
    except BaseException:
        await client.close()
        raise
    return client
