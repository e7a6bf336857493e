"""Workers: execute the workflow versions they register, in the user's own processes.

A spawned worker is supervised: one stop event; side tasks (claiming, heartbeats) in an
`asyncio.TaskGroup`; a semaphore-like slot count for `max_concurrent_workflow_runs`; a graceful stop
that waits for active runs up to `graceful_shutdown_timeout_ms`, cancels the rest and hands every
run it still holds back to the server so another worker takes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._replay import Fenced, RunExecution, TaskRecord, WaitRecord
from .errors import AikiError, Conflict
from .subscribers.polling import PollingOptions, PollingSubscriber
from .wire import API_PREFIX, ErrorCode, queue_key

if TYPE_CHECKING:
    from .client import Client
    from .subscribers import Subscriber
    from .workflow import WorkflowVersion

log = logging.getLogger("aiki.worker")


@dataclass(frozen=True, slots=True)
class Worker:
    """A worker definition: static and reusable. `spawn(client)` starts one."""

    id: str
    workflows: tuple[WorkflowVersion, ...]
    max_concurrent_workflow_runs: int = 1
    heartbeat_interval_ms: int = 30_000
    graceful_shutdown_timeout_ms: int = 5_000
    shard_keys: tuple[str, ...] | None = None
    subscriber: dict[str, Any] | None = None

    async def spawn(self, client: Client) -> WorkerHandle:
        """Start taking work from `client`'s server. Returns a handle to stop it."""
        handle = WorkerHandle(self, client)
        await handle._start()
        return handle


def worker(
    *,
    id: str,
    workflows: Sequence[WorkflowVersion],
    max_concurrent_workflow_runs: int = 1,
    heartbeat_interval_ms: int = 30_000,
    graceful_shutdown_timeout_ms: int = 5_000,
    shard_keys: Sequence[str] | None = None,
    subscriber: dict[str, Any] | None = None,
) -> Worker:
    """Define a worker that runs the given workflow versions."""
    if not isinstance(id, str) or not id:
        raise ValueError("worker id must be a non-empty string")
    if not workflows:
        raise ValueError("a worker needs at least one workflow version")
    keys = [(wv.name, wv.version) for wv in workflows]
    if len(set(keys)) != len(keys):
        raise ValueError(f"worker {id!r}: a workflow version is registered twice")
    if max_concurrent_workflow_runs < 1:
        raise ValueError("max_concurrent_workflow_runs must be >= 1")
    if heartbeat_interval_ms < 10 or graceful_shutdown_timeout_ms < 0:
        raise ValueError("heartbeat_interval_ms must be >= 10 and graceful_shutdown_timeout_ms >= 0")
    if subscriber is not None and subscriber.get("type") not in ("polling", "redis_streams"):
        raise ValueError(f"unknown subscriber type {subscriber.get('type')!r}: use 'polling' or 'redis_streams'")
    return Worker(
        id=id,
        workflows=tuple(workflows),
        max_concurrent_workflow_runs=max_concurrent_workflow_runs,
        heartbeat_interval_ms=heartbeat_interval_ms,
        graceful_shutdown_timeout_ms=graceful_shutdown_timeout_ms,
        shard_keys=tuple(shard_keys) if shard_keys is not None else None,
        subscriber=subscriber,
    )


@dataclass(slots=True)
class _Active:
    revision: int
    task: asyncio.Task[None]


class WorkerHandle:
    """A running worker."""

    def __init__(self, definition: Worker, client: Client) -> None:
        self.definition = definition
        # One claimant name per process: several processes may share a worker id.
        self.instance_id = f"{definition.id}/{uuid.uuid4().hex[:12]}"
        self._client = client
        self._transport = client._transport
        self._registry = {(wv.name, wv.version): wv for wv in definition.workflows}
        self._active: dict[str, _Active] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._subscriber = self._make_subscriber()
        self.executions_started = 0  # claims taken: one execution each
        self.runs_finished = 0  # executions that ran to their end (not fenced, failed or superseded)

    def _make_subscriber(self) -> Subscriber:
        options = dict(self.definition.subscriber or {})
        kind = options.pop("type", "redis_streams" if self._client.redis_url else "polling")
        workflows = [{"name": n, "version": v} for n, v in self._registry]
        shard_keys = list(self.definition.shard_keys) if self.definition.shard_keys is not None else None
        streams_options = {k: options.pop(k) for k in ("claim_min_idle_time_ms", "block_time_ms") if k in options}
        polling = PollingSubscriber(
            self._transport,
            worker_id=self.instance_id,
            workflows=workflows,
            shard_keys=shard_keys,
            options=PollingOptions(**options),
        )
        if kind == "polling":
            return polling
        if not self._client.redis_url:
            raise ValueError("the redis_streams subscriber needs a client connected with redis=...")
        from .subscribers.redis_streams import RedisStreamsOptions, RedisStreamsSubscriber

        queues = [
            queue_key(n, v, s) for n, v in self._registry for s in (shard_keys if shard_keys is not None else [None])
        ]
        return RedisStreamsSubscriber(
            self._transport,
            self._client.redis_url,
            worker_id=self.instance_id,
            workflows=workflows,
            shard_keys=shard_keys,
            queues=queues,
            options=RedisStreamsOptions(**streams_options),
            fallback=polling,
        )

    @property
    def active_runs(self) -> int:
        return len(self._active)

    async def _start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name=f"aiki-worker-{self.instance_id}")

    async def _supervise(self) -> None:
        async with asyncio.TaskGroup() as side_tasks:
            claiming = side_tasks.create_task(self._claim_loop())
            heartbeats = side_tasks.create_task(self._heartbeat_loop())
            await self._stopping.wait()
            claiming.cancel()
            heartbeats.cancel()

    async def _claim_loop(self) -> None:
        while True:
            free = self.definition.max_concurrent_workflow_runs - len(self._active)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                claims = await self._subscriber.claim(free)
            except Exception:
                # Never let one bad answer stop the worker: log, pause, take work again.
                log.exception("claiming work failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            for claim in claims:
                self._begin(claim)

    def _begin(self, claim: dict[str, Any]) -> None:
        run_id = claim["id"]
        self.executions_started += 1
        stale = self._active.get(run_id)
        if stale is not None:
            # The run came back to this worker while an older execution of it is still here: its
            # claim was released (it looked dead), or its last checkpoint queued the run again and
            # the answer has not been read yet. Either way the new claim takes over.
            stale.task.cancel()
        entry = _Active(claim["revision"], asyncio.create_task(self._execute(claim), name=f"aiki-run-{run_id}"))
        self._active[run_id] = entry

    async def _execute(self, claim: dict[str, Any]) -> None:
        run_id, revision = claim["id"], claim["revision"]
        version = self._registry[(claim["workflow"], claim["version"])]
        seq = 0

        async def checkpoint(tasks: list[dict[str, Any]], then: dict[str, Any] | None, **extra: Any) -> None:
            nonlocal seq
            seq += 1
            body = {"worker_id": self.instance_id, "revision": revision, "seq": seq, "tasks": tasks, "then": then}
            body.update(extra)
            try:
                await self._transport.request("POST", f"{API_PREFIX}/runs/{run_id}/checkpoint", body)
            except Conflict as exc:
                if exc.code == ErrorCode.FENCED:
                    raise Fenced(str(exc)) from None
                raise

        execution = RunExecution(
            run_id=run_id,
            workflow=claim["workflow"],
            version=claim["version"],
            attempt=claim["attempts"],
            tasks=[TaskRecord.from_wire(t) for t in claim["tasks"]],
            checkpoint=checkpoint,
            retry=version.retry,
            waits=[WaitRecord.from_wire(w) for w in claim.get("waits", ())],
            events=claim.get("events", ()),
            children=claim.get("children", ()),
        )
        try:
            await execution.execute(version.fn, claim["input"])
            self.runs_finished += 1
        except Fenced as exc:
            log.info("run %s: claim lost, stopped (%s)", run_id, exc)
        except AikiError as exc:
            log.warning("run %s: abandoned, the server will hand it out again (%s)", run_id, exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("run %s: unexpected worker error", run_id)
        finally:
            entry = self._active.get(run_id)
            if entry is not None and entry.revision == revision:
                del self._active[run_id]
                await self._subscriber.done(run_id)
            self._slot_freed.set()

    async def _heartbeat_loop(self) -> None:
        interval = self.definition.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if not self._active:
                continue
            runs = [{"id": rid, "revision": a.revision} for rid, a in self._active.items()]
            await self._subscriber.refresh(list(self._active))
            try:
                answer = await self._transport.request(
                    "POST",
                    f"{API_PREFIX}/heartbeats",
                    {"worker_id": self.instance_id, "runs": runs},
                    retry_for_s=interval,
                )
            except AikiError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for run_id in answer["lost"]:
                active = self._active.get(run_id)
                if active is not None:
                    log.info("run %s: claim lost (heartbeat), stopping it", run_id)
                    active.task.cancel()

    async def stop(self) -> None:
        """Stop taking work; wait for active runs up to the graceful timeout; cancel the rest and
        hand them back to the server."""
        if self._supervisor is None:
            return
        self._stopping.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._supervisor
        self._supervisor = None
        pending = [a.task for a in self._active.values()]
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=self.definition.graceful_shutdown_timeout_ms / 1000)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
        await self._subscriber.close()
        # Runs this process still holds (cancelled above, or claimed by a poll cut short) go back now.
        with contextlib.suppress(AikiError):
            await self._transport.request(
                "POST", f"{API_PREFIX}/workers/release", {"worker_id": self.instance_id}, retry_for_s=2.0
            )

    async def wait(self) -> None:
        """Block until the worker is stopped (e.g. from a signal handler)."""
        if self._supervisor is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._supervisor)
