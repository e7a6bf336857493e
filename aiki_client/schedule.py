"""Schedules: start runs of a workflow version on a cron expression or a fixed interval.

    nightly = schedule(cron="0 3 * * *", tz="Europe/Paris")          # or schedule(every=timedelta(minutes=5))
    handle = await nightly.activate(aiki, report_v1, {"kind": "daily"}, reference_id="nightly-report")
    await handle.pause(); await handle.resume(); await handle.delete()

The server fires schedules; `overlap` says what happens when the previous run is still going:
`skip` (default) skips this firing, `allow` starts another, `cancel_previous` cancels the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequest
from .wire import API_PREFIX, canonical_json

if TYPE_CHECKING:
    from .client import Client
    from .workflow import WorkflowVersion

OVERLAP_POLICIES = ("skip", "allow", "cancel_previous")


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    id: str
    workflow: str
    version: str
    input: Any
    cron: str | None
    tz: str | None
    every: timedelta | None
    overlap: str
    state: str  # active | paused
    reference_id: str | None
    next_fire_at: datetime | None
    last_run_id: str | None
    fired: int
    skipped: int

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ScheduleStatus:
        every = d.get("every_ms")
        next_ms = d.get("next_fire_at_ms")
        return cls(
            id=d["id"],
            workflow=d["workflow"],
            version=d["version"],
            input=d.get("input"),
            cron=d.get("cron"),
            tz=d.get("tz"),
            every=None if every is None else timedelta(milliseconds=every),
            overlap=d["overlap"],
            state=d["state"],
            reference_id=d.get("reference_id"),
            next_fire_at=None if next_ms is None else datetime.fromtimestamp(next_ms / 1000, tz=UTC),
            last_run_id=d.get("last_run_id"),
            fired=d["fired"],
            skipped=d["skipped"],
        )


class ScheduleHandle:
    def __init__(self, client: Client, schedule_id: str) -> None:
        self._client = client
        self.id = schedule_id

    async def get(self) -> ScheduleStatus:
        return ScheduleStatus.from_wire(await self._client._transport.request("GET", self._path()))

    async def pause(self) -> ScheduleStatus:
        return ScheduleStatus.from_wire(await self._client._transport.request("POST", self._path("pause"), {}))

    async def resume(self) -> ScheduleStatus:
        return ScheduleStatus.from_wire(await self._client._transport.request("POST", self._path("resume"), {}))

    async def delete(self) -> None:
        await self._client._transport.request("DELETE", self._path())

    def _path(self, action: str | None = None) -> str:
        path = f"{API_PREFIX}/schedules/{self.id}"
        return f"{path}/{action}" if action else path

    def __repr__(self) -> str:
        return f"<ScheduleHandle {self.id}>"


@dataclass(frozen=True, slots=True)
class Schedule:
    """When to start runs: a cron expression (5 fields, or 6 with seconds first) in a time zone,
    or a fixed interval."""

    cron: str | None = None
    tz: str | None = None
    every: timedelta | None = None
    overlap: str = "skip"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron= and every=")
        if self.every is not None and self.every < timedelta(milliseconds=100):
            raise ValueError("every= must be at least 100 ms")
        if self.tz is not None and self.cron is None:
            raise ValueError("tz= goes with cron=")
        if self.overlap not in OVERLAP_POLICIES:
            raise ValueError(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}, got {self.overlap!r}")

    async def activate(
        self, client: Client, version: WorkflowVersion, workflow_input: Any = None, *, reference_id: str | None = None
    ) -> ScheduleHandle:
        """Create the schedule on the server. With `reference_id`, activating again returns the
        same schedule (Conflict if its settings differ)."""
        try:
            canonical_json(workflow_input)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"schedule input is not a JSON value: {exc}") from None
        body: dict[str, Any] = {
            "workflow": version.name,
            "version": version.version,
            "input": workflow_input,
            "overlap": self.overlap,
        }
        if self.cron is not None:
            body["cron"] = self.cron
            body["tz"] = self.tz or "UTC"
        if self.every is not None:
            body["every_ms"] = int(self.every.total_seconds() * 1000)
        if reference_id is not None:
            body["reference_id"] = reference_id
        answer = await client._transport.request("POST", f"{API_PREFIX}/schedules", body)
        return ScheduleHandle(client, answer["id"])


def schedule(
    *, cron: str | None = None, tz: str | None = None, every: timedelta | None = None, overlap: str = "skip"
) -> Schedule:
    """`schedule(cron="*/5 * * * *", tz="UTC")` or `schedule(every=timedelta(minutes=5))`."""
    return Schedule(cron=cron, tz=tz, every=every, overlap=overlap)
