"""The PostgreSQL pool: connect with backoff, map outages to StoreUnavailable, one transaction helper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog

from core.errors import StoreUnavailable
from core.settings import Settings

log = structlog.get_logger(__name__)

# Exceptions that mean "the store is not there right now", as opposed to a bad query.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
)

Pool = asyncpg.Pool
Connection = asyncpg.Connection


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool reset hook. asyncpg already rolls back open transactions on release; we set no session
    state and take only transaction-scoped advisory locks, so the default RESET ALL round-trip is skipped."""


async def create_pool(settings: Settings, dsn: str, *, attempts: int | None = None) -> asyncpg.Pool:
    """Open the pool, retrying with exponential backoff; raise StoreUnavailable after the last attempt."""
    tries = attempts if attempts is not None else settings.db_connect_attempts
    delay = 0.2
    for attempt in range(1, tries + 1):
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                dsn,
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                command_timeout=settings.db_command_timeout,
                timeout=settings.db_acquire_timeout * 2,
                reset=_keep_session,
                server_settings={"application_name": "tongban", "timezone": "UTC"},
            )
            return pool
        except OUTAGE_ERRORS as exc:
            if attempt == tries:
                raise StoreUnavailable("PostgreSQL", settings.retry_after_seconds) from exc
            log.warning("db.connect_retry", attempt=attempt, error=type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


@asynccontextmanager
async def connection(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection; outages and acquire timeouts become StoreUnavailable (HTTP 503)."""
    try:
        conn = await pool.acquire(timeout=settings.db_acquire_timeout)
    except OUTAGE_ERRORS as exc:
        raise StoreUnavailable("PostgreSQL", settings.retry_after_seconds) from exc
    try:
        yield conn
    except OUTAGE_ERRORS as exc:
        raise StoreUnavailable("PostgreSQL", settings.retry_after_seconds) from exc
    finally:
        await pool.release(conn)


@asynccontextmanager
async def transaction(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """One connection in one transaction: commit on success, roll back on any exception."""
    async with connection(pool, settings) as conn, conn.transaction():
        yield conn


async def fetchval(pool: asyncpg.Pool, settings: Settings, query: str, *args: Any) -> Any:
    async with connection(pool, settings) as conn:
        return await conn.fetchval(query, *args)
