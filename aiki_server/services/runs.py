"""Runs as callers see them: start, look up, wait for, cancel."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiki_client.wire import TERMINAL_STATES

from .. import errors
from ..notifier import Notifier
from ..store import NewRun, Run, Store
from ..timers import Timers, now_ms

# How often a long-poll re-reads the database, for writes made by another server process.
RECHECK_S = 1.0


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


class RunService:
    def __init__(self, store: Store, notifier: Notifier, timers: Timers) -> None:
        self._store = store
        self._notifier = notifier
        self._timers = timers

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
        )
        if created:
            if run.wake_at_ms is None:
                self._notifier.notify(run.queue)
            else:
                self._timers.poke(run.wake_at_ms)
        return run, created

    async def get(self, run_id: str, wait_ms: int = 0) -> Run:
        """The run; with `wait_ms`, wait up to that long for it to finish first."""
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            run = await self._store.get_run(run_id)
            if run is None:
                raise errors.not_found(f"no run with id {run_id!r}")
            remaining = deadline - time.monotonic()
            if run.state in TERMINAL_STATES or remaining <= 0:
                return run
            await self._notifier.wait([finished_key(run_id)], min(remaining, RECHECK_S))

    async def details(self, run_id: str) -> tuple[Run, list[dict[str, Any]], list[dict[str, Any]]]:
        run = await self.get(run_id)
        tasks, history = await asyncio.gather(self._store.list_tasks(run_id), self._store.list_history(run_id))
        return run, tasks, history

    async def cancel(self, run_id: str, reason: str | None) -> Run:
        cancelled = await self._store.cancel_run(run_id, reason, now_ms())
        self._notifier.notify_all(finished_key(i) for i in cancelled)
        return await self.get(run_id)


def finished_key(run_id: str) -> str:
    return f"run:{run_id}"
