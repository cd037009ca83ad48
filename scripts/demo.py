"""`tongban demo seed`: idempotent demo data. Each capability adds a step to DEMO_STEPS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import typer
from rich.progress import Progress

from core import clock
from core.settings import Settings
from core.stores import Stores, close_stores, open_stores
from scripts.common import console, run_async, with_stores

app = typer.Typer(help="Demo data for trying Tongban out.", no_args_is_help=True)

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


async def seed(stores: Stores) -> None:
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
    """Load demo data (safe to run again: every step is idempotent)."""
    with_stores(seed)
    console.print("demo data loaded")
