"""Real processes for end-to-end tests: an `aiki-server` process and worker processes, each
started with the interpreter running the tests and killed with real signals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIKI_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class _Child:
    """A child process whose output goes to a log file, stopped with real signals."""

    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, args: list[str], env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class ServerProcess(_Child):
    """`python -m aiki_server` on a fixed port, so it can be killed and restarted in place."""

    def __init__(
        self,
        database_url: str,
        *,
        log_path: Path,
        port: int | None = None,
        redis_url: str | None = None,
        **env: str,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.redis_url = redis_url
        self.log_path = log_path
        self.env = env

    def start(self, timeout: float = 15.0) -> ServerProcess:
        args = [sys.executable, "-m", "aiki_server", "--port", str(self.port), "--database-url", self.database_url]
        if self.redis_url:
            args += ["--redis-url", self.redis_url]
        self._spawn(args, child_env(**self.env))
        wait_ready(self.url, timeout, self.proc)
        return self


def wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout} s")


class WorkerProcess(_Child):
    """`python -m tests.e2e.worker_app` serving the test workflows against a server (through its
    Redis Streams when the server has Redis)."""

    def __init__(self, server: ServerProcess, *, log_path: Path, effects_dir: Path, **options: str | bool) -> None:
        self.url = server.url
        if server.redis_url:
            options = {"redis": server.redis_url, **options}
        self.log_path = log_path
        self.effects_dir = effects_dir
        self.options = options

    def start(self) -> WorkerProcess:
        args = [sys.executable, "-m", "tests.e2e.worker_app", "--url", self.url, "--effects", str(self.effects_dir)]
        for key, value in self.options.items():
            flag = f"--{key.replace('_', '-')}"
            args += [flag] if value is True else [flag, str(value)]
        self._spawn(args, child_env())
        return self


class RedisProcess:
    """A Redis server of our own on a free port, which tests may kill and restart (empty)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while (
            subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() != b"PONG"
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not start")
            time.sleep(0.02)
        return self

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, check=True
        ).stdout.decode()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class PostgresCluster:
    """A PostgreSQL cluster of our own (initdb in a temp dir, its own port), to restart under load.
    initdb and pg_ctl refuse to run as root: as root, they run as the `postgres` user, in a
    directory that user can reach (pytest's temp dirs are private to root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="aiki-pg-"))
        self.datadir = self.root / "data"
        self.log = self.root / "postgres.log"
        self.bindir = Path(
            subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        )
        self.url = f"postgresql://aiki@127.0.0.1:{self.port}/aiki"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True)

    def init(self) -> PostgresCluster:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.datadir), "-U", "aiki", "--auth=trust", "-E", "UTF8")
        self.start()
        subprocess.run(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "aiki", "aiki"], check=True)
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-w", "-o", options, "start")

    def restart(self) -> None:
        # -l: the new postmaster must not inherit (and hold open) our captured stdout.
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
