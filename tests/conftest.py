from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aiki_client import Client, connect
from aiki_server import Server
from aiki_server.store import Store, open_store

from .procs import RedisProcess, ServerProcess, WorkerProcess

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
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


async def _opened(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """The store itself (no server), on a fresh database: each test runs on SQLite and PostgreSQL."""
    async for s in _opened(db_url):
        yield s


@pytest.fixture
async def sqlite_store(sqlite_path: Path) -> AsyncIterator[Store]:
    """The store itself on a fresh SQLite file at `sqlite_path`."""
    async for s in _opened(f"sqlite:///{sqlite_path}"):
        yield s


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


# The two ways aiki runs: embedded (SQLite, workers claim over HTTP) and production (PostgreSQL,
# runs delivered through Redis Streams). End-to-end tests run in both.
MODES = ["sqlite", "postgres+redis"]
_redis_databases = itertools.cycle(range(16))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A Redis of the test session's own (flushed by each test that uses it)."""
    r = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield r
    r.stop()


@contextlib.contextmanager
def server_in_mode(
    mode: str, workdir: Path, redis: RedisProcess, log_name: str = "server.log", **env: str
) -> Iterator[ServerProcess]:
    """A server process in `mode` on a fresh database (and a flushed Redis)."""
    with contextlib.ExitStack() as stack:
        if mode == "sqlite":
            database_url, redis_url = f"sqlite:///{workdir / 'aiki.db'}", None
        else:
            # Each server gets a Redis database of its own: one test's Redis chaos stays its own.
            db = next(_redis_databases)
            database_url, redis_url = stack.enter_context(fresh_pg_database()), f"{redis.url}/{db}"
            redis.cli("-n", str(db), "FLUSHDB")
        srv = ServerProcess(database_url, log_path=workdir / log_name, redis_url=redis_url, **env).start()
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture(params=MODES)
def server_process(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisProcess
) -> Iterator[ServerProcess]:
    """A real `aiki-server` process on a fresh database (claims idle for 1.5 s are released)."""
    with server_in_mode(
        request.param, tmp_path, redis_server, AIKI_CLAIM_IDLE_TIMEOUT_MS="1500", AIKI_SWEEP_INTERVAL_MS="200",
        AIKI_REPUBLISH_AFTER_MS="1000",
    ) as srv:  # fmt: skip
        yield srv


@pytest.fixture
def spawn_worker(tmp_path: Path, effects_dir: Path) -> Iterator[object]:
    """Start worker processes: `spawn_worker(server, **options)`; all are killed at the end."""
    started: list[WorkerProcess] = []

    def spawn(server: ServerProcess, **options: str | bool) -> WorkerProcess:
        w = WorkerProcess(server, log_path=tmp_path / f"worker{len(started)}.log", effects_dir=effects_dir, **options)
        started.append(w.start())
        return w

    yield spawn
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            w.kill()
