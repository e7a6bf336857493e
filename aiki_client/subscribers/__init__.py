"""Ways a worker learns about runs to execute. Each yields *claimed* runs: the server has moved them
to `running` for this worker and returned what replay needs."""

from __future__ import annotations

from typing import Any, Protocol


class Subscriber(Protocol):
    async def claim(self, max_runs: int) -> list[dict[str, Any]]:
        """Claimed runs, at most `max_runs`; may wait a while for work and return none."""
        ...

    async def done(self, run_id: str) -> None:
        """The run's execution here ended (finished, suspended or abandoned)."""
        ...

    async def refresh(self, run_ids: list[str]) -> None:
        """Heartbeat for runs still executing here."""
        ...

    async def close(self) -> None: ...
