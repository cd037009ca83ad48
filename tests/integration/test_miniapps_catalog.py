"""The catalog over the API (the app in process) with the real PostgreSQL and Redis: each caller's grey-release
view, filters and keyword search, changes showing at once here and through pub/sub (or the generation poll)
in other processes, answers from memory while PostgreSQL is down, recently used apps and favourites.

Every test names its apps with its own random token and searches for it, so apps of other tests sharing the
database never get in the way."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from core.db import transaction
from core.settings import Settings
from core.stores import Stores
from miniapps import catalog
from miniapps.catalog import CatalogCache, grey_bucket
from tests.integration.test_miniapps_support import (
    ApiClient,
    Org,
    Person,
    act,
    approved_version,
    make_org,
    make_person,
    make_staff,
    register_app,
    released_app,
    upload,
)
from tests.support.proxy import proxy_for, through_proxy


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@dataclass
class Publisher:
    org: Org
    reviewer: Person


@pytest.fixture(scope="module")
async def publisher(api: ApiClient, stores: Stores) -> Publisher:
    return Publisher(await make_org(api, stores), await make_staff(stores, "reviewer"))


def token() -> str:
    return "tk" + secrets.token_hex(4)


async def listed(api: ApiClient, person: Person | None = None, **params: Any) -> dict[str, Any]:
    answer = await api.get("/v1/catalog", params=params, headers=person.auth if person else None)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    return body


def shown(page: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(item["name"], item["version"], item["grey"]) for item in page["items"]]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


async def people_around_bucket(stores: Stores, appid: str, percent: int) -> tuple[Person, Person]:
    """(one citizen inside the percentage for this app, one outside)."""
    inside = outside = None
    while inside is None or outside is None:
        person = await make_person(stores, level=1)
        if grey_bucket(appid, person.account_id) < percent:
            inside = inside or person
        else:
            outside = outside or person
    return inside, outside


async def test_each_caller_sees_their_grey_view(api: ApiClient, stores: Stores, publisher: Publisher) -> None:
    org, tag = publisher.org, token()
    # A: 1.0.0 released to everyone, 1.1.0 in grey to half the buckets and to the 锡林郭勒盟 region.
    appid_a, _ = await released_app(api, org, publisher.reviewer, name=f"{tag} 甲", region_code="150000")
    grey_a = await approved_version(api, org, publisher.reviewer, appid_a, "1.1.0")
    answer = await act(api, org.admin, appid_a, grey_a, "grey", {"percent": 50, "regions": ["152500"]})
    assert answer.status_code == 200, answer.text
    # B: a first release in grey, to one named account only.
    whitelisted = await make_person(stores, level=1)
    appid_b = (await register_app(api, org, name=f"{tag} 乙", region_code="150000"))["app"]["appid"]
    grey_b = await approved_version(api, org, publisher.reviewer, appid_b, "0.1.0")
    answer = await act(
        api, org.admin, appid_b, grey_b, "grey", {"percent": 0, "accounts": [str(whitelisted.account_id)]}
    )
    assert answer.status_code == 200, answer.text
    inside, outside = await people_around_bucket(stores, appid_a, 50)
    a_for_whitelisted = (
        ("1.1.0", True) if grey_bucket(appid_a, whitelisted.account_id) < 50 else ("1.0.0", False)
    )

    anonymous = await listed(api, q=tag)
    assert shown(anonymous) == [(f"{tag} 甲", "1.0.0", False)] and anonymous["total"] == 1
    assert shown(await listed(api, outside, q=tag)) == [(f"{tag} 甲", "1.0.0", False)]
    assert shown(await listed(api, inside, q=tag)) == [(f"{tag} 甲", "1.1.0", True)]
    # Names sort by code point: 乙 (U+4E59) before 甲 (U+7532).
    mine = await listed(api, whitelisted, q=tag)
    assert shown(mine) == [(f"{tag} 乙", "0.1.0", True), (f"{tag} 甲", *a_for_whitelisted)]
    assert mine["total"] == 2
    # Browsing from a grey region (a county of 锡林郭勒盟) admits the citizen.
    assert shown(await listed(api, outside, q=tag, region="152502")) == [(f"{tag} 甲", "1.1.0", True)]
    assert shown(await listed(api, q=tag, region="152502")) == [(f"{tag} 甲", "1.0.0", False)]

    one = await api.get(f"/v1/catalog/{appid_b}", headers=whitelisted.auth)
    assert one.status_code == 200 and one.json()["version"] == "0.1.0" and one.json()["grey"] is True
    assert one.json()["min_level"] == 2 and one.json()["organisation"]["id"] == org.id
    hidden = await api.get(f"/v1/catalog/{appid_b}")
    assert hidden.status_code == 404 and hidden.json()["code"] == "app_not_found"
    bad_token = await api.get("/v1/catalog", headers={"Authorization": "Bearer nonsense"})
    assert bad_token.status_code == 401 and bad_token.json()["code"] == "invalid_token"

    # Widening the grey release reaches the citizen who was outside.
    widened = await act(api, org.admin, appid_a, grey_a, "grey", {"percent": 100, "regions": ["152500"]})
    assert widened.status_code == 200
    assert shown(await listed(api, outside, q=tag)) == [(f"{tag} 甲", "1.1.0", True)]
    # Released to everyone: the grey flag goes, anonymous callers get 1.1.0.
    assert (await act(api, org.admin, appid_a, grey_a, "release")).status_code == 200
    assert shown(await listed(api, q=tag)) == [(f"{tag} 甲", "1.1.0", False)]


async def test_filters_search_and_pages(api: ApiClient, publisher: Publisher) -> None:
    org, reviewer, tag = publisher.org, publisher.reviewer, token()
    await released_app(api, org, reviewer, name=f"A{tag} 城区医保", category="health", region_code="150102",
                       description=f"{tag}缴费 在线办理")  # fmt: skip
    await released_app(api, org, reviewer, name=f"B{tag} 缴费", category="utilities", region_code="150200")
    await released_app(
        api, org, reviewer, name=f"C{tag} 全区社保", category="social_security", region_code="150000"
    )
    names = lambda page: [item["name"] for item in page["items"]]  # noqa: E731

    everything = await listed(api, q=tag)
    assert names(everything) == [f"A{tag} 城区医保", f"B{tag} 缴费", f"C{tag} 全区社保"]
    # A county shows its own apps and the province-wide ones; a province shows all of its own.
    assert names(await listed(api, q=tag, region="150102")) == [f"A{tag} 城区医保", f"C{tag} 全区社保"]
    assert names(await listed(api, q=tag, region="150100")) == [f"A{tag} 城区医保", f"C{tag} 全区社保"]
    assert len(names(await listed(api, q=tag, region="150000"))) == 3
    assert names(await listed(api, q=tag, region="210000")) == []
    assert names(await listed(api, q=tag, category="health")) == [f"A{tag} 城区医保"]
    # Keywords: whitespace and width do not matter; apps named by the keyword come first.
    assert names(await listed(api, q=f"{tag.upper()} 缴费")) == [f"B{tag} 缴费", f"A{tag} 城区医保"]
    assert names(await listed(api, q=f"{tag}全区")) == [f"C{tag} 全区社保"]
    assert names(await listed(api, q=f"{tag}不存在")) == []
    page = await listed(api, q=tag, offset=1, limit=1)
    assert (
        names(page) == [f"B{tag} 缴费"] and page["total"] == 3 and page["offset"] == 1 and page["limit"] == 1
    )

    for params, field in (({"region": "15"}, "region"), ({"limit": 0}, "limit"), ({"q": "长" * 40}, "q"),
                          ({"offset": -1}, "offset")):  # fmt: skip
        refused = await api.get("/v1/catalog", params=params)
        assert refused.status_code == 422 and refused.json()["field"] == field


async def test_catalog_follows_every_change_at_once(api: ApiClient, publisher: Publisher) -> None:
    org, tag = publisher.org, token()
    appid, version_id = await released_app(api, org, publisher.reviewer, name=f"{tag} 应用")

    async def visible() -> bool:
        return bool((await listed(api, q=tag))["items"])

    assert await visible()
    assert (await act(api, org.admin, appid, version_id, "offline")).status_code == 200
    assert not await visible()
    assert (await act(api, org.admin, appid, version_id, "release")).status_code == 200
    assert await visible()
    freeze = await api.post(f"/v1/miniapps/{appid}/freeze", json={"reason": "排查"}, headers=org.admin.auth)
    assert freeze.status_code == 200
    assert not await visible()
    assert (await api.post(f"/v1/miniapps/{appid}/unfreeze", headers=org.admin.auth)).status_code == 200
    assert await visible()
    renamed = await api.patch(f"/v1/miniapps/{appid}", json={"name": f"{tag} 新名字"}, headers=org.admin.auth)
    assert renamed.status_code == 200
    assert [item["name"] for item in (await listed(api, q=tag))["items"]] == [f"{tag} 新名字"]
    delisted = await api.post(f"/v1/staff/versions/{version_id}/delist", headers=org.staff.auth)
    assert delisted.status_code == 200
    assert not await visible()


async def test_other_processes_reload_on_the_published_message(
    api: ApiClient, stores: Stores, settings: Settings, publisher: Publisher
) -> None:
    # Another process's cache: its generation poll is an hour, so only the Redis message can wake it.
    other_stores = Stores(
        settings=msgspec.structs.replace(settings, miniapp_catalog_poll_seconds=3600),
        pool=stores.pool,
        redis=stores.redis,
    )
    other = CatalogCache()
    runner = asyncio.create_task(other.run(other_stores))
    try:
        await eventually(lambda: asyncio.sleep(0, other.loaded))
        await asyncio.sleep(0.3)  # subscribed
        tag = token()
        appid, _ = await released_app(api, publisher.org, publisher.reviewer, name=f"{tag} 推送")

        async def arrived() -> bool:
            snapshot = await other.current(other_stores)
            return snapshot.item(appid, viewer=None) is not None

        await eventually(arrived, timeout=3.0)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_the_generation_poll_covers_a_missed_message(
    api: ApiClient, stores: Stores, settings: Settings, publisher: Publisher
) -> None:
    tag = token()
    appid, _ = await released_app(api, publisher.org, publisher.reviewer, name=f"{tag} 轮询")
    other_stores = Stores(
        settings=msgspec.structs.replace(settings, miniapp_catalog_poll_seconds=0.2),
        pool=stores.pool,
        redis=stores.redis,
    )
    other = CatalogCache()
    runner = asyncio.create_task(other.run(other_stores))
    try:
        await eventually(lambda: asyncio.sleep(0, other.loaded))
        # A change whose message was lost: committed with its generation, never published.
        async with transaction(stores.pool, stores.settings) as conn:
            await conn.execute("UPDATE miniapps SET name = $2 WHERE appid = $1", appid, f"{tag} 已改名")
            await conn.execute("UPDATE miniapp_catalog_state SET generation = generation + 1")

        async def renamed() -> bool:
            item = (await other.current(other_stores)).item(appid, viewer=None)
            return item is not None and msgspec.json.decode(item)["name"] == f"{tag} 已改名"

        await eventually(renamed, timeout=3.0)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_the_catalog_answers_from_memory_while_postgresql_is_down(
    api: ApiClient, stores: Stores, settings: Settings, publisher: Publisher
) -> None:
    tag = token()
    await released_app(api, publisher.org, publisher.reviewer, name=f"{tag} 断库")
    citizen = await make_person(stores, level=1)
    proxy = proxy_for(settings.database_url or "")
    try:
        proxied = msgspec.structs.replace(
            settings, database_url=through_proxy(settings.database_url or "", proxy), db_acquire_timeout=0.5
        )
        async with AsyncTestClient(app=create_app(proxied)) as cut_off:
            warm = await cut_off.get("/v1/catalog", params={"q": tag}, headers=citizen.auth)
            assert warm.status_code == 200 and len(warm.json()["items"]) == 1
            proxy.down()
            for headers in (None, citizen.auth):
                answer = await cut_off.get("/v1/catalog", params={"q": tag}, headers=headers)
                assert answer.status_code == 200, answer.text
                assert [item["name"] for item in answer.json()["items"]] == [f"{tag} 断库"]
            # What needs PostgreSQL says so.
            recent = await cut_off.get("/v1/me/recent", headers=citizen.auth)
            assert recent.status_code == 503
            proxy.up()
    finally:
        proxy.close()


async def test_recently_used_and_favourites(api: ApiClient, stores: Stores, publisher: Publisher) -> None:
    org, tag = publisher.org, token()
    apps = [
        (await released_app(api, org, publisher.reviewer, name=f"{tag} {n}"))[0] for n in ("一", "二", "三")
    ]
    citizen = await make_person(stores, level=1)

    async def recent() -> list[str]:
        answer = await api.get("/v1/me/recent", headers=citizen.auth)
        assert answer.status_code == 200
        return [item["appid"] for item in answer.json()]

    for appid in (apps[0], apps[1], apps[2], apps[0]):
        opened = await api.post("/v1/me/recent", json={"appid": appid}, headers=citizen.auth)
        assert opened.status_code == 204, opened.text
    assert await recent() == [apps[0], apps[2], apps[1]]
    unknown = await api.post("/v1/me/recent", json={"appid": "tb0000000000000000"}, headers=citizen.auth)
    assert unknown.status_code == 404 and unknown.json()["code"] == "app_not_found"
    assert (await api.get("/v1/me/recent")).status_code == 401

    async def favourites() -> list[str]:
        answer = await api.get("/v1/me/favourites", headers=citizen.auth)
        assert answer.status_code == 200
        return [item["appid"] for item in answer.json()]

    for appid in (apps[1], apps[1], apps[2]):
        assert (await api.put(f"/v1/me/favourites/{appid}", headers=citizen.auth)).status_code == 204
    assert await favourites() == [apps[2], apps[1]]
    for _ in range(2):
        assert (await api.delete(f"/v1/me/favourites/{apps[2]}", headers=citizen.auth)).status_code == 204
    assert await favourites() == [apps[1]]
    assert (await api.put("/v1/me/favourites/tb0000000000000000", headers=citizen.auth)).status_code == 404
    assert (await api.put(f"/v1/me/favourites/{apps[0]}")).status_code == 401

    # An app taken offline drops out of both lists (the rows stay, it is just not shown).
    version_id = (await api.get(f"/v1/miniapps/{apps[1]}/versions", headers=org.admin.auth)).json()[0]["id"]
    assert (await act(api, org.admin, apps[1], version_id, "offline")).status_code == 200
    assert await favourites() == [] and apps[1] not in await recent()

    # Erasure of the account forgets both (PIPL art. 47).
    assert await catalog.forget_account(stores, citizen.account_id) == (3, 1)
    assert await recent() == []


async def test_a_grey_only_app_is_for_the_admitted_only(
    api: ApiClient, stores: Stores, publisher: Publisher
) -> None:
    org, tag = publisher.org, token()
    admitted, other = await make_person(stores, level=1), await make_person(stores, level=1)
    appid = (await register_app(api, org, name=f"{tag} 内测"))["app"]["appid"]
    version_id = await approved_version(api, org, publisher.reviewer, appid)
    answer = await act(
        api, org.admin, appid, version_id, "grey", {"percent": 0, "accounts": [str(admitted.account_id)]}
    )
    assert answer.status_code == 200
    assert (await api.put(f"/v1/me/favourites/{appid}", headers=admitted.auth)).status_code == 204
    refused = await api.put(f"/v1/me/favourites/{appid}", headers=other.auth)
    assert refused.status_code == 404


async def test_uploads_alone_publish_nothing(api: ApiClient, stores: Stores, publisher: Publisher) -> None:
    tag = token()
    appid = (await register_app(api, publisher.org, name=f"{tag} 草稿"))["app"]["appid"]
    assert (await upload(api, publisher.org.admin, appid)).status_code == 201
    assert (await listed(api, q=tag))["items"] == []
    async with transaction(stores.pool, stores.settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM miniapp_versions WHERE appid = $1", appid) == 1
    assert UUID(publisher.org.id)
