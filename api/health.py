"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response, get

from api.deps import StoresDep
from api.problems import problem_response
from core import migrate


class Ready(msgspec.Struct):
    status: str
    postgres: str
    redis: str
    migrations: str


@get("/healthz", sync_to_thread=False, include_in_schema=True, tags=["ops"])
def healthz() -> dict[str, str]:
    """Liveness: the process answers. Stores are not consulted."""
    return {"status": "ok"}


async def _check_postgres(stores: StoresDep) -> tuple[str, str]:
    try:
        async with asyncio.timeout(stores.settings.db_acquire_timeout):
            version = await stores.pool.fetchval("SELECT version_num FROM alembic_version")
    except Exception as exc:  # any failure means "not ready"; the type is enough to act on
        return f"down: {type(exc).__name__}", "unknown"
    return "ok", ("current" if version == migrate.head() else f"behind: {version} != {migrate.head()}")


async def _check_redis(stores: StoresDep) -> str:
    try:
        async with asyncio.timeout(stores.settings.redis_timeout):
            await stores.redis.ping()
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


@get("/readyz", tags=["ops"])
async def readyz(request: Request[Any, Any, Any], stores: StoresDep) -> Response[Any]:
    """Readiness: PostgreSQL and Redis reachable and the schema at the latest migration."""
    (pg, migrations), redis_state = await asyncio.gather(_check_postgres(stores), _check_redis(stores))
    if pg == "ok" and redis_state == "ok" and migrations == "current":
        return Response(Ready(status="ready", postgres=pg, redis=redis_state, migrations=migrations))
    detail = f"postgres: {pg}; redis: {redis_state}; migrations: {migrations}"
    return problem_response(
        request,
        status=503,
        code="not_ready",
        title="Not ready",
        detail=detail,
        headers={"Retry-After": str(stores.settings.retry_after_seconds)},
    )
