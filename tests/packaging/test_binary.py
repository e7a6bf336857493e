"""Smoke test of the one-file `aiki-server` binary (dist/aiki-server, built by `make binary`).

The binary is built by `make test` before the suite runs (`test` depends on `binary`); when this
module runs on its own it calls `make binary` itself, which rebuilds only if a source is newer
than the binary. It then runs with an environment that has no Python in it: no PYTHONPATH, no
virtualenv on PATH, an empty working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from aiki_client import WorkflowRun, connect, retry, task, worker, workflow
from aiki_client.wire import queue_key, stream_name

from ..conftest import fresh_pg_database
from ..procs import free_port

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "dist" / "aiki-server"
COLD_START_TARGET_S = 1.5

# The first test may wait for a build (about 30 s here, more on a busy machine); the others take seconds.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def binary() -> Path:
    done = subprocess.run(["make", "-s", "binary"], cwd=ROOT, capture_output=True, text=True, timeout=540, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert BINARY.is_file() and os.access(BINARY, os.X_OK)
    return BINARY


def bare_env(**extra: str) -> dict[str, str]:
    """What a machine without Python offers the binary: system paths only."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **extra}


@contextlib.contextmanager
def backend_env(mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment that points the binary at its database (and Redis, in production mode)."""
    if mode == "sqlite":
        yield {"AIKI_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'aiki.db'}"}
    elif mode == "postgres+redis":
        # The session's own Redis (tests/conftest.py), asked for only by this mode.
        redis = request.getfixturevalue("redis_server")
        redis.cli("FLUSHALL")
        with fresh_pg_database() as url:
            yield {"AIKI_DATABASE_URL": url, "AIKI_REDIS_URL": redis.url}
    else:
        raise AssertionError(f"unknown mode {mode!r}")


# The two ways the server runs: embedded (SQLite, workers claim over HTTP) and production
# (PostgreSQL, runs delivered through Redis Streams to workers that read them).
MODES = ["sqlite", "postgres+redis"]


class BinaryServer:
    def __init__(self, binary: Path, cwd: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / f"server-{self.port}.log"
        self.env = bare_env(AIKI_PORT=str(self.port), **env)
        self.binary = binary
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it and return the seconds until /readyz answered 200 (the cold start)."""
        with open(self.log_path, "ab") as log:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                [self.binary], env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = started + 30
        while time.perf_counter() < deadline:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return time.perf_counter() - started
            time.sleep(0.01)
        raise AssertionError(f"not ready after 30 s:\n{self.log()}")

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"did not stop on SIGTERM:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@task("bin-double", retry=retry.fixed(max_attempts=3, delay_ms=10))
async def double(inp: dict[str, int], ctx: Any) -> int:
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails, to exercise a retry through the binary")
    return inp["n"] * 2


smoke = workflow("binary-smoke")


@smoke.v("1")
async def smoke_v1(run: WorkflowRun, inp: dict[str, int]) -> dict[str, Any]:
    first = await double.start(run, {"n": inp["n"]})
    await run.sleep("tick", milliseconds=50)
    second = await double.start(run, {"n": first})
    return {"result": second}


def test_version_and_help(binary: Path, tmp_path: Path) -> None:
    version = subprocess.run(
        [binary, "--version"], env=bare_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "aiki-server 0.1.0"

    helped = subprocess.run(
        [binary, "--help"], env=bare_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    for flag in ("--host", "--port", "--database-url", "--redis-url", "--api-key", "--claim-idle-timeout-ms"):
        assert flag in helped.stdout
    assert list(tmp_path.iterdir()) == []  # neither command created a database


def test_binary_needs_no_python_library(binary: Path) -> None:
    """The Python runtime is inside the file: the executable links against no libpython."""
    linked = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, check=False)
    assert "libc.so" in linked.stdout, linked.stdout + linked.stderr
    assert "libpython" not in linked.stdout
    assert binary.stat().st_size < 60 * 1024 * 1024  # measured 14.3 MiB; near 60 would mean a bloated build


@pytest.mark.parametrize("mode", MODES)
async def test_binary_serves_a_workflow(
    binary: Path, tmp_path: Path, mode: str, request: pytest.FixtureRequest
) -> None:
    with backend_env(mode, tmp_path, request) as env:
        srv = BinaryServer(binary, tmp_path, env)
        cold_start = srv.start()
        try:
            # With Redis the worker takes the default subscriber for a client that has Redis: streams.
            # Bounded, so that a hang on the SDK side fails here instead of at the test timeout.
            async with asyncio.timeout(60), await connect(srv.url, redis=env.get("AIKI_REDIS_URL")) as aiki:
                handle = await worker(id="binary-smoke-worker", workflows=[smoke_v1]).spawn(aiki)
                try:
                    run = await smoke_v1.start(aiki, {"n": 3}, reference_id="smoke")
                    assert await run.wait_for_completion(timeout=30) == {"result": 12}
                finally:
                    await handle.stop()
        finally:
            code = srv.terminate()
        assert code == 0, srv.log()
        assert "Traceback" not in srv.log()
        if "AIKI_REDIS_URL" in env:
            # The run went through Redis Streams, not only the HTTP claim path.
            stream = stream_name(queue_key("binary-smoke", "1"))
            assert int(request.getfixturevalue("redis_server").cli("XLEN", stream)) >= 1

        # Again on the same database: the run survived, and the second start is timed too.
        again = BinaryServer(binary, tmp_path, env)
        warm_start = again.start()
        try:
            async with await connect(again.url, redis=env.get("AIKI_REDIS_URL")) as aiki:
                status = await (await aiki.get_run(run.id)).get_status()
                assert (status.state, status.output, status.attempts) == ("completed", {"result": 12}, 1)
        finally:
            assert again.terminate() == 0, again.log()
        assert "Traceback" not in again.log()

    print(
        f"\n[{mode}] binary {binary.stat().st_size / 2**20:.1f} MiB; /readyz OK after {cold_start:.2f} s, then {warm_start:.2f} s"
    )
    # One-file builds unpack themselves at every start; the faster of two starts must meet the target.
    assert min(cold_start, warm_start) < COLD_START_TARGET_S, (cold_start, warm_start)


def test_binary_listens_where_told_and_refuses_a_bad_flag(binary: Path, tmp_path: Path) -> None:
    bad = subprocess.run(
        [binary, "--port", "not-a-port"], env=bare_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert "invalid int value" in bad.stderr and "Traceback" not in bad.stderr

    # With no flags it uses ./aiki.db in its working directory (the documented default).
    srv = BinaryServer(binary, tmp_path, {})
    srv.start()
    try:
        body = httpx.get(f"{srv.url}/readyz", timeout=5).json()
        assert body["status"] == "ok"
    finally:
        assert srv.terminate() == 0, srv.log()
    assert (tmp_path / "aiki.db").is_file()


def test_time_zones_come_with_the_binary(binary: Path, tmp_path: Path) -> None:
    """Schedules need the IANA database: with the system's hidden (PYTHONTZPATH empty), the
    binary's own copy answers."""
    srv = BinaryServer(binary, tmp_path, {"PYTHONTZPATH": ""})
    srv.start()
    try:
        paris = httpx.post(
            f"{srv.url}/v1/schedules",
            json={"workflow": "w", "version": "1", "cron": "0 3 * * *", "tz": "Europe/Paris"},
            timeout=10,
        )
        assert paris.status_code == 201, paris.text
        fire_at = datetime.fromtimestamp(paris.json()["next_fire_at_ms"] / 1000, ZoneInfo("Europe/Paris"))
        assert (fire_at.hour, fire_at.minute) == (3, 0)
        mars = httpx.post(
            f"{srv.url}/v1/schedules",
            json={"workflow": "w", "version": "1", "cron": "0 3 * * *", "tz": "Mars/Olympus"},
            timeout=10,
        )
        assert mars.status_code == 400 and "not a known time zone" in mars.text
    finally:
        assert srv.terminate() == 0, srv.log()
    assert "Traceback" not in srv.log()
