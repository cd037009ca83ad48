"""`tongban miniapps cases` and `tongban miniapps stats` against the real stores: overdue cases listed (and
fresh ones not), an app's ratings per level with its satisfaction rate and cases, its visits of the last N
days, and one clear line for an unknown app."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from click.testing import Result
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from api.app import create_app
from core import clock
from core.settings import Settings
from core.stores import Stores
from miniapps import analytics, ratings
from miniapps.ratings import RateTransaction
from scripts.cli import app as cli_app
from tests.integration.test_miniapps_support import make_org, make_person, register_app


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def cli(*args: str) -> Result:
    # The command runs its own event loop (asyncio.run), so it goes to a thread off this test's loop.
    return await asyncio.to_thread(CliRunner(env={"COLUMNS": "200"}).invoke, cli_app, list(args))


def txn() -> str:
    return "CLI-" + secrets.token_hex(6)


async def test_cases_overdue(api: AsyncTestClient, stores: Stores) -> None:  # type: ignore[type-arg]
    org = await make_org(api, stores)
    appid = (await register_app(api, org))["app"]["appid"]
    citizen = await make_person(stores, level=1)
    long_ago = clock.now() - timedelta(days=30)
    old = await ratings.rate(
        stores, citizen.account_id, appid, RateTransaction(txn(), "非常不满意", "三次没办成"), now=long_ago
    )
    fresh = await ratings.rate(stores, citizen.account_id, appid, RateTransaction(txn(), "不满意", "太慢"))
    assert old.case_id is not None and fresh.case_id is not None and old.case_due_on is not None

    overdue = await cli("miniapps", "cases", "--overdue")
    assert overdue.exit_code == 0, overdue.output
    assert "overdue rectification cases" in overdue.output
    assert str(old.case_id) in overdue.output and str(fresh.case_id) not in overdue.output
    line = next(line for line in overdue.output.splitlines() if str(old.case_id) in line)
    late_days = (ratings.local_day(clock.now()) - old.case_due_on).days
    assert appid in line and "非常不满意" in line and old.transaction_id in line
    assert old.case_due_on.isoformat() in line and f"{late_days} days" in line

    every_open = await cli("miniapps", "cases")
    assert every_open.exit_code == 0, every_open.output
    assert str(old.case_id) in every_open.output and str(fresh.case_id) in every_open.output


async def test_stats(api: AsyncTestClient, stores: Stores) -> None:  # type: ignore[type-arg]
    org = await make_org(api, stores)
    appid = (await register_app(api, org))["app"]["appid"]
    citizen = await make_person(stores, level=1)
    for level, times in (("非常满意", 2), ("满意", 1), ("不满意", 1)):
        for _ in range(times):
            await ratings.rate(stores, citizen.account_id, appid, RateTransaction(txn(), level, "差评理由"))
    now = clock.now()
    # Fixed ids: a HyperLogLog counts these exactly (a few random ones are off by one now and then).
    for n in range(5):
        await analytics.record_visit(stores.redis, appid, uuid.UUID(int=201 + n), at=now)
    await analytics.record_visit(stores.redis, appid, uuid.UUID(int=301), at=now - timedelta(days=1))
    await analytics.rollup_recent(stores, now=now)

    shown = await cli("miniapps", "stats", appid, "--days", "3")
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "4 ratings, satisfaction rate 75.0%" in out

    def row(first: str) -> list[str]:
        line = next(line for line in out.splitlines() if line.strip("│ ").startswith(first))
        return [cell.strip() for cell in line.strip().strip("│").split("│")]

    assert row("非常满意") == ["非常满意", "5", "2", "50.0%"]
    assert row("满意") == ["满意", "4", "1", "25.0%"]
    assert row("基本满意") == ["基本满意", "3", "0", "0.0%"]
    assert row("不满意") == ["不满意", "2", "1", "25.0%"]
    assert row("非常不满意") == ["非常不满意", "1", "0", "0.0%"]
    assert "cases: 1 open (0 overdue), 0 answered (0 late)" in out
    today = analytics.visit_day(now)
    assert row(today.isoformat()) == [today.isoformat(), "5", "5"]
    assert row((today - timedelta(days=1)).isoformat()) == [(today - timedelta(days=1)).isoformat(), "1", "1"]
    assert row((today - timedelta(days=2)).isoformat()) == [(today - timedelta(days=2)).isoformat(), "0", "0"]
    assert (today - timedelta(days=3)).isoformat() not in out
    assert "6 visits in 3 days, peak 5 users a day" in out

    unknown = await cli("miniapps", "stats", "tb0000000000000000")
    assert unknown.exit_code == 1 and "no such mini-app" in unknown.output
