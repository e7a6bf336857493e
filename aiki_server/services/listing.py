"""Listing for operators and the `aiki` CLI: runs (filtered, newest first, paged by an opaque
cursor) and workflows with their run counts by state. Read-only: nothing here changes a run.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from aiki_client.wire import RunState

from .. import errors
from ..store import Run, Store

MAX_PAGE = 500
_STATE_NAMES = frozenset(s.value for s in RunState)


def encode_cursor(run: Run) -> str:
    """Where the next page starts: just after this run in (created_at, id) order. Opaque to
    callers so that the paging key may change without breaking them."""
    return base64.urlsafe_b64encode(f"{run.created_at_ms}:{run.id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, run_id = raw.split(":", 1)
        if not run_id:
            raise ValueError("no run id")
        return int(created_at), run_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise errors.invalid(f"'cursor' is not a cursor this server gave out: {cursor[:60]!r}") from None


def parse_states(values: Sequence[str]) -> list[str]:
    """States named one per value or comma-separated; an unknown name is the caller's mistake."""
    states: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name not in _STATE_NAMES:
                known = ", ".join(s.value for s in RunState)
                raise errors.invalid(f"'state' {name!r} is not a run state (one of: {known})")
            if name not in states:
                states.append(name)
    return states


class ListingService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def runs(
        self,
        *,
        workflow: str | None,
        states: Sequence[str],
        reference_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Run], str | None]:
        """One page of runs and the cursor of the next page (None on the last page)."""
        before = decode_cursor(cursor) if cursor else None
        # One more than asked tells whether a next page exists without a COUNT query.
        runs = await self._store.list_runs(
            workflow=workflow, states=states, reference_id=reference_id, limit=limit + 1, before=before
        )
        if len(runs) <= limit:
            return runs, None
        page = runs[:limit]
        return page, encode_cursor(page[-1])

    async def workflows(self) -> list[dict[str, Any]]:
        """Every workflow that has runs: its versions and run counts by state, overall and per version."""
        by_name: dict[str, dict[str, Any]] = {}
        for name, version, state, count in await self._store.workflow_counts():
            wf = by_name.setdefault(name, {"name": name, "total": 0, "counts": {}, "versions": {}})
            ver = wf["versions"].setdefault(version, {"version": version, "total": 0, "counts": {}})
            for entry in (wf, ver):
                entry["total"] += count
                entry["counts"][state] = entry["counts"].get(state, 0) + count
        return [{**wf, "versions": list(wf["versions"].values())} for wf in by_name.values()]
