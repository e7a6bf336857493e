"""Server configuration: one frozen dataclass, from flags or `AIKI_*` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_DATABASE_URL = "sqlite:///./aiki.db"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9090  # 0: any free port
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    claim_idle_timeout_ms: int = 90_000
    # How often the timer daemon sweeps for due deadlines and idle claims it was not told about.
    sweep_interval_ms: int = 1_000
    # PostgreSQL connection pool.
    db_pool_min_size: int = 2
    db_pool_max_size: int = 20
    db_command_timeout_ms: int = 30_000
    # Redis delivery: publish a ready run again if nobody claimed it this long after (doubling).
    republish_after_ms: int = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if self.claim_idle_timeout_ms < 100:
            raise ValueError(f"claim_idle_timeout_ms must be >= 100, got {self.claim_idle_timeout_ms}")
        if self.sweep_interval_ms < 10:
            raise ValueError(f"sweep_interval_ms must be >= 10, got {self.sweep_interval_ms}")
        if not 1 <= self.db_pool_min_size <= self.db_pool_max_size:
            raise ValueError("need 1 <= db_pool_min_size <= db_pool_max_size")
        if self.republish_after_ms < 100 or self.db_command_timeout_ms < 100:
            raise ValueError("republish_after_ms and db_command_timeout_ms must be >= 100")
        if not self.database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"database URL must start with sqlite:/// or postgresql://, got {self.database_url!r}")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"Redis URL must start with redis://, rediss:// or unix://, got {self.redis_url!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ServerConfig:
        """Read `AIKI_*` variables; explicit overrides (e.g. from flags) win when not None."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, var, convert in _ENV:
            if env.get(var):
                try:
                    values[name] = convert(env[var])
                except ValueError:
                    raise ValueError(f"{var}={env[var]!r} is not a valid value") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


_ENV: list[tuple[str, str, type]] = [
    ("host", "AIKI_HOST", str),
    ("port", "AIKI_PORT", int),
    ("database_url", "AIKI_DATABASE_URL", str),
    ("redis_url", "AIKI_REDIS_URL", str),
    ("api_key", "AIKI_API_KEY", str),
    ("claim_idle_timeout_ms", "AIKI_CLAIM_IDLE_TIMEOUT_MS", int),
    ("sweep_interval_ms", "AIKI_SWEEP_INTERVAL_MS", int),
    ("db_pool_min_size", "AIKI_DB_POOL_MIN_SIZE", int),
    ("db_pool_max_size", "AIKI_DB_POOL_MAX_SIZE", int),
    ("db_command_timeout_ms", "AIKI_DB_COMMAND_TIMEOUT_MS", int),
    ("republish_after_ms", "AIKI_REPUBLISH_AFTER_MS", int),
]
