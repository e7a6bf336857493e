"""Schedules: cron expressions (in a time zone) or fixed intervals that start runs of a workflow
version. Firing is idempotent: a schedule's next fire time is advanced by compare-and-set, so with
several servers each fire time starts one run, and a fire missed while the server was down happens
once right after start (not once per missed tick).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from aiki_client.wire import TERMINAL_STATES

from .. import errors
from ..notifier import Notifier
from ..store import NewRun, Schedule, Store
from ..timers import Timers, now_ms
from .runs import announce

OVERLAP_POLICIES = ("skip", "allow", "cancel_previous")


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    workflow: str
    version: str
    input_json: str
    input_hash: str
    cron: str | None
    tz: str | None
    every_ms: int | None
    overlap: str
    reference_id: str | None


def next_fire_at(schedule: Schedule | ScheduleRequest, after_ms: int, anchor_ms: int | None = None) -> int:
    """The first fire time strictly after `after_ms`."""
    if schedule.every_ms is not None:
        anchor = after_ms if anchor_ms is None else anchor_ms
        periods = max(0, (after_ms - anchor) // schedule.every_ms + 1)
        return anchor + periods * schedule.every_ms
    assert schedule.cron is not None
    zone = ZoneInfo(schedule.tz or "UTC")
    start = datetime.fromtimestamp(after_ms / 1000, tz=zone)
    return int(croniter(schedule.cron, start).get_next(float) * 1000)


def validate(req: ScheduleRequest) -> None:
    if (req.cron is None) == (req.every_ms is None):
        raise errors.invalid("give exactly one of 'cron' and 'every_ms'")
    if req.every_ms is not None and req.every_ms < 100:
        raise errors.invalid("'every_ms' must be at least 100")
    if req.cron is not None and not croniter.is_valid(req.cron):
        raise errors.invalid(f"'cron' is not a valid cron expression: {req.cron!r}")
    if req.tz is not None:
        try:
            ZoneInfo(req.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise errors.invalid(f"'tz' is not a known time zone: {req.tz!r}") from None
    if req.overlap not in OVERLAP_POLICIES:
        raise errors.invalid(f"'overlap' must be one of {', '.join(OVERLAP_POLICIES)}")


class ScheduleService:
    def __init__(self, store: Store, notifier: Notifier, timers: Timers) -> None:
        self._store = store
        self._notifier = notifier
        self._timers = timers

    async def create(self, req: ScheduleRequest) -> tuple[Schedule, bool]:
        validate(req)
        now = now_ms()
        schedule, created = await self._store.insert_schedule(
            Schedule(
                id=str(uuid.uuid4()),
                workflow=req.workflow,
                version=req.version,
                input_json=req.input_json,
                input_hash=req.input_hash,
                cron=req.cron,
                tz=req.tz,
                every_ms=req.every_ms,
                overlap=req.overlap,
                state="active",
                reference_id=req.reference_id,
                next_fire_at_ms=next_fire_at(req, now),
                last_run_id=None,
                fired=0,
                skipped=0,
                created_at_ms=now,
            )
        )
        self._timers.poke(schedule.next_fire_at_ms)
        return schedule, created

    async def get(self, schedule_id: str) -> Schedule:
        schedule = await self._store.get_schedule(schedule_id)
        if schedule is None:
            raise errors.not_found(f"no schedule with id {schedule_id!r}")
        return schedule

    async def list(self) -> list[Schedule]:
        return await self._store.list_schedules()

    async def pause(self, schedule_id: str) -> Schedule:
        await self.get(schedule_id)
        await self._store.set_schedule_state(schedule_id, "paused", None, now_ms())
        return await self.get(schedule_id)

    async def resume(self, schedule_id: str) -> Schedule:
        schedule = await self.get(schedule_id)
        if schedule.state != "active":
            now = now_ms()
            fire_at = next_fire_at(schedule, now)
            await self._store.set_schedule_state(schedule_id, "active", fire_at, now)
            self._timers.poke(fire_at)
        return await self.get(schedule_id)

    async def delete(self, schedule_id: str) -> None:
        await self._store.delete_schedule(schedule_id)

    async def fire_due(self, now: int) -> int | None:
        """Start the runs of every due schedule; returns the next fire time of any schedule."""
        for schedule in await self._store.due_schedules(now):
            await self._fire(schedule, now)
        return await self._store.next_schedule_fire_at()

    async def _fire(self, schedule: Schedule, now: int) -> None:
        assert schedule.next_fire_at_ms is not None
        fire_at = schedule.next_fire_at_ms
        following = next_fire_at(schedule, now, anchor_ms=fire_at)
        skipped = False
        if schedule.overlap == "skip" and schedule.last_run_id is not None:
            last = await self._store.get_run(schedule.last_run_id)
            skipped = last is not None and last.state not in TERMINAL_STATES
        run = None
        if not skipped:
            run = NewRun(
                id=str(uuid.uuid4()),
                workflow=schedule.workflow,
                version=schedule.version,
                input_json=schedule.input_json,
                input_hash=schedule.input_hash,
                reference_id=f"schedule:{schedule.id}:{fire_at}",
                shard_key=None,
                parent_id=None,
                wake_at_ms=None,
            )
        _, effects = await self._store.fire_schedule(schedule, following, run, skipped, now)
        announce(self._notifier, self._timers, effects)
