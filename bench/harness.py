"""What every benchmark section shares: the processes under test (a server and its workers, in one
of the two modes), CPU and memory readings from /proc, the ledger of runs started, and statistics.

Two deployments:

- `sqlite`: one `aiki-server` process on a fresh SQLite file (a temp dir) and one worker process
  (polling subscriber) at the whole concurrency;
- `postgres-redis`: one `aiki-server` process with `AIKI_DATABASE_URL` naming a fresh PostgreSQL
  database (created here, dropped afterwards) and `AIKI_REDIS_URL` naming a Redis database number of
  the benchmark's own (FLUSHDB before and after, never FLUSHALL), and four worker processes whose
  clients are connected with `redis=…` (so they take the Redis Streams subscriber) sharing the
  concurrency (50 → 13 + 13 + 12 + 12).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

MODES = ("sqlite", "postgres-redis")
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
PG_WORKERS = 4


# -- small helpers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIKI_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def split(total: int, parts: int) -> list[int]:
    """`total` worker slots over `parts` processes, as evenly as possible (50, 4 → 13 13 12 12)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a whole process (all its threads), in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name (which may hold spaces, hence the last ')'): state is field 3,
    # utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, summed over all CPUs (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, (idle + iowait) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in kB (/proc/<pid>/status)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else math.nan,
        "mean_ms": sum(ms) / len(ms) if ms else math.nan,
    }


def get_json(url: str, timeout: float = 30.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def server_counts(url: str) -> dict[str, dict[str, int]]:
    """The server's own run counts by state, per workflow name (GET /v1/workflows)."""
    answer = get_json(f"{url}/v1/workflows")
    return {wf["name"]: dict(wf["counts"]) for wf in answer["workflows"]}


@dataclass
class Ledger:
    """Every run the driver started, and how each ended."""

    started: dict[str, int] = field(default_factory=dict)  # workflow name -> runs started
    completed: dict[str, int] = field(default_factory=dict)  # ... -> ended as expected (completed / sleeping)
    executions: int = 0  # run executions the workers must report (one per claim of a run)
    failures: list[str] = field(default_factory=list)

    def start(self, name: str, executions: int = 1) -> None:
        self.started[name] = self.started.get(name, 0) + 1
        self.executions += executions

    def ok(self, name: str) -> None:
        self.completed[name] = self.completed.get(name, 0) + 1

    def fail(self, what: str) -> None:
        self.failures.append(what)
        if len(self.failures) <= 10:
            print(f"  FAILURE: {what}", flush=True)


# -- processes -------------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                env=child_env(**self.env),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the {self.name} process exited with {self.proc.returncode}\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait; returns the exit status (SIGKILL and -9 if it does not stop in time)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def problem_lines(self) -> list[str]:
        """Lines of the log at WARNING level or worse, and tracebacks."""
        return [
            line
            for line in self.lines()
            if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "[WARNING]", "[ERROR]"))
        ]

    def find_line(self, prefix: str) -> str | None:
        for line in self.lines():
            if line.startswith(prefix):
                return line
        return None

    def wait_for_line(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.find_line(prefix)
            if line is not None:
                return line
            self.check_alive()
            time.sleep(0.05)
        raise TimeoutError(f"the {self.name} did not print {prefix!r} within {timeout} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"    [{self.name}] {line}" for line in self.lines()[-lines:])


def wait_ready(server: Process, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the server at {url} was not ready after {timeout} s\n{server.log_tail()}")


def psql(admin_url: str, sql: str) -> str:
    done = subprocess.run(
        ["psql", admin_url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql {admin_url} -c {sql!r} failed: {done.stderr.strip()}")
    return done.stdout.strip()


# -- deployments -------------------------------------------------------------------------------------


@dataclass
class Deployment:
    """A server process and its worker processes in one mode, on a fresh database."""

    mode: str
    concurrency: int
    batch: int
    pg_admin_url: str = DEFAULT_PG_ADMIN_URL
    redis_url: str = DEFAULT_REDIS_URL
    server_env: dict[str, str] = field(default_factory=dict)  # more AIKI_* settings for the server
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aiki-bench-")))
    url: str = ""
    database_url: str = ""
    db_name: str | None = None
    server: Process | None = None
    workers: list[Process] = field(default_factory=list)
    worker_slots: list[int] = field(default_factory=list)
    worker_loop: str = "?"
    _redis_pid: int | None = None
    _dumps: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.mode == "sqlite":
            return (
                f"SQLite (one file), 1 server + 1 worker process (polling, max_concurrent_workflow_runs="
                f"{self.concurrency}, max_batch_size={self.batch})"
            )
        return (
            f"PostgreSQL + Redis Streams, 1 server + {len(self.workers)} worker processes (redis_streams, "
            f"max_concurrent_workflow_runs {'+'.join(map(str, self.worker_slots))} = {sum(self.worker_slots)})"
        )

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env: dict[str, str] = dict(self.server_env)
        if self.mode == "sqlite":
            self.database_url = f"sqlite:///{self.tmp / 'bench.db'}"
            env["AIKI_DATABASE_URL"] = self.database_url
            self.worker_slots = [self.concurrency]
        else:
            self.db_name = f"aiki_bench_{uuid.uuid4().hex[:12]}"
            psql(self.pg_admin_url, f"CREATE DATABASE {self.db_name}")
            self.database_url = f"{self.pg_admin_url.rsplit('/', 1)[0]}/{self.db_name}"
            self._flush_redis()
            env["AIKI_DATABASE_URL"] = self.database_url
            env["AIKI_REDIS_URL"] = self.redis_url
            self.worker_slots = split(self.concurrency, PG_WORKERS)
        print(f"[{self.mode}] starting aiki-server on {self.url} ({self._where()}) ...", flush=True)
        server_args = ["-m", "aiki_server", "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
        self.server = Process("server", [sys.executable, *server_args], self.tmp / "server.log", env).start()
        wait_ready(self.server, self.url)
        for i, slots in enumerate(self.worker_slots):
            args = [sys.executable, "-m", "bench.workflows", "--url", self.url, "--id", f"bench-worker-{i}"]
            args += ["--concurrency", str(slots), "--batch", str(self.batch)]
            if self.mode != "sqlite":
                args += ["--redis", self.redis_url]
            name = "worker" if len(self.worker_slots) == 1 else f"worker{i}"
            self.workers.append(Process(name, args, self.tmp / f"{name}.log").start())
        for w in self.workers:
            ready = w.wait_for_line("ready ")
            self.worker_loop = ready.rsplit("loop=", 1)[-1]

    def _where(self) -> str:
        if self.mode == "sqlite":
            return f"SQLite in {self.tmp}"
        return f"PostgreSQL database {self.db_name}, Redis {self.redis_url}"

    def _redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=10)

    def _flush_redis(self) -> None:
        with self._redis() as r:
            r.flushdb()  # our database number only: other users of this Redis keep theirs

    def check_alive(self) -> None:
        assert self.server is not None
        self.server.check_alive()
        for w in self.workers:
            w.check_alive()

    # -- what the CPU columns read -----------------------------------------------------------

    def pg_backend_pids(self) -> list[int]:
        """Our database's PostgreSQL backends (the server's pool connections, autovacuum on it)."""
        if self.db_name is None:
            return []
        out = psql(
            self.pg_admin_url,
            f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.db_name}' AND pid <> pg_backend_pid()",
        )
        return [int(x) for x in out.split()]

    def redis_pid(self) -> list[int]:
        """The Redis server process (it is the whole Redis: shared with anyone else using it)."""
        if self.mode == "sqlite":
            return []
        if self._redis_pid is None:
            with self._redis() as r:
                self._redis_pid = int(r.info("server")["process_id"])
        # A Redis in another PID namespace (a container) is not ours to read.
        return [self._redis_pid] if cpu_seconds(self._redis_pid) is not None else []

    def cpu_groups(self) -> dict[str, Callable[[], list[int]]]:
        assert self.server is not None
        server_pid = self.server.pid
        worker_pids = [w.pid for w in self.workers]
        groups: dict[str, Callable[[], list[int]]] = {
            "server": lambda: [server_pid],
            "workers": lambda: worker_pids,
            "driver": lambda: [os.getpid()],
        }
        if self.mode != "sqlite":
            groups["postgres"] = self.pg_backend_pids
            groups["redis"] = self.redis_pid
        return groups

    # -- what the round-trip columns read ---------------------------------------------------

    def worker_http_counts(self, timeout: float = 5.0) -> dict[str, int]:
        """HTTP requests the workers have made so far, by method and route: each worker prints its
        counts when sent SIGUSR1 (bench/workflows.py)."""
        total: dict[str, int] = {}
        for w in self.workers:
            seq = self._dumps.get(w.name, 0) + 1
            self._dumps[w.name] = seq
            assert w.proc is not None
            w.proc.send_signal(signal.SIGUSR1)
            prefix = f"counts {seq} "
            line = w.wait_for_line(prefix, timeout)
            for key, n in json.loads(line[len(prefix) :]).items():
                total[key] = total.get(key, 0) + n
        return total

    def pg_stats(self) -> dict[str, int]:
        """Transactions committed in our database (read-only ones included) and rows written, from
        pg_stat_database (each backend reports at most once a second: approximate at the edges)."""
        if self.db_name is None:
            return {}
        row = psql(
            self.pg_admin_url,
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database"
            f" WHERE datname = '{self.db_name}'",
        ).split("|")
        keys = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted")
        return {k: int(v) for k, v in zip(keys, row, strict=True)}

    def redis_commands(self) -> dict[str, int]:
        """Commands the Redis server has processed, by name (INFO commandstats: the whole server,
        every database and client)."""
        if self.mode == "sqlite":
            return {}
        with self._redis() as r:
            stats = r.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def counters(self) -> dict[str, dict[str, int]]:
        return {"worker_http": self.worker_http_counts(), "postgres": self.pg_stats(), "redis": self.redis_commands()}

    def db_size_bytes(self) -> int:
        if self.mode == "sqlite":
            return sum(p.stat().st_size for p in self.tmp.glob("bench.db*"))
        return int(psql(self.pg_admin_url, f"SELECT pg_database_size('{self.db_name}')"))

    def server_memory_kb(self) -> dict[str, int]:
        assert self.server is not None
        return memory_kb(self.server.pid)

    # -- the end -------------------------------------------------------------------------------

    def stop(self) -> tuple[dict[str, int], int, list[str]]:
        """Stop the workers, then the server (SIGTERM each). Returns the exit codes, the run
        executions the workers report, and problems found in the logs."""
        problems: list[str] = []
        codes: dict[str, int] = {}
        for w in self.workers:
            codes[w.name] = w.stop()
        assert self.server is not None
        codes["server"] = self.server.stop()
        executions = 0
        for w in self.workers:
            line = w.find_line("stopped after ")
            if line is None:
                problems.append(f"the {w.name} did not report its run executions")
            else:
                executions += int(line.split()[2])
        for name, code in codes.items():
            if code != 0:
                problems.append(f"the {name} exited with {code} after SIGTERM")
        for p in (self.server, *self.workers):
            lines = p.problem_lines()
            if lines:
                problems.append(f"the {p.name} logged {len(lines)} warning/error line(s), first: {lines[0]}")
        return codes, executions, problems

    def cleanup(self, *, show_logs: bool) -> None:
        for p in (*self.workers, self.server):
            if p is not None:
                p.kill()
        if show_logs:
            for p in (self.server, *self.workers):
                if p is not None and p.lines():
                    print(f"--- last lines of the {self.mode} {p.name} log ---\n{p.log_tail()}", flush=True)
        if self.db_name is not None:
            try:
                psql(self.pg_admin_url, f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")
            except RuntimeError as exc:
                print(f"could not drop database {self.db_name}: {exc}", flush=True)
            try:
                self._flush_redis()
            except redis.RedisError as exc:
                print(f"could not flush {self.redis_url}: {exc}", flush=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- CPU ----------------------------------------------------------------------------------------------


@dataclass
class CpuSnapshot:
    at: float  # perf_counter
    per_pid: dict[str, dict[int, float]]
    machine_busy: float
    machine_idle: float


def cpu_snapshot(groups: dict[str, Callable[[], list[int]]]) -> CpuSnapshot:
    pids = {name: resolve() for name, resolve in groups.items()}
    per_pid: dict[str, dict[int, float]] = {}
    for name, members in pids.items():
        per_pid[name] = {}
        for pid in members:
            cpu = cpu_seconds(pid)
            if cpu is not None:
                per_pid[name][pid] = cpu
    busy, idle = machine_cpu_seconds()
    return CpuSnapshot(time.perf_counter(), per_pid, busy, idle)


def cpu_between(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """CPU seconds per group between two snapshots, plus `other` (everything else on the machine)
    and `idle`. A process that appeared in between counts with all its CPU time (it started in
    the window); one that exited in between is lost (its last reading is unknown)."""
    out: dict[str, float] = {}
    for name, now in b.per_pid.items():
        before = a.per_pid.get(name, {})
        out[name] = sum(cpu - before.get(pid, 0.0) for pid, cpu in now.items())
    out["other"] = max(0.0, (b.machine_busy - a.machine_busy) - sum(out.values()))
    out["idle"] = b.machine_idle - a.machine_idle
    return out


def finite(value: Any) -> Any:
    """NaN (a statistic of nothing) as JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
