from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import MODES, server_in_mode
from ..procs import RedisProcess, ServerProcess, WorkerProcess


def effects_of(effects_dir: Path, run_id: str) -> list[dict[str, object]]:
    """Every real execution of a task body in this run, in order (see worker_app.effect)."""
    path = effects_dir / f"{run_id}.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module", params=MODES)
def shared_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess
) -> Iterator[ServerProcess]:
    """One server process for a module of tests that do not kill anything, in each mode."""
    workdir = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    with server_in_mode(request.param, workdir, redis_server, AIKI_SWEEP_INTERVAL_MS="200") as srv:
        yield srv
        assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def shared_effects(shared_dir: Path) -> Path:
    d = shared_dir / "effects"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def shared_worker(shared_server: ServerProcess, shared_dir: Path, shared_effects: Path) -> Iterator[WorkerProcess]:
    """One worker process (50 runs at once) serving every test workflow except versioned@2."""
    only = ",".join(
        [
            "echo@1",
            "steps@1",
            "fan@1",
            "twice@1",
            "retrying@1",
            "retrying@slow",
            "failing@uncaught",
            "failing@caught",
            "failing@whole-run-retry",
            "versioned@1",
            "sleeper@1",
            "waiter@1",
            "waiter@gather",
            "kid@1",
            "parent@1",
        ]
    )
    w = WorkerProcess(
        shared_server, log_path=shared_dir / "worker.log", effects_dir=shared_effects, only=only, concurrency="50"
    ).start()
    yield w
    assert w.stop() == 0, w.log()
