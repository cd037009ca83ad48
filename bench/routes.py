"""The routes `tongban bench` measures. Adding a hot path is one BenchRoute in ROUTES (see docs/benchmarks.md).

Every route is measured in the same run as HELLO, against the same server process, and reported as a ratio
to it: the ratio says what the route costs on top of the framework, whatever the machine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LUA_DIR = Path(__file__).resolve().parent / "lua"
# Sets method, body and bearer token from BENCH_METHOD / BENCH_BODY / BENCH_TOKEN (see lua/request.lua).
DEFAULT_SCRIPT = "request.lua"
HELLO = "hello"


@dataclass(frozen=True, slots=True)
class SetupContext:
    """What a setup hook gets once the server answers: its address, a client for it, and the stores it uses."""

    base_url: str
    client: httpx.AsyncClient
    database_url: str
    redis_url: str
    # The server's whole environment (data dir, master key, settings): for hooks that use project code.
    server_env: Mapping[str, str] = field(default_factory=dict)


# Prepares data or tokens for one route against the running server; the returned variables go into wrk's
# environment, where the route's Lua script reads them with os.getenv. Runs once per server start, so it
# must be safe to run again on the same database.
SetupHook = Callable[[SetupContext], Awaitable[Mapping[str, str]]]


@dataclass(frozen=True, slots=True)
class BenchRoute:
    name: str
    method: str
    path: str
    # Least acceptable req/s as a fraction of hello's in the same run; None: reported, not judged.
    target_ratio: float | None = None
    # A Lua file under bench/lua/. Unset: plain GETs need none, anything else gets DEFAULT_SCRIPT.
    script: str | None = None
    setup: SetupHook | None = None
    what: str = ""

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"bench route {self.name}: path must start with '/'")
        if self.target_ratio is not None and not 0 < self.target_ratio <= 1.5:
            raise ValueError(f"bench route {self.name}: target_ratio must be in (0, 1.5]")

    def script_path(self) -> Path | None:
        """The Lua script wrk runs for this route, or None for a plain GET."""
        name = self.script
        if name is None and (self.method.upper() != "GET" or self.setup is not None):
            name = DEFAULT_SCRIPT
        return LUA_DIR / name if name is not None else None


async def citizen_token(ctx: SetupContext) -> Mapping[str, str]:
    """Log a bench citizen in through the real login endpoint and hand its access token to wrk.
    The code is issued directly (no SMS provider runs during a bench), exactly as the SMS would carry it."""
    from auth.service import issue_login_code
    from core.settings import load_settings
    from core.stores import close_stores, open_stores

    stores = await open_stores(load_settings(dict(ctx.server_env)))
    try:
        phone = "13800000000"
        challenge_id, code = await issue_login_code(stores, phone)
    finally:
        await close_stores(stores)
    answer = await ctx.client.post(
        "/v1/auth/login",
        json={"phone": phone, "code": code, "challenge_id": challenge_id, "device": {"id": "bench"}},
    )
    answer.raise_for_status()
    return {"BENCH_TOKEN": answer.json()["access_token"]}


# 蒙速办 hosts about this many mini-apps.
CATALOG_APPS = 5400


async def catalog_citizen(ctx: SetupContext) -> Mapping[str, str]:
    """The catalog of a whole province: CATALOG_APPS published apps (every 50th also in a 10% grey release)
    seeded into the server's database, and a logged-in citizen, whose view adds the grey overlay."""
    import asyncio

    from core.settings import load_settings
    from core.stores import close_stores, open_stores
    from miniapps.catalog import seed_catalog

    stores = await open_stores(load_settings(dict(ctx.server_env)))
    try:
        await seed_catalog(stores, organisation="Bench 数据中心", apps=CATALOG_APPS, grey_every=50)
    finally:
        await close_stores(stores)
    # Every server process reloads on the published change; wait until this one shows the whole catalog.
    for _ in range(100):
        answer = await ctx.client.get("/v1/catalog", params={"limit": 1})
        if answer.is_success and answer.json()["total"] >= CATALOG_APPS:
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError("the server's catalog did not show the seeded apps within 10 s")
    return await citizen_token(ctx)


ROUTES: tuple[BenchRoute, ...] = (
    BenchRoute(HELLO, "GET", "/v1/bench/hello", what="framework ceiling: routing, middleware, JSON, no I/O"),
    BenchRoute(
        "db", "GET", "/v1/bench/db", target_ratio=0.20, what="one PostgreSQL round-trip from the pool"
    ),
    BenchRoute("redis", "GET", "/v1/bench/redis", target_ratio=0.20, what="one Redis round-trip (INCR)"),
    BenchRoute(
        "token-check",
        "GET",
        "/v1/me/token",
        target_ratio=0.60,
        setup=citizen_token,
        what="an authenticated route: ES256 access-token check and revocation set, no I/O",
    ),
    BenchRoute(
        "catalog",
        "GET",
        "/v1/catalog",
        target_ratio=0.60,
        setup=catalog_citizen,
        what="a citizen's first catalog page of 5,400 apps with their grey view, from memory, no I/O",
    ),
)


def select_routes(names: Iterable[str] | None, registry: tuple[BenchRoute, ...] = ROUTES) -> list[BenchRoute]:
    """The routes to run, in registry order, hello always first (every ratio is taken against it)."""
    by_name = {route.name: route for route in registry}
    if len(by_name) != len(registry):
        raise ValueError("bench routes: two routes share a name")
    wanted = {name.strip() for name in names if name.strip()} if names is not None else set(by_name)
    unknown = sorted(wanted - set(by_name))
    if unknown:
        raise ValueError(f"unknown bench route(s): {', '.join(unknown)} (known: {', '.join(by_name)})")
    wanted.add(HELLO)
    chosen = [route for route in registry if route.name in wanted]
    return sorted(chosen, key=lambda route: route.name != HELLO)
