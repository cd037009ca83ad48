"""Per-worker databases and Redis indexes so xdist workers never share state."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit


def worker_name() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "gw0")


def worker_number() -> int:
    return int(worker_name().removeprefix("gw") or 0)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def redis_index() -> int:
    """Redis database index for this worker; TONGBAN_TEST_REDIS_OFFSET separates concurrent runs."""
    offset = int(os.environ.get("TONGBAN_TEST_REDIS_OFFSET", "1"))
    return (offset + worker_number()) % 16


def with_redis_db(url: str, index: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{index}"))


def run_database_name(run_id: str, suffix: str = "") -> str:
    return f"tb_{run_id}_{worker_name()}{suffix}"
