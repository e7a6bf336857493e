"""What the machine itself allows: the storage and messaging floors under aiki's numbers.

    python -m bench.limits [--pg-url URL] [--redis-url URL] [--seconds 2]

Not part of `make bench`; run it next to it to read the benchmark's numbers against the limits of
the same machine at the same time. Each line is one loop measured for `--seconds`:

- SQLite as aiki's server opens it (WAL, synchronous=FULL): one INSERT + COMMIT per transaction, one
  connection — every commit waits for the disk, as each of the server's write transactions does;
- PostgreSQL through asyncpg, in a fresh database (dropped afterwards): a one-round-trip commit
  (an INSERT in autocommit) from 1 and from 16 connections; BEGIN / INSERT / UPDATE / COMMIT as four
  round trips on one connection; the same through `pool.acquire()`, which adds asyncpg's reset
  query on release (one more round trip and one more transaction) — the way aiki's store runs
  every transaction;
- Redis (our database number; FLUSHDB after): XADD + XREADGROUP + XACK one command at a time, and
  pipelined in batches of 100.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from .harness import DEFAULT_PG_ADMIN_URL, DEFAULT_REDIS_URL, psql
from .workflows import run_loop


async def rate(seconds: float, step: Callable[[], Awaitable[int]]) -> float:
    """Operations per second of `step` (which returns how many operations it did) over `seconds`."""
    done = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        done += await step()
    return done / elapsed


def sqlite_commits(seconds: float) -> float:
    with tempfile.TemporaryDirectory(prefix="aiki-limits-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "x.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        n = 0
        t0 = time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", ("x" * 100,))
            conn.execute("COMMIT")
            n += 1
        conn.close()
        return n / elapsed


async def postgres(admin_url: str, seconds: float) -> dict[str, float]:
    name = f"aiki_limits_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(psql, admin_url, f"CREATE DATABASE {name}")
    url = f"{admin_url.rsplit('/', 1)[0]}/{name}"
    out: dict[str, float] = {}
    try:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, v TEXT, n INT DEFAULT 0)")

        async def one_rt() -> int:
            await conn.execute("INSERT INTO t (v) VALUES ($1)", "x" * 100)
            return 1

        async def four_rt() -> int:
            async with conn.transaction():
                row = await conn.fetchrow("INSERT INTO t (v) VALUES ($1) RETURNING id", "x" * 100)
                await conn.execute("UPDATE t SET n = n + 1 WHERE id = $1", row[0])
            return 1

        out["1 connection: INSERT (autocommit), 1 round trip"] = await rate(seconds, one_rt)
        out["1 connection: BEGIN/INSERT/UPDATE/COMMIT, 4 round trips"] = await rate(seconds, four_rt)
        await conn.close()

        pool = await asyncpg.create_pool(url, min_size=16, max_size=16)

        async def pooled_four_rt() -> int:
            async with pool.acquire() as c, c.transaction():
                row = await c.fetchrow("INSERT INTO t (v) VALUES ($1) RETURNING id", "x" * 100)
                await c.execute("UPDATE t SET n = n + 1 WHERE id = $1", row[0])
            return 1

        async def sixteen_one_rt() -> int:
            async def one(c: asyncpg.Connection) -> None:
                await c.execute("INSERT INTO t (v) VALUES ($1)", "x" * 100)

            conns = [await pool.acquire() for _ in range(16)]
            try:
                for _ in range(20):
                    await asyncio.gather(*(one(c) for c in conns))
            finally:
                for c in conns:
                    await pool.release(c)
            return 16 * 20

        out["pool.acquire(): BEGIN/INSERT/UPDATE/COMMIT + asyncpg's reset, 5 round trips"] = await rate(
            seconds, pooled_four_rt
        )
        out["16 connections: INSERT (autocommit), 1 round trip each"] = await rate(seconds, sixteen_one_rt)
        await pool.close()
    finally:
        await asyncio.to_thread(psql, admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return out


async def redis_streams(url: str, seconds: float) -> dict[str, float]:
    r: aioredis.Redis = aioredis.from_url(url)
    out: dict[str, float] = {}
    stream, group = f"aiki-limits-{uuid.uuid4().hex[:8]}", "g"
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)

        async def single() -> int:
            await r.xadd(stream, {"run_id": "x"}, maxlen=10_000, approximate=True)
            got: Any = await r.xreadgroup(group, "c", {stream: ">"}, count=1)
            await r.xack(stream, group, got[0][1][0][0])
            return 1

        async def pipelined() -> int:
            async with r.pipeline(transaction=False) as pipe:
                for _ in range(100):
                    pipe.xadd(stream, {"run_id": "x"}, maxlen=10_000, approximate=True)
                await pipe.execute()
            got: Any = await r.xreadgroup(group, "c", {stream: ">"}, count=100)
            async with r.pipeline(transaction=False) as pipe:
                for message_id, _ in got[0][1]:
                    pipe.xack(stream, group, message_id)
                await pipe.execute()
            return 100

        out["XADD + XREADGROUP + XACK, one command per round trip"] = await rate(seconds, single)
        out["XADD + XREADGROUP + XACK, pipelined in batches of 100"] = await rate(seconds, pipelined)
    finally:
        await r.delete(stream)
        await r.aclose()
    return out


async def measure(args: argparse.Namespace) -> None:
    s = args.seconds
    print(f"SQLite (WAL, synchronous=FULL), BEGIN/INSERT/COMMIT: {await asyncio.to_thread(sqlite_commits, s):,.0f}/s")
    for label, value in (await postgres(args.pg_url, s)).items():
        print(f"PostgreSQL, {label}: {value:,.0f} commits/s")
    for label, value in (await redis_streams(args.redis_url, s)).items():
        print(f"Redis, {label}: {value:,.0f} messages/s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pg-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--seconds", type=float, default=2.0)
    run_loop(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
