"""The process's handles on PostgreSQL and Redis, opened once and passed to service functions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import redis.asyncio as aioredis

from core import db
from core import redis as redis_mod
from core.errors import StoreUnavailable
from core.pipelined_redis import close_pipelined
from core.settings import Settings, SettingsError

if TYPE_CHECKING:
    from core.pii.vault import Vault


@dataclass(slots=True)
class Stores:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    # The PII vault, opened on first use. Typed Any here because Litestar inspects this dataclass at run
    # time, where core.pii.vault (which imports this module) cannot be named.
    _vault: Any = None

    async def vault(self) -> Vault:
        """The process's PII vault (opened on first use: it reads and caches the wrapped keys)."""
        if self._vault is None:
            from core.pii.vault import open_vault

            self._vault = await open_vault(self)
        vault: Vault = self._vault
        return vault


async def open_stores(settings: Settings, *, connect_attempts: int | None = None) -> Stores:
    if settings.database_url is None or settings.redis_url is None:
        raise SettingsError(
            "TONGBAN_DATABASE_URL and TONGBAN_REDIS_URL must be set (tongban serve starts embedded ones)"
        )
    pool = await db.create_pool(settings, settings.database_url, attempts=connect_attempts)
    return Stores(settings=settings, pool=pool, redis=redis_mod.create_client(settings, settings.redis_url))


async def close_stores(stores: Stores) -> None:
    """Close every handle the process opened: stores, and the shared provider clients."""
    from core.sms import close_sms_gateway

    await close_sms_gateway()
    await close_pipelined(stores.redis)
    await stores.redis.aclose()
    await stores.pool.close()


async def check_stores(settings: Settings) -> None:
    """Start-up check: PostgreSQL (with backoff, see db.create_pool) and Redis (same backoff) answer."""
    stores = await open_stores(settings)
    try:
        delay = 0.2
        for attempt in range(1, settings.db_connect_attempts + 1):
            try:
                await stores.redis.ping()
                return
            except redis_mod.OUTAGE_ERRORS as exc:
                if attempt == settings.db_connect_attempts:
                    raise StoreUnavailable("Redis", settings.retry_after_seconds) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
    finally:
        await close_stores(stores)
