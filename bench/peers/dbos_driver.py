"""DBOS Transact on the peer benchmark's workloads.

    python bench/peers/dbos_driver.py --db postgres|sqlite --out FILE [--seconds S] [--only KIND]
                                      [--pg-admin-url URL]

DBOS is a library that runs workflows inside the application's own process, so the load generator
and the workflows share this one process and its event loop: that is how DBOS is deployed, not a
shortcut. The system database is fresh for every run: a new PostgreSQL database (created through
the admin URL, dropped at the end) or a new SQLite file in a temporary directory (removed at the
end). Apart from the application name, the database URL and the log level, DBOS runs on its
defaults: every workflow's status and every step's output are recorded before the workflow goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import psycopg
import sqlalchemy as sa
from dbos import DBOS

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


# Steps. Async like the workflows: DBOS runs an async step on the caller's event loop, where a sync
# step would go through its thread pool.


@DBOS.step()
async def inc(x: int) -> int:
    return x + 1


@DBOS.step()
async def clock() -> float:
    """The wall clock, recorded as a step's output (the sleep workflow's steps around its sleep)."""
    return time.time()


# Workflows, one per kind of the matrix.


@DBOS.workflow()
async def one_step(value: int) -> int:
    return await inc(value)


@DBOS.workflow()
async def ten_steps(value: int) -> int:
    x = value
    for _ in range(common.STEPS["10-step"]):
        x = await inc(x)
    return x


@DBOS.workflow()
async def sleep_one_second(value: int) -> int:
    await clock()
    # Durable: the wake-up time is recorded as a step, so a recovered workflow sleeps only the rest.
    await DBOS.sleep_async(common.SLEEP_S)
    await clock()
    return value


WORKFLOWS = {"1-step": one_step, "10-step": ten_steps, "sleep-1s": sleep_one_second}


async def run_one(kind: str, value: int) -> Any:
    """Start one workflow the way a DBOS application does and wait for its result. The workflow's
    status is written to the system database before the workflow runs, so it is recovered if this
    process dies; the handle then waits on the in-process task."""
    handle = await DBOS.start_workflow_async(WORKFLOWS[kind], value)
    return await handle.get_result()


def create_pg_database(admin_url: str) -> tuple[str, str]:
    """A fresh database for this run: returns (its name, its URL)."""
    url = sa.make_url(admin_url).set(drivername="postgresql")
    name = f"dbos_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise common.SetupError(f"cannot create database {name} through {url}: {exc}") from exc
    return name, url.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(admin_url: str, name: str) -> None:
    url = sa.make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # FORCE: a connection DBOS left behind (a crashed run) must not keep the database alive.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error as exc:
        print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)


def main() -> int:
    parser = common.driver_args("DBOS Transact on the peer benchmark's workloads.")
    parser.add_argument("--db", choices=["postgres", "sqlite"], required=True, help="the system database")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL, help="creates and drops the run's database")
    args = parser.parse_args()
    return common.guarded(lambda: measure(args))


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Bring DBOS up on a fresh system database, run the matrix, always clean up, write the result."""
    version = importlib.metadata.version("dbos")
    pg_name: str | None = None
    tmp_dir: str | None = None
    created = False
    try:
        if args.db == "postgres":
            pg_name, db_url = create_pg_database(args.pg_admin_url)
            where = f"PostgreSQL database {pg_name}"
        else:
            tmp_dir = tempfile.mkdtemp(prefix="dbos_bench_")
            db_url = f"sqlite:///{os.path.join(tmp_dir, 'dbos.sqlite')}"
            where = f"SQLite file {db_url.removeprefix('sqlite:///')}"
        print(f"DBOS {version}, system database: {where}", flush=True)
        try:
            created = True
            # DBOS logs at INFO by default; WARNING keeps log output, and its cost, off the measured path.
            DBOS(config={"name": "aiki-peer-bench", "system_database_url": db_url, "log_level": "WARNING"})
            DBOS.launch()
        except Exception as exc:
            raise common.SetupError(f"DBOS did not launch on {where}: {type(exc).__name__}: {exc}") from exc
        rows = asyncio.run(common.run_matrix(f"dbos {args.db}", run_one, args.seconds, args.only))
    finally:
        if created:
            DBOS.destroy()  # also after a failed launch: it stops whatever the launch had started
        if pg_name is not None:
            drop_pg_database(args.pg_admin_url, pg_name)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)

    mode = "PostgreSQL" if args.db == "postgres" else "SQLite"
    deployment = (
        "one process (DBOS is a library: load generator and workflows share one event loop), "
        f"system database on {mode}, DBOS defaults but log level WARNING"
    )
    common.write_result(args.out, "dbos", mode, version, rows, deployment=deployment)
    return rows


if __name__ == "__main__":
    sys.exit(main())
