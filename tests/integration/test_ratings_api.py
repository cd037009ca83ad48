"""好差评 over the API (the app in process) against the real PostgreSQL and Redis: citizens rate transactions
with the five labels, once per transaction; the bottom two open rectification cases due 15 working days on;
the organisation's members list and answer them (the answer reaches the citizen's inbox, late answers are
marked); overdue cases; per-app statistics for members only."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from uuid import UUID

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from core import clock
from core.db import connection
from core.errors import RateLimited
from core.settings import Settings
from core.stores import Stores
from miniapps import ratings
from miniapps.ratings import WEEKDAYS_ONLY, RateTransaction, case_due_on
from tests.integration.test_miniapps_support import (
    ApiClient,
    Org,
    Person,
    add_member,
    make_org,
    make_person,
    register_app,
)


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@dataclass
class Rated:
    org: Org
    appid: str
    citizen: Person


@pytest.fixture
async def rated(api: ApiClient, stores: Stores) -> Rated:
    org = await make_org(api, stores)
    appid = (await register_app(api, org))["app"]["appid"]
    return Rated(org, appid, await make_person(stores, level=1))


def txn() -> str:
    return "BJ-" + secrets.token_hex(6)


async def rate(
    api: ApiClient, person: Person, appid: str, level: str, comment: str = "", **extra: str
) -> dict:  # type: ignore[type-arg]
    answer = await api.post(
        f"/v1/miniapps/{appid}/ratings",
        json={"transaction_id": extra.get("transaction_id", txn()), "level": level, "comment": comment},
        headers=person.auth,
    )
    assert answer.status_code == 201, answer.text
    body: dict = answer.json()  # type: ignore[type-arg]
    return body


async def test_each_level_is_stored_by_score_and_shown_by_label(
    api: ApiClient, stores: Stores, rated: Rated
) -> None:
    given = {}
    for label in ("非常满意", "满意", "基本满意", "不满意", "非常不满意"):
        body = await rate(
            api, rated.citizen, rated.appid, label, comment="窗口排队太久" if "不" in label else ""
        )
        given[label] = body
        assert body["level"] == label and body["appid"] == rated.appid
    assert [given[label]["score"] for label in given] == [5, 4, 3, 2, 1]
    async with connection(stores.pool, stores.settings) as conn:
        stored = {
            row["transaction_id"]: row["level"]
            for row in await conn.fetch(
                "SELECT transaction_id, level FROM miniapp_ratings WHERE appid = $1", rated.appid
            )
        }
    assert stored == {body["transaction_id"]: body["score"] for body in given.values()}
    # The top three open no case; the bottom two do, due 15 working days on.
    for label in ("非常满意", "满意", "基本满意"):
        assert given[label]["case_id"] is None and given[label]["case_due_on"] is None
    today_due = case_due_on(clock.now(), WEEKDAYS_ONLY).isoformat()
    for label in ("不满意", "非常不满意"):
        assert given[label]["case_id"] is not None and given[label]["case_due_on"] == today_due

    numeric = await api.post(
        f"/v1/miniapps/{rated.appid}/ratings",
        json={"transaction_id": txn(), "level": 5},
        headers=rated.citizen.auth,
    )
    assert numeric.status_code == 400, numeric.text
    assert numeric.json()["code"] == "malformed_request" and numeric.json()["field"] == "level"


async def test_one_rating_per_transaction(api: ApiClient, stores: Stores, rated: Rated) -> None:
    transaction_id = txn()
    await rate(api, rated.citizen, rated.appid, "满意", transaction_id=transaction_id)
    for person in (rated.citizen, await make_person(stores, level=1)):
        again = await api.post(
            f"/v1/miniapps/{rated.appid}/ratings",
            json={"transaction_id": transaction_id, "level": "非常不满意", "comment": "改成差评"},
            headers=person.auth,
        )
        assert again.status_code == 409 and again.json()["code"] == "already_rated"
    async with connection(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            "SELECT level FROM miniapp_ratings WHERE appid = $1 AND transaction_id = $2",
            rated.appid,
            transaction_id,
        )
        cases = await conn.fetchval("SELECT count(*) FROM miniapp_cases WHERE appid = $1", rated.appid)
    assert [row["level"] for row in rows] == [4] and cases == 0
    # The same transaction number at another app is another transaction.
    other = (await register_app(api, rated.org))["app"]["appid"]
    await rate(api, rated.citizen, other, "满意", transaction_id=transaction_id)


async def test_bad_ratings_need_a_comment_and_unknown_apps_are_404(
    api: ApiClient, stores: Stores, rated: Rated
) -> None:
    for label in ("不满意", "非常不满意"):
        answer = await api.post(
            f"/v1/miniapps/{rated.appid}/ratings",
            json={"transaction_id": txn(), "level": label, "comment": "   "},
            headers=rated.citizen.auth,
        )
        assert answer.status_code == 422 and answer.json()["code"] == "comment_required"
        assert answer.json()["field"] == "comment"
    unknown = await api.post(
        "/v1/miniapps/tb0000000000000000/ratings",
        json={"transaction_id": txn(), "level": "满意"},
        headers=rated.citizen.auth,
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "app_not_found"
    anonymous = await api.post(
        f"/v1/miniapps/{rated.appid}/ratings", json={"transaction_id": txn(), "level": "满意"}
    )
    assert anonymous.status_code == 401
    async with connection(stores.pool, stores.settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM miniapp_ratings WHERE appid = $1", rated.appid) == 0


async def test_ratings_per_hour_are_limited(stores: Stores, rated: Rated) -> None:
    limited = Stores(
        settings=msgspec.structs.replace(stores.settings, miniapp_ratings_per_hour=2),
        pool=stores.pool,
        redis=stores.redis,
    )
    for _ in range(2):
        await ratings.rate(limited, rated.citizen.account_id, rated.appid, RateTransaction(txn(), "满意"))
    with pytest.raises(RateLimited):
        await ratings.rate(limited, rated.citizen.account_id, rated.appid, RateTransaction(txn(), "满意"))


async def test_members_list_and_answer_cases(api: ApiClient, stores: Stores, rated: Rated) -> None:
    bad = await rate(api, rated.citizen, rated.appid, "非常不满意", comment="材料被退回三次")
    await rate(api, rated.citizen, rated.appid, "满意")
    case_id = bad["case_id"]
    operator = await make_person(stores)
    await add_member(api, rated.org, operator, "operator")

    listed = await api.get(
        f"/v1/miniapps/{rated.appid}/cases", params={"status": "open"}, headers=operator.auth
    )
    assert listed.status_code == 200, listed.text
    [case] = listed.json()
    assert case["id"] == case_id and case["status"] == "open" and case["overdue"] is False
    assert case["level"] == "非常不满意" and case["comment"] == "材料被退回三次"
    assert case["transaction_id"] == bad["transaction_id"] and case["due_on"] == bad["case_due_on"]
    # The organisation never learns who rated.
    assert str(rated.citizen.account_id) not in listed.text and "account" not in case

    outsider = await make_person(stores)
    refused = await api.post(
        f"/v1/miniapps/cases/{case_id}/answer", json={"answer": "x"}, headers=outsider.auth
    )
    assert refused.status_code == 404 and refused.json()["code"] == "case_not_found"
    assert (await api.get(f"/v1/miniapps/{rated.appid}/cases", headers=outsider.auth)).status_code == 404
    blank = await api.post(
        f"/v1/miniapps/cases/{case_id}/answer", json={"answer": "  "}, headers=operator.auth
    )
    assert blank.status_code == 422

    answered = await api.post(
        f"/v1/miniapps/cases/{case_id}/answer",
        json={"answer": "已约谈窗口负责人，材料一次性告知"},
        headers=operator.auth,
    )
    assert answered.status_code == 200, answered.text
    view = answered.json()
    assert view["status"] == "answered" and view["answered_late"] is False and view["overdue"] is False
    assert view["answer"] == "已约谈窗口负责人，材料一次性告知"
    again = await api.post(
        f"/v1/miniapps/cases/{case_id}/answer", json={"answer": "再答"}, headers=rated.org.admin.auth
    )
    assert again.status_code == 409 and again.json()["code"] == "case_answered"
    assert (
        await api.get(f"/v1/miniapps/{rated.appid}/cases", params={"status": "open"}, headers=operator.auth)
    ).json() == []

    messages = (await api.get("/v1/me/messages", headers=rated.citizen.auth)).json()["messages"]
    assert messages[0]["source"] == "miniapps.ratings"
    assert "已约谈窗口负责人" in messages[0]["body"] and bad["transaction_id"] in messages[0]["body"]
    async with connection(stores.pool, stores.settings) as conn:
        audit = await conn.fetchrow(
            "SELECT action, actor_account FROM miniapp_audit WHERE appid = $1 AND action = 'case_answered'",
            rated.appid,
        )
    assert audit["actor_account"] == operator.account_id


async def test_overdue_cases_and_late_answers(api: ApiClient, stores: Stores, rated: Rated) -> None:
    long_ago = clock.now() - timedelta(days=40)
    old = await ratings.rate(
        stores,
        rated.citizen.account_id,
        rated.appid,
        RateTransaction(txn(), "不满意", "没人接电话"),
        now=long_ago,
    )
    fresh = await rate(api, rated.citizen, rated.appid, "不满意", comment="系统报错")
    assert old.case_id is not None and old.case_due_on == case_due_on(long_ago, WEEKDAYS_ONLY)

    overdue = {case.id: case for case in await ratings.open_cases(stores, overdue_only=True)}
    assert old.case_id in overdue and UUID(fresh["case_id"]) not in overdue
    assert overdue[old.case_id].overdue and overdue[old.case_id].organisation_name
    every_open = {case.id for case in await ratings.open_cases(stores)}
    assert {old.case_id, UUID(fresh["case_id"])} <= every_open
    # Not overdue through the last minute of its due day (Asia/Shanghai); overdue from the next midnight.
    assert old.case_due_on is not None
    due_midnight = datetime.combine(old.case_due_on + timedelta(days=1), time(), tzinfo=clock.SHANGHAI)
    last_minute = {
        case.id
        for case in await ratings.open_cases(
            stores, overdue_only=True, now=due_midnight - timedelta(minutes=1)
        )
    }
    assert old.case_id not in last_minute
    next_day = {case.id for case in await ratings.open_cases(stores, overdue_only=True, now=due_midnight)}
    assert old.case_id in next_day

    answered = await api.post(
        f"/v1/miniapps/cases/{old.case_id}/answer", json={"answer": "已整改"}, headers=rated.org.admin.auth
    )
    assert answered.status_code == 200 and answered.json()["answered_late"] is True
    assert old.case_id not in {case.id for case in await ratings.open_cases(stores, overdue_only=True)}
    stats = await ratings.app_stats(stores, rated.appid)
    assert (stats.cases.open, stats.cases.overdue, stats.cases.answered, stats.cases.answered_late) == (
        1,
        0,
        1,
        1,
    )


async def test_stats_for_members(api: ApiClient, stores: Stores, rated: Rated) -> None:
    for label, times in (("非常满意", 3), ("满意", 2), ("基本满意", 1), ("不满意", 1), ("非常不满意", 1)):
        for _ in range(times):
            await rate(api, rated.citizen, rated.appid, label, comment="差" if "不" in label else "")
    await ratings.rate(
        stores,
        rated.citizen.account_id,
        rated.appid,
        RateTransaction(txn(), "非常不满意", "很久以前"),
        now=clock.now() - timedelta(days=40),
    )
    stats = await api.get(f"/v1/miniapps/{rated.appid}/ratings/stats", headers=rated.org.admin.auth)
    assert stats.status_code == 200, stats.text
    body = stats.json()
    assert body["total"] == 9
    assert [(level["level"], level["score"], level["count"]) for level in body["levels"]] == [
        ("非常满意", 5, 3),
        ("满意", 4, 2),
        ("基本满意", 3, 1),
        ("不满意", 2, 1),
        ("非常不满意", 1, 2),
    ]
    assert body["satisfaction_rate"] == round(6 / 9, 4)
    assert body["cases"] == {"open": 3, "overdue": 1, "answered": 0, "answered_late": 0}

    outsider = await make_person(stores)
    assert (
        await api.get(f"/v1/miniapps/{rated.appid}/ratings/stats", headers=outsider.auth)
    ).status_code == 404
    # Members' routes need a real-name verified (L2) token, like the rest of the organisation's routes.
    low = await api.get(f"/v1/miniapps/{rated.appid}/ratings/stats", headers=rated.citizen.auth)
    assert low.status_code == 403
    empty_app = (await register_app(api, rated.org))["app"]["appid"]
    empty = (await api.get(f"/v1/miniapps/{empty_app}/ratings/stats", headers=rated.org.admin.auth)).json()
    assert empty["total"] == 0 and empty["satisfaction_rate"] is None


async def test_forgetting_an_account_keeps_its_ratings_in_the_statistics(
    api: ApiClient, stores: Stores, rated: Rated
) -> None:
    await rate(api, rated.citizen, rated.appid, "满意")
    assert await ratings.forget_account(stores, rated.citizen.account_id) == 1
    async with connection(stores.pool, stores.settings) as conn:
        row = await conn.fetchrow(
            "SELECT account_id, level FROM miniapp_ratings WHERE appid = $1", rated.appid
        )
    assert row["account_id"] is None and row["level"] == 4
    assert (await ratings.app_stats(stores, rated.appid)).total == 1
