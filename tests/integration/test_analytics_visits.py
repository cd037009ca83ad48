"""Counting visits in the real Redis: one script call per open, visits exact, unique users by HyperLogLog
close to the true count, a quick re-open counted once, days in Asia/Shanghai, all of an app-day's keys in
one Redis Cluster slot with a week's expiry, Redis trouble never failing the app open, and the catalog's
recently-used endpoint counting."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import pytest
import redis.asyncio as aioredis
from litestar.testing import AsyncTestClient
from redis.crc import key_slot

from api.app import create_app
from core.settings import Settings
from core.stores import Stores
from miniapps import analytics
from miniapps.analytics import KEEP_DAYS, record_visit, users_key, visit_day, visits_key
from tests.integration.test_miniapps_support import ApiClient, make_org, make_person, make_staff, released_app


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


def new_appid() -> str:
    return "tb" + secrets.token_hex(8)


async def counts(stores: Stores, appid: str, day: date) -> tuple[int, int]:
    visits = await stores.redis.get(visits_key(appid, day))
    return int(visits or 0), int(await stores.redis.pfcount(users_key(appid, day)))


NOON = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai


async def test_many_users_counted_exactly_and_estimated_closely(stores: Stores) -> None:
    appid, users = new_appid(), 20_000
    accounts = [uuid.uuid4() for _ in range(users)]
    for start in range(0, users, 1000):
        counted = await asyncio.gather(
            *(
                record_visit(stores.redis, appid, account, at=NOON)
                for account in accounts[start : start + 1000]
            )
        )
        assert all(counted)
    visits, unique = await counts(stores, appid, visit_day(NOON))
    assert visits == users
    # Redis's HyperLogLog has a standard error of 0.81%: 3% is beyond four standard errors.
    assert abs(unique - users) / users < 0.03, unique
    # The same people again within their open window: no new visits, the same unique users.
    for account in accounts[:500]:
        assert await record_visit(stores.redis, appid, account, at=NOON) is False
    visits_again, unique_again = await counts(stores, appid, visit_day(NOON))
    assert visits_again == users and unique_again == unique


async def test_a_quick_reopen_is_the_same_visit(stores: Stores) -> None:
    appid, account = new_appid(), uuid.UUID(int=101)
    assert await record_visit(stores.redis, appid, account, at=NOON, window_seconds=1) is True
    assert await record_visit(stores.redis, appid, account, at=NOON, window_seconds=1) is False
    assert await counts(stores, appid, visit_day(NOON)) == (1, 1)
    await asyncio.sleep(1.1)
    assert await record_visit(stores.redis, appid, account, at=NOON, window_seconds=1) is True
    assert await counts(stores, appid, visit_day(NOON)) == (2, 1)
    # Another user in the window of the first is a visit of their own.
    assert await record_visit(stores.redis, appid, uuid.UUID(int=102).hex, at=NOON) is True
    assert await counts(stores, appid, visit_day(NOON)) == (3, 2)


async def test_days_are_shanghai_days_and_keys_share_a_slot_and_expire(stores: Stores) -> None:
    appid, account = new_appid(), uuid.uuid4()
    before_midnight = datetime(2026, 11, 20, 15, 59, tzinfo=UTC)  # 23:59 on the 20th in Shanghai
    after_midnight = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)  # 00:00 on the 21st
    assert visit_day(before_midnight) == date(2026, 11, 20) and visit_day(after_midnight) == date(
        2026, 11, 21
    )
    await record_visit(stores.redis, appid, account, at=before_midnight)
    await record_visit(stores.redis, appid, account, at=after_midnight)
    assert await counts(stores, appid, date(2026, 11, 20)) == (1, 1)
    assert await counts(stores, appid, date(2026, 11, 21)) == (1, 1)

    day = date(2026, 11, 21)
    keys = [visits_key(appid, day), users_key(appid, day)]
    markers = [
        key.decode()
        async for key in stores.redis.scan_iter(match=f"miniapps:visits:{{{appid}:20261121}}:open:*")
    ]
    assert len(markers) == 1 and account.hex in markers[0]
    assert len({key_slot(key.encode()) for key in [*keys, *markers]}) == 1
    assert f"{{{appid}:20261121}}" in keys[0]
    for key in keys:
        assert KEEP_DAYS * 86_400 - 60 < await stores.redis.ttl(key) <= KEEP_DAYS * 86_400
    assert 0 < await stores.redis.ttl(markers[0]) <= analytics.VISIT_WINDOW_SECONDS


async def test_redis_trouble_never_fails_the_open(stores: Stores) -> None:
    gone = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        assert await record_visit(gone, new_appid(), uuid.uuid4()) is False
    finally:
        await gone.aclose()
    with pytest.raises(ValueError):
        await record_visit(stores.redis, "wx1234", uuid.uuid4())


async def test_opening_an_app_from_the_catalog_counts_a_visit(api: ApiClient, stores: Stores) -> None:
    org = await make_org(api, stores)
    appid, _ = await released_app(api, org, await make_staff(stores, "reviewer"))
    citizens = [await make_person(stores, level=1) for _ in range(3)]
    for citizen in (*citizens, citizens[0]):
        opened = await api.post("/v1/me/recent", json={"appid": appid}, headers=citizen.auth)
        assert opened.status_code == 204, opened.text
    today = visit_day(datetime.now(UTC))
    # The first citizen's second open came within the open window: three visits, three users (as a
    # HyperLogLog of exactly these three counts them).
    scratch = f"tests:{{{appid}}}:users"
    await stores.redis.pfadd(scratch, *(citizen.account_id.hex for citizen in citizens))
    assert await counts(stores, appid, today) == (3, await stores.redis.pfcount(scratch))
    await stores.redis.delete(scratch)
