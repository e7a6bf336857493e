"""Runs as callers see them: start, look up, wait for, cancel."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from aiki_client.wire import TERMINAL_STATES

from .. import errors
from ..notifier import Notifier
from ..store import Effects, NewRun, Run, Store
from ..timers import Timers, now_ms


@dataclass(frozen=True, slots=True)
class StartRequest:
    id: str | None
    workflow: str
    version: str
    input_json: str
    input_hash: str
    reference_id: str | None
    shard_key: str | None
    delay_ms: int | None
    start_at_ms: int | None


P = ParamSpec("P")
T = TypeVar("T")


def to_the_end(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """A write and the notifications after it run to the end even if the request is cancelled
    (its client went away mid-request): a committed write must always be announced, or a waiter
    would only hear of it at its next re-read."""

    @functools.wraps(method)
    async def run_to_the_end(*args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(method(*args, **kwargs))
        # If the caller is gone, nobody reads its outcome: mark it read (no "never retrieved").
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

    return run_to_the_end


class RunService:
    def __init__(
        self, store: Store, notifier: Notifier, timers: Timers, publish: Callable[[str, str], None] | None = None
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._timers = timers
        # With Redis delivery: publish a started run's (id, queue) at once, not on the publisher's
        # next pass (which would cost another transaction).
        self._publish = publish

    @to_the_end
    async def start(self, req: StartRequest) -> tuple[Run, bool]:
        now = now_ms()
        wake_at = None
        if req.delay_ms is not None:
            wake_at = now + req.delay_ms
        elif req.start_at_ms is not None:
            wake_at = req.start_at_ms
        run, created = await self._store.insert_run(
            NewRun(
                id=req.id or str(uuid.uuid4()),
                workflow=req.workflow,
                version=req.version,
                input_json=req.input_json,
                input_hash=req.input_hash,
                reference_id=req.reference_id,
                shard_key=req.shard_key,
                parent_id=None,
                wake_at_ms=wake_at,
            ),
            now,
            published=self._publish is not None,
        )
        if created:
            if run.wake_at_ms is None:
                if self._publish is not None:
                    self._publish(run.id, run.queue)
                self._notifier.notify_all([run.queue], published=self._publish is not None)
            else:
                self._timers.poke(run.wake_at_ms)
        return run, created

    async def get(self, run_id: str, wait_ms: int = 0) -> Run:
        """The run; with `wait_ms`, wait up to that long for it to finish first."""
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            with self._notifier.listen([finished_key(run_id)]) as news:
                run = await self._store.get_run(run_id)
                if run is None:
                    raise errors.not_found(f"no run with id {run_id!r}")
                remaining = deadline - time.monotonic()
                if run.state in TERMINAL_STATES or remaining <= 0:
                    return run
                await news(min(remaining, self._notifier.recheck_s))

    async def tasks(self, run_id: str) -> list[dict[str, Any]]:
        await self.get(run_id)  # NotFound for an unknown run, not an empty list
        return await self._store.list_tasks(run_id)

    async def history(self, run_id: str) -> list[dict[str, Any]]:
        await self.get(run_id)
        return await self._store.list_history(run_id)

    async def waits(self, run_id: str) -> list[dict[str, Any]]:
        await self.get(run_id)
        return await self._store.list_waits(run_id)

    @to_the_end
    async def cancel(self, run_id: str, reason: str | None) -> Run:
        announce(self._notifier, self._timers, await self._store.cancel_run(run_id, reason, now_ms()))
        return await self.get(run_id)

    @to_the_end
    async def send_event(self, run_id: str, name: str, data_json: str, reference_id: str | None) -> tuple[int, bool]:
        event_id, duplicate, queued = await self._store.send_event(run_id, name, data_json, reference_id, now_ms())
        self._notifier.notify_all(queued)
        return event_id, duplicate

    async def send_event_to_many(
        self,
        run_ids: list[str],
        workflow: str | None,
        reference_ids: list[str],
        name: str,
        data_json: str,
        reference_id: str | None,
    ) -> tuple[list[str], dict[str, dict[str, str]]]:
        """Multicast: the same event to each run (named by id, or by the workflow's reference ids).
        Returns (run ids sent to, {target: error}) — one bad target does not stop the others."""
        sent: list[str] = []
        failed: dict[str, dict[str, str]] = {}
        targets: list[tuple[str, str | None]] = [(run_id, run_id) for run_id in run_ids]
        for ref in reference_ids:
            run = await self._store.find_run_by_reference(workflow or "", ref)
            targets.append((ref, run.id if run else None))
        for target, run_id in targets:
            if run_id is None:
                failed[target] = {
                    "code": "not_found",
                    "message": f"no run of workflow {workflow!r} with reference_id {target!r}",
                }
                continue
            try:
                await self.send_event(run_id, name, data_json, reference_id)
            except errors.ApiError as exc:
                failed[target] = exc.body()["error"]
            else:
                sent.append(run_id)
        return sent, failed

    @to_the_end
    async def wakeup(self, run_id: str) -> Run:
        self._notifier.notify_all(await self._store.wakeup(run_id, now_ms()))
        return await self.get(run_id)

    async def pause(self, run_id: str) -> Run:
        await self._store.pause(run_id, now_ms())
        return await self.get(run_id)

    @to_the_end
    async def resume(self, run_id: str) -> Run:
        self._notifier.notify_all(await self._store.resume(run_id, now_ms()))
        return await self.get(run_id)


def finished_key(run_id: str) -> str:
    return f"run:{run_id}"


def announce(notifier: Notifier, timers: Timers, effects: Effects) -> None:
    """Wake whoever waits on what a write did: claimers of queued runs, waiters on finished runs,
    and the timer daemon for a new deadline."""
    notifier.notify_all(effects.queued)
    notifier.notify_all(finished_key(run_id) for run_id in effects.finished)
    timers.poke(effects.wake_at_ms)
