"""aiki on the peer benchmark's workloads (bench/peers/common.py), in one of its two modes.

    python -m bench.peers.aiki_driver --mode sqlite|postgres-redis --out FILE [--seconds S] [--only KIND]

The deployment is the one `make bench` measures (bench/harness.py): an `aiki-server` process on a
fresh database and worker processes of bench/workflows.py (one polling worker on SQLite; four Redis
Streams workers on PostgreSQL + Redis), with 100 workflow slots in all so that 100 in flight are
never capped by the workers. This process is the load generator: it starts each workflow over HTTP
and long-polls for its result, as an application would.
"""

from __future__ import annotations

import sys
from importlib.metadata import version as package_version
from typing import Any

from aiki_client import Client, connect
from bench.harness import DEFAULT_PG_ADMIN_URL, DEFAULT_REDIS_URL, Deployment
from bench.peers import common
from bench.workflows import bench_1_v1, bench_10_v1, bench_nap_v1, run_loop

VERSIONS = {"1-step": bench_1_v1, "10-step": bench_10_v1, "sleep-1s": bench_nap_v1}
WORKER_SLOTS = 100
RUN_TIMEOUT_S = 120.0


async def drive(dep: Deployment, seconds: float, only: str | None) -> list[dict[str, Any]]:
    client: Client = await connect(dep.url)

    async def run_one(kind: str, value: int) -> Any:
        handle = await VERSIONS[kind].start(client, value)
        return await handle.wait_for_completion(timeout=RUN_TIMEOUT_S)

    try:
        return await common.run_matrix(f"aiki {dep.mode}", run_one, seconds, only)
    finally:
        await client.close()


def main() -> int:
    parser = common.driver_args("aiki on the peer benchmark's workloads")
    parser.add_argument("--mode", choices=("sqlite", "postgres-redis"), required=True)
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    args = parser.parse_args()
    dep = Deployment(
        args.mode, concurrency=WORKER_SLOTS, batch=10, pg_admin_url=args.pg_admin_url, redis_url=args.redis_url
    )
    ok = False
    try:
        dep.start()
        rows = run_loop(drive(dep, args.seconds, args.only))
        dep.check_alive()
        _, _, problems = dep.stop()
        if problems:
            print("\n".join(f"  problem: {p}" for p in problems), file=sys.stderr)
            return 1
        mode = "SQLite" if args.mode == "sqlite" else "PostgreSQL + Redis"
        common.write_result(args.out, "aiki", mode, package_version("aiki-server"), rows, deployment=dep.label)
        ok = not any(r["errors"] for r in rows)
        return 0 if ok else 1
    finally:
        dep.cleanup(show_logs=not ok)


if __name__ == "__main__":
    sys.exit(main())
