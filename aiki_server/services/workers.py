"""What workers do to runs: claim them, checkpoint them, keep their claims alive, give them back.

A claim moves a run to `running` and bumps its revision; every later write names that revision
and applies only while it still holds (compare-and-set in the store). A worker presumed dead whose
claim was released is thereby fenced out: its late writes are rejected with `fenced`.
"""

from __future__ import annotations

import time

from aiki_client.wire import RunState

from .. import errors
from ..notifier import Notifier
from ..state_machine import WORKER_OUTCOMES
from ..store import Claimed, NewChild, NewWait, NextState, Store, TaskOutcome
from ..timers import Timers, now_ms
from .runs import announce, to_the_end


class WorkerService:
    def __init__(self, store: Store, notifier: Notifier, timers: Timers, *, claim_idle_timeout_ms: int) -> None:
        self._store = store
        self._notifier = notifier
        self._timers = timers
        self._claim_idle_timeout_ms = claim_idle_timeout_ms

    async def claim(
        self, worker_id: str, queues: list[str], max_runs: int, wait_ms: int, run_ids: list[str] | None = None
    ) -> list[Claimed]:
        """Claim up to `max_runs` ready runs from `queues` (only `run_ids`, when given: runs a
        worker read from a stream), waiting up to `wait_ms` for one."""
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            with self._notifier.listen(queues) as news:
                now = now_ms()
                claimed = await self._store.claim_runs(
                    worker_id, queues, max_runs, now, now + self._claim_idle_timeout_ms, run_ids
                )
                remaining = deadline - time.monotonic()
                if claimed or remaining <= 0:
                    return claimed
                await news(min(remaining, self._notifier.recheck_s))

    @to_the_end
    async def checkpoint(
        self,
        run_id: str,
        worker_id: str,
        revision: int,
        seq: int,
        tasks: list[TaskOutcome],
        then: NextState | None,
        waits: list[NewWait],
        children: list[NewChild],
    ) -> str:
        if then is not None and then.state not in WORKER_OUTCOMES:
            raise errors.invalid(f"a worker cannot move a run to {then.state!r}")
        if then is not None and then.state in (RunState.SLEEPING, RunState.AWAITING_RETRY) and then.wake_at_ms is None:
            raise errors.invalid(f"moving a run to {then.state} needs wake_at_ms")
        now = now_ms()
        effects = await self._store.checkpoint(
            run_id, worker_id, revision, seq, tasks, then, now, now + self._claim_idle_timeout_ms, waits, children
        )
        announce(self._notifier, self._timers, effects)
        return effects.result

    async def heartbeat(self, worker_id: str, runs: list[tuple[str, int]]) -> list[str]:
        return await self._store.heartbeat(worker_id, runs, now_ms() + self._claim_idle_timeout_ms)

    @to_the_end
    async def release(self, worker_id: str) -> int:
        queues = await self._store.release_worker(worker_id, now_ms())
        self._notifier.notify_all(queues)
        return len(queues)
