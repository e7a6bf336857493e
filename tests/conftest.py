from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aiki_client import Client, connect
from aiki_server import Server

from .procs import ServerProcess, WorkerProcess

PG_ADMIN_URL = os.environ.get("AIKI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (or module); dropped afterwards."""
    name = f"aiki_test_{uuid.uuid4().hex[:12]}"
    admin = PG_ADMIN_URL.rsplit("/", 1)[0]
    subprocess.run(["psql", PG_ADMIN_URL, "-q", "-c", f"CREATE DATABASE {name}"], check=True)
    try:
        yield f"{admin}/{name}"
    finally:
        subprocess.run(["psql", PG_ADMIN_URL, "-q", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=True)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that uses the database runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'aiki.db'}"
    else:
        with fresh_pg_database() as url:
            yield url


@pytest.fixture
async def server(db_url: str) -> AsyncIterator[Server]:
    """An in-process server on a fresh SQLite file."""
    async with Server(database_url=db_url, port=0, claim_idle_timeout_ms=2_000) as srv:
        yield srv


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    async with await connect(server.url) as aiki:
        yield aiki


@pytest.fixture
def effects_dir(tmp_path: Path) -> Path:
    """Where test tasks record each real execution (one file line per run of a task body)."""
    d = tmp_path / "effects"
    d.mkdir()
    return d


@pytest.fixture
def server_process(tmp_path: Path, db_url: str) -> Iterator[ServerProcess]:
    """A real `aiki-server` process on a fresh SQLite file (claims idle for 1.5 s are released)."""
    srv = ServerProcess(
        db_url,
        log_path=tmp_path / "server.log",
        AIKI_CLAIM_IDLE_TIMEOUT_MS="1500",
        AIKI_SWEEP_INTERVAL_MS="200",
    ).start()
    yield srv
    srv.stop()


@pytest.fixture
def spawn_worker(tmp_path: Path, effects_dir: Path) -> Iterator[object]:
    """Start worker processes: `spawn_worker(url, **options)`; all are stopped at the end."""
    started: list[WorkerProcess] = []

    def spawn(url: str, **options: str | bool) -> WorkerProcess:
        w = WorkerProcess(url, log_path=tmp_path / f"worker{len(started)}.log", effects_dir=effects_dir, **options)
        started.append(w.start())
        return w

    yield spawn
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            w.kill()
