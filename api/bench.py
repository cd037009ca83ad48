"""Reference routes for the bench harness: the framework's own ceiling and one round-trip to each store.
Mounted only with TONGBAN_BENCH_ROUTES=true."""

from __future__ import annotations

from litestar import Router, get

from api.deps import StoresDep
from core import db
from core import redis as redis_mod


@get("/hello", sync_to_thread=False)
def hello() -> dict[str, str]:
    return {"hello": "world"}


@get("/db")
async def one_postgres_round_trip(stores: StoresDep) -> dict[str, int]:
    value = await db.fetchval(stores.pool, stores.settings, "SELECT $1::int + 1", 41)
    return {"value": int(value)}


@get("/redis")
async def one_redis_round_trip(stores: StoresDep) -> dict[str, int]:
    async with redis_mod.guarded(stores.settings):
        value = await stores.redis.incr(redis_mod.key("bench", "counter"))
    return {"value": int(value)}


bench_router = Router(
    path="/v1/bench", route_handlers=[hello, one_postgres_round_trip, one_redis_round_trip], tags=["bench"]
)
