"""Redis (or Valkey) client. Redis keeps only what may be lost or rebuilt; keys use {hash tags}."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import StoreUnavailable
from core.settings import Settings

Redis = aioredis.Redis
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


def create_client(settings: Settings, url: str) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=30,
        max_connections=256,
    )
    return client


@asynccontextmanager
async def guarded(settings: Settings) -> AsyncIterator[None]:
    """Turn Redis outages inside the block into StoreUnavailable (HTTP 503)."""
    try:
        yield
    except OUTAGE_ERRORS as exc:
        raise StoreUnavailable("Redis", settings.retry_after_seconds) from exc


def key(namespace: str, tag: str, *rest: str) -> str:
    """Build a key with a hash tag so related keys land in one Redis Cluster slot: ns:{tag}:rest."""
    tail = ":".join(rest)
    return f"{namespace}:{{{tag}}}" + (f":{tail}" if tail else "")
