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


# Login codes are single use: enough for a warm-up and a 15 s run at well over hello's rate.
JSCODE2SESSION_CODES = 150_000


def _write_codes(codes_file: Path, codes: list[str]) -> None:
    codes_file.parent.mkdir(parents=True, exist_ok=True)
    codes_file.write_text("\n".join(codes) + "\n")
    # The script's resume point (where the previous wrk run stopped): new codes start from the top.
    Path(f"{codes_file}.next").unlink(missing_ok=True)


async def jscode2session_codes(ctx: SetupContext) -> Mapping[str, str]:
    """A published app with a known AppSecret, a logged-in citizen and JSCODE2SESSION_CODES login codes of
    theirs for it, written to a file that lua/jscode2session.lua walks through (a code per request)."""
    import asyncio
    from uuid import UUID

    from auth.service import issue_login_code
    from core.db import transaction
    from core.settings import load_settings
    from core.stores import close_stores, open_stores
    from miniapps import catalog, registry, repository, sdk

    stores = await open_stores(load_settings(dict(ctx.server_env)))
    try:
        phone = "13800000001"
        challenge_id, code = await issue_login_code(stores, phone)
        login = await ctx.client.post(
            "/v1/auth/login",
            json={"phone": phone, "code": code, "challenge_id": challenge_id, "device": {"id": "bench"}},
        )
        login.raise_for_status()
        account_id = login.json()["account_id"]
        organisation = "Bench SDK 数据中心"
        await catalog.seed_catalog(
            stores, organisation=organisation, apps=1, grey_every=0, first_number=90_000
        )
        secret = registry.new_app_secret()
        async with transaction(stores.pool, stores.settings) as conn:
            org = await repository.organisation_by_name(conn, organisation)
            assert org is not None
            [app] = await repository.apps_of_organisation(conn, org["id"])
            await repository.set_app_secret(conn, app["appid"], registry.hash_secret(app["appid"], secret))
        codes = await sdk.issue_login_codes_unchecked(
            stores, UUID(account_id), app["appid"], org["id"], JSCODE2SESSION_CODES
        )
    finally:
        await close_stores(stores)
    codes_file = Path(ctx.server_env.get("TONGBAN_DATA_DIR", ".")) / "bench-jscode2session-codes.txt"
    await asyncio.to_thread(_write_codes, codes_file, codes)
    return {"BENCH_CODES_FILE": str(codes_file), "BENCH_APPID": app["appid"], "BENCH_SECRET": secret}


# The bench citizen's verified identity (a valid GB 11643 number, nobody's).
PASS_CITIZEN = {"phone": "13800000000", "name": "张三", "id_number": "210102199001011237"}


async def pass_citizen(ctx: SetupContext) -> Mapping[str, str]:
    """The bench citizen made L2 (real name stored as a verification would), logged in again for an L2
    token, and its pass shown once, so wrk measures what a phone refreshing its pass costs."""
    from auth.realname import store_identity
    from auth.service import issue_login_code
    from auth.tokens import authenticate
    from core.db import transaction
    from core.settings import load_settings
    from core.stores import close_stores, open_stores

    first = (await citizen_token(ctx))["BENCH_TOKEN"]
    stores = await open_stores(load_settings(dict(ctx.server_env)))
    try:
        account_id = (await authenticate(stores, first)).account_id
        vault = await stores.vault()
        async with transaction(stores.pool, stores.settings) as conn:
            await store_identity(conn, vault, account_id, PASS_CITIZEN["name"], PASS_CITIZEN["id_number"])
        challenge_id, code = await issue_login_code(stores, PASS_CITIZEN["phone"])
    finally:
        await close_stores(stores)
    answer = await ctx.client.post(
        "/v1/auth/login",
        json={
            "phone": PASS_CITIZEN["phone"],
            "code": code,
            "challenge_id": challenge_id,
            "device": {"id": "bench"},
        },
    )
    answer.raise_for_status()
    token = answer.json()["access_token"]
    shown = await ctx.client.get("/v1/health-pass", headers={"Authorization": f"Bearer {token}"})
    shown.raise_for_status()
    return {"BENCH_TOKEN": token}


async def checkpoint_scan(ctx: SetupContext) -> Mapping[str, str]:
    """A checkpoint (its credentials as the bearer token) and a valid pass to scan: the bench citizen's own,
    issued by the server (see pass_citizen). Every scan is verified and recorded (group commit)."""
    import json

    from core.db import connection
    from core.settings import load_settings
    from core.stores import close_stores, open_stores
    from health_code.checkpoints import bearer_token, create_checkpoint

    citizen = (await pass_citizen(ctx))["BENCH_TOKEN"]
    shown = await ctx.client.get("/v1/health-pass", headers={"Authorization": f"Bearer {citizen}"})
    shown.raise_for_status()
    body = json.dumps({"payload": shown.json()["payload"]})
    stores = await open_stores(load_settings(dict(ctx.server_env)))
    try:
        async with connection(stores.pool, stores.settings) as conn:
            made = await create_checkpoint(conn, "bench checkpoint")
    finally:
        await close_stores(stores)
    token = bearer_token(made.checkpoint.id, made.secret)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    answer = await ctx.client.post("/v1/checkpoints/scans", content=body, headers=headers)
    answer.raise_for_status()
    if not answer.json()["valid"]:
        raise RuntimeError(f"the bench pass does not verify: {answer.json()['reason']}")
    return {"BENCH_TOKEN": token, "BENCH_BODY": body}


async def terminal_resolve(ctx: SetupContext) -> Mapping[str, str]:
    """A validator, a citizen's authorisation and pre-signed resolves of distinct codes (bench/onecode_terminals.py)."""
    from bench.onecode_terminals import terminal_resolve as setup

    return await setup(ctx)


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
    BenchRoute(
        "jscode2session",
        "GET",
        "/sns/jscode2session",
        target_ratio=0.40,
        script="jscode2session.lua",
        setup=jscode2session_codes,
        what="a mini-app server's login: AppSecret check and a single-use login code, one Redis call",
    ),
    BenchRoute(
        "pass-display",
        "GET",
        "/v1/health-pass",
        target_ratio=0.50,
        setup=pass_citizen,
        what="an L2 citizen showing the health pass: token check and the pass from the process cache, no I/O",
    ),
    BenchRoute(
        "scan",
        "POST",
        "/v1/checkpoints/scans",
        target_ratio=0.35,
        setup=checkpoint_scan,
        what="a checkpoint scan: credentials from cache, verify() (ES256), the scan recorded by group commit",
    ),
    BenchRoute(
        "terminal-resolve",
        "POST",
        "/v1/terminals/resolve",
        target_ratio=0.35,
        script="terminal_resolve.lua",
        setup=terminal_resolve,
        what="an online bus validator's resolve (transit: no provider call while answering): HMAC-signed "
        "request and nonce, verify() (two ES256), replay refused in Redis, the ride recorded with its fare job",
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
