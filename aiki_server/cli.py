"""`aiki-server`: flags and `AIKI_*` environment variables → ServerConfig → Server, until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from . import __version__
from .config import ServerConfig


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="aiki-server",
        description="The aiki durable execution server. Every flag may also be set by the AIKI_* "
        "environment variable named in its help; flags win.",
    )
    parser.add_argument("--version", action="version", version=f"aiki-server {__version__}")
    parser.add_argument("--host", help="address to listen on (AIKI_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port, 0 for any free one (AIKI_PORT, default 9090)")
    parser.add_argument(
        "--database-url",
        help="sqlite:///path/to/file.db or postgresql://user@host/db (AIKI_DATABASE_URL, default sqlite:///./aiki.db)",
    )
    parser.add_argument(
        "--redis-url", help="redis://host:port: deliver runs through Redis Streams (AIKI_REDIS_URL, default unset)"
    )
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (AIKI_API_KEY)")
    parser.add_argument(
        "--claim-idle-timeout-ms",
        type=int,
        help="requeue a run whose worker stopped heartbeating for this long (AIKI_CLAIM_IDLE_TIMEOUT_MS, default 90000)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return ServerConfig.from_env(
            host=args.host,
            port=args.port,
            database_url=args.database_url,
            redis_url=args.redis_url,
            api_key=args.api_key,
            claim_idle_timeout_ms=args.claim_idle_timeout_ms,
        )
    except ValueError as exc:
        parser.error(str(exc))


async def _serve(config: ServerConfig) -> None:
    from .app import Server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Server(config=config).serve_until(stop)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    try:
        import uvloop

        uvloop.run(_serve(config))
    except OSError as exc:
        print(f"aiki-server: {exc}", file=sys.stderr)
        sys.exit(1)
