"""`tongban demo seed`: idempotent demo data. Each capability adds a step to DEMO_STEPS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import typer
from rich.progress import Progress

from core import clock
from core.settings import Settings
from core.stores import Stores, close_stores, open_stores
from scripts.common import console, fail, run_async, with_stores

app = typer.Typer(help="Demo data for trying Tongban out.", no_args_is_help=True)


class DemoRefused(Exception):
    pass


DemoStep = tuple[str, Callable[[Stores], Awaitable[None]]]


async def _mark_seeded(stores: Stores) -> None:
    await stores.pool.execute(
        """INSERT INTO app_meta (key, value) VALUES ('demo_seeded_at', $1::jsonb)
           ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()""",
        msgspec.json.encode(clock.now().isoformat()).decode(),
    )


DEMO_STEPS: list[DemoStep] = [("demo marker", _mark_seeded)]


async def _token_signing_keys(stores: Stores) -> None:
    from core import keys

    await keys.ensure_keys(stores, keys.TOKEN)


DEMO_STEPS.append(("token signing keys", _token_signing_keys))


async def _demo_citizen(stores: Stores) -> None:
    from auth.demo import ensure_demo_citizen

    await ensure_demo_citizen(stores)


async def _sandbox_registries(stores: Stores) -> None:
    """Teach the sandbox registries the demo identities (skipped when no sandbox is running)."""
    import httpx

    from auth.demo import DEMO_ENTERPRISE, DEMO_PEOPLE

    settings = stores.settings
    async with httpx.AsyncClient(timeout=3.0) as client:
        try:
            people = await client.post(
                f"{settings.population_registry_url}/registry/import", json={"rows": DEMO_PEOPLE}
            )
            enterprises = await client.post(
                f"{settings.enterprise_registry_url}/registry/enterprises", json=[DEMO_ENTERPRISE]
            )
        except httpx.TransportError:
            console.print("  sandbox providers not running: registry records skipped (tongban sandbox start)")
            return
    people.raise_for_status()
    enterprises.raise_for_status()


DEMO_STEPS.append(("demo citizen 张三 (L2)", _demo_citizen))
DEMO_STEPS.append(("sandbox registry records", _sandbox_registries))


async def _demo_health_pass(stores: Stores) -> None:
    """张三's status (green under the default rules) signed as a pass and cached, and our certificates."""
    from auth.demo import ensure_demo_citizen
    from health_code.passes import show_pass

    await show_pass(stores, await ensure_demo_citizen(stores))


DEMO_STEPS.append(("health pass of 张三 (green)", _demo_health_pass))


# The demo mini-app's AppSecret, fixed so the docs can show a jscode2session call against `make run`.
# Demo data only: `tongban demo seed` refuses to run in production.
DEMO_APP_SECRET = "0123456789abcdef" * 2  # a published demo value
DEMO_ORGANISATION = "示范市政务服务数据管理局"
DEMO_APPS = 24


async def _demo_miniapps(stores: Stores) -> None:
    """A catalog of DEMO_APPS published apps (every 6th with a 1.1.0 in a 10% grey release); the first one
    gets DEMO_APP_SECRET so a mini-app server call can be tried."""
    from core.db import transaction
    from miniapps import registry, repository
    from miniapps.catalog import seed_catalog

    await seed_catalog(stores, organisation=DEMO_ORGANISATION, apps=DEMO_APPS, grey_every=6, first_number=1)
    async with transaction(stores.pool, stores.settings) as conn:
        org = await repository.organisation_by_name(conn, DEMO_ORGANISATION)
        assert org is not None
        first = min(await repository.apps_of_organisation(conn, org["id"]), key=lambda app: app["name"])
        await repository.set_app_secret(
            conn, first["appid"], registry.hash_secret(first["appid"], DEMO_APP_SECRET)
        )
    console.print(f"  demo mini-app {first['name']}: appid {first['appid']}, AppSecret {DEMO_APP_SECRET}")


DEMO_STEPS.append(("mini-app catalog", _demo_miniapps))


# The acquirer sandbox's test card (Luhn-valid, nobody's): only its token and last four stay with us.
DEMO_CARD = "4111111111111111"


async def _demo_onecode(stores: Stores) -> None:
    """张三's one-code: the issuer keys, and transit and payment linked through the sandbox providers (L2
    allows both; medical needs L3). Skipped when the sandbox is not running."""
    from auth.demo import ensure_demo_citizen
    from core import keys
    from core.db import connection
    from core.errors import ProviderUnavailable
    from onecode import authorisations, links, repository
    from onecode.links import LinkRequest

    await keys.ensure_keys(stores, authorisations.PURPOSE)
    account_id = await ensure_demo_citizen(stores)
    for request in (LinkRequest(kind="transit"), LinkRequest(kind="payment", card_number=DEMO_CARD)):
        async with connection(stores.pool, stores.settings) as conn:
            if await repository.active_link(conn, account_id, request.kind) is not None:
                continue
        try:
            await links.link(stores, account_id, 2, request)
        except ProviderUnavailable:
            console.print("  sandbox providers not running: one-code links skipped (tongban sandbox start)")
            return


DEMO_STEPS.append(("one-code of 张三 (transit, payment)", _demo_onecode))


async def seed(stores: Stores) -> None:
    if stores.settings.env == "production":
        raise DemoRefused("demo data (published demo secrets) is never loaded in production")
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("seeding demo data", total=len(DEMO_STEPS))
        for label, step in DEMO_STEPS:
            progress.update(task, description=f"seeding: {label}")
            await step(stores)
            progress.advance(task)


def seed_now(settings: Settings) -> None:
    """Seed with already-prepared settings (used by `tongban up`)."""

    async def go() -> None:
        stores = await open_stores(settings)
        try:
            await seed(stores)
        finally:
            await close_stores(stores)

    run_async(go())


@app.command("seed")
def seed_command() -> None:
    """Load demo data (safe to run again: every step is idempotent). Refused in production."""
    try:
        with_stores(seed)
    except DemoRefused as exc:
        fail(str(exc))
    console.print("demo data loaded")
