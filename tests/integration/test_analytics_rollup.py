"""Rolling visits up from Redis into PostgreSQL: a day's rows written, re-running overwriting them (and never
lowering them when Redis lost the day), today and yesterday by the periodic job, the members' API with
days without visits filled in, the `tongban miniapps rollup` backstop, and the periodic-job mechanism of
core.jobs running each tick once however many workers are up."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest
from click.testing import Result
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from api.app import create_app
from core import clock, jobs
from core.db import connection
from core.settings import Settings
from core.stores import Stores
from miniapps import analytics
from miniapps.analytics import record_visit, users_key, visit_day, visits_key
from miniapps.jobs import ROLLUP_JOB, rollup_visits
from scripts.cli import app as cli_app
from tests.integration.test_miniapps_support import ApiClient, Org, make_org, make_person, register_app

NOON = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai
DAY = date(2026, 11, 20)


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
async def org(api: ApiClient, stores: Stores) -> Org:
    return await make_org(api, stores)


async def new_app(api: ApiClient, org: Org) -> str:
    appid: str = (await register_app(api, org))["app"]["appid"]
    return appid


async def visit(stores: Stores, appid: str, people: int, at: datetime, first: int = 1) -> None:
    """`people` citizens open the app. Their ids are fixed (first, first + 1, ...): a HyperLogLog's count of a
    few random ids is off by one now and then, and of these it is exact, every run."""
    accounts = [uuid.UUID(int=first + n) for n in range(people)]
    await asyncio.gather(*(record_visit(stores.redis, appid, account, at=at) for account in accounts))


async def rows_of(stores: Stores, appid: str) -> list[tuple[date, int, int]]:
    async with connection(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            "SELECT day, visits, unique_users FROM miniapp_daily_visits WHERE appid = $1 ORDER BY day", appid
        )
    return [(row["day"], row["visits"], row["unique_users"]) for row in rows]


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner(env={"COLUMNS": "200"}).invoke, cli_app, list(args))


async def test_rollup_overwrites_and_never_lowers(api: ApiClient, stores: Stores, org: Org) -> None:
    busy, idle = await new_app(api, org), await new_app(api, org)
    await visit(stores, busy, 10, NOON)
    assert await analytics.rollup_day(stores, DAY) >= 1
    assert await rows_of(stores, busy) == [(DAY, 10, 10)]
    assert await rows_of(stores, idle) == []  # no visits, no row

    # Re-running changes nothing; more visits since are picked up by the next run.
    await analytics.rollup_day(stores, DAY)
    assert await rows_of(stores, busy) == [(DAY, 10, 10)]
    await visit(stores, busy, 5, NOON, first=11)
    await analytics.rollup_day(stores, DAY)
    assert await rows_of(stores, busy) == [(DAY, 15, 15)]

    # Redis lost the day (a restart): the row keeps what was rolled up.
    await stores.redis.delete(visits_key(busy, DAY), users_key(busy, DAY))
    await analytics.rollup_day(stores, DAY)
    assert await rows_of(stores, busy) == [(DAY, 15, 15)]
    # Visits of an appid that is no app are not written.
    ghost = "tb" + secrets.token_hex(8)
    await visit(stores, ghost, 2, NOON)
    await analytics.rollup_day(stores, DAY)
    assert await rows_of(stores, ghost) == []


async def test_the_periodic_job_rolls_up_today_and_yesterday(
    api: ApiClient, stores: Stores, org: Org
) -> None:
    appid = await new_app(api, org)
    now = clock.now()
    await visit(stores, appid, 3, now - timedelta(days=1))
    await visit(stores, appid, 4, now)
    await visit(stores, appid, 9, now - timedelta(days=2))  # rolled up before, not by this job
    assert jobs.registered_periodic()[ROLLUP_JOB].every_seconds == 300
    await rollup_visits(stores)
    today = visit_day(now)
    assert await rows_of(stores, appid) == [(today - timedelta(days=1), 3, 3), (today, 4, 4)]


async def test_members_read_the_days_with_gaps_filled(api: ApiClient, stores: Stores, org: Org) -> None:
    appid = await new_app(api, org)
    now = clock.now()
    await visit(stores, appid, 2, now)
    await visit(stores, appid, 6, now - timedelta(days=2))
    await analytics.rollup_day(stores, visit_day(now))
    await analytics.rollup_day(stores, visit_day(now - timedelta(days=2)))

    answer = await api.get(f"/v1/miniapps/{appid}/visits", params={"days": 4}, headers=org.admin.auth)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    today = visit_day(now)
    assert [(item["day"], item["visits"], item["unique_users"]) for item in body["days"]] == [
        (today.isoformat(), 2, 2),
        ((today - timedelta(days=1)).isoformat(), 0, 0),
        ((today - timedelta(days=2)).isoformat(), 6, 6),
        ((today - timedelta(days=3)).isoformat(), 0, 0),
    ]
    assert body["visits"] == 8 and body["peak_unique_users"] == 6
    outsider = await make_person(stores)
    assert (await api.get(f"/v1/miniapps/{appid}/visits", headers=outsider.auth)).status_code == 404
    too_many = await api.get(f"/v1/miniapps/{appid}/visits", params={"days": 400}, headers=org.admin.auth)
    assert too_many.status_code == 400 and too_many.json()["field"] == "days"


async def test_rollup_command(api: ApiClient, stores: Stores, org: Org) -> None:
    appid = await new_app(api, org)
    await visit(stores, appid, 7, NOON)
    rolled = await cli("miniapps", "rollup", "--day", "2026-11-20")
    assert rolled.exit_code == 0, rolled.output
    assert "app-days rolled up" in rolled.output
    assert await rows_of(stores, appid) == [(DAY, 7, 7)]
    bad = await cli("miniapps", "rollup", "--day", "20.11.2026")
    assert bad.exit_code == 1 and "--day" in bad.output


# --- the periodic-job mechanism ----------------------------------------------------------------------------

TICKS: list[float] = []


@pytest.fixture
def ticking() -> AsyncIterator[None]:  # type: ignore[misc]
    TICKS.clear()

    @jobs.periodic("tests.tick", every_seconds=1)
    async def tick(stores: Stores) -> None:
        TICKS.append(time.time())

    yield
    jobs._PERIODIC.pop("tests.tick")


async def test_each_tick_runs_once_across_workers(settings: Settings, stores: Stores, ticking: None) -> None:
    workers = [
        jobs.create_worker(settings, stores=stores, relay=False, handle_signals=False) for _ in range(3)
    ]
    for worker in workers:
        worker.poll_delay_s = 0.05
    runs = [asyncio.create_task(worker.async_run()) for worker in workers]
    started = time.time()
    await asyncio.sleep(4.5)
    for run in runs:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
    for worker in workers:
        await worker.close()
    elapsed = time.time() - started
    # One run per second on the clock, not one per worker and second (that would be about 3 x elapsed).
    assert 2 <= len(TICKS) <= elapsed + 1, (len(TICKS), elapsed)
