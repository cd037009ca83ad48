"""Tongban's real-name extensions: /tongban/realname discloses one part of the verified identity per consent
scope (and logs the decrypt), /tongban/realname/match answers only true or false and is rate-limited; no
consent, a withdrawn one, or another app's openid gets nothing."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from auth import consent
from core.pii.masking import mask_id_number
from core.stores import Stores
from miniapps import realname, sdk
from tests.integration.sdk.support import (
    Citizen,
    MiniApp,
    app_token,
    citizen,
    openid_of,
    released_miniapp,
)
from tests.integration.test_miniapps_support import ApiClient


async def grant(api: ApiClient, person: Citizen, app: MiniApp, *scopes: str) -> Any:
    answer = await api.post(
        f"/v1/miniapps/{app.appid}/realname-consents", json={"scopes": list(scopes)}, headers=person.auth
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


async def ask(api: ApiClient, token: str, path: str = "/tongban/realname", **body: Any) -> dict[str, Any]:
    answer = await api.post(path, params={"access_token": token}, json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def log_rows(stores: Stores, account_id: UUID) -> list[tuple[str, str, str]]:
    rows = await stores.pool.fetch(
        "SELECT actor, reason, column_name FROM pii_access_log WHERE row_id = $1 ORDER BY id", str(account_id)
    )
    return [(row["actor"], row["reason"], row["column_name"]) for row in rows]


async def test_each_scope_needs_its_own_consent(
    api: ApiClient, stores: Stores, app: MiniApp, token: str
) -> None:
    person = await citizen(stores)
    openid = (await openid_of(api, app, person))["openid"]
    for scope in ("name", "id_masked", "id_full"):
        refused = await ask(api, token, openid=openid, scope=scope)
        assert refused["errcode"] == sdk.USER_UNAUTHORIZED and set(refused) == {"errcode", "errmsg"}
    granted = await grant(api, person, app, "name")
    assert granted["recipient"] == f"miniapp:{app.appid}" and granted["scopes"] == ["real_name.name"]
    before = await log_rows(stores, person.account_id)
    named = await ask(api, token, openid=openid, scope="name")
    assert set(named) == {"errcode", "errmsg", "realname_info"} and named["errcode"] == 0
    assert set(named["realname_info"]) == {"name", "watermark"}
    assert named["realname_info"]["name"] == person.name
    assert named["realname_info"]["watermark"]["appid"] == app.appid
    after = await log_rows(stores, person.account_id)
    assert after[len(before) :] == [(f"miniapp:{app.appid}", "tongban.realname name", "name")]
    assert (await ask(api, token, openid=openid, scope="id_full"))["errcode"] == sdk.USER_UNAUTHORIZED

    await grant(api, person, app, "id_masked")
    masked = await ask(api, token, openid=openid, scope="id_masked")
    assert masked["realname_info"]["id_number_masked"] == mask_id_number(person.id_number)
    assert set(masked["realname_info"]) == {"id_number_masked", "watermark"}
    assert await log_rows(stores, person.account_id) == after  # the masked form needs no decrypt
    assert (await ask(api, token, openid=openid, scope="id_full"))["errcode"] == sdk.USER_UNAUTHORIZED

    full_consent = await grant(api, person, app, "id_full")
    full = await ask(api, token, openid=openid, scope="id_full")
    assert full["realname_info"]["id_number"] == person.id_number
    # Withdrawn: the very next call gets nothing.
    withdrawn = await api.delete(f"/v1/me/consents/{full_consent['id']}", headers=person.auth)
    assert withdrawn.status_code == 204
    assert (await ask(api, token, openid=openid, scope="id_full"))["errcode"] == sdk.USER_UNAUTHORIZED
    assert (await ask(api, token, openid=openid, scope="name"))["errcode"] == 0


async def test_another_apps_openid_and_bad_scopes(
    api: ApiClient, stores: Stores, app: MiniApp, token: str
) -> None:
    person = await citizen(stores)
    await grant(api, person, app, "name", "match")
    other = await released_miniapp(api, stores)
    foreign = (await openid_of(api, other, person))["openid"]
    assert (await ask(api, token, openid=foreign, scope="name"))["errcode"] == sdk.INVALID_OPENID
    # The other app has an openid of the citizen but no consent of theirs.
    other_token = await app_token(api, other)
    assert (await ask(api, other_token, openid=foreign, scope="name"))["errcode"] == sdk.USER_UNAUTHORIZED
    mine = (await openid_of(api, app, person))["openid"]
    assert (await ask(api, token, openid=mine, scope="everything"))["errcode"] == sdk.ARGUMENT_INVALID
    assert (await ask(api, token, scope="name"))["errcode"] == sdk.INVALID_OPENID
    assert (await ask(api, token, openid=mine, scope="name"))["realname_info"]["name"] == person.name


async def test_consents_need_a_verified_citizen_and_a_visible_app(
    api: ApiClient, stores: Stores, app: MiniApp, token: str
) -> None:
    l1 = await citizen(stores, verified=False)
    refused = await api.post(
        f"/v1/miniapps/{app.appid}/realname-consents", json={"scopes": ["name"]}, headers=l1.auth
    )
    assert refused.status_code == 403
    person = await citizen(stores)
    hidden = await api.post(
        "/v1/miniapps/tb0000000000000000/realname-consents", json={"scopes": ["name"]}, headers=person.auth
    )
    assert hidden.status_code == 404
    unknown = await api.post(
        f"/v1/miniapps/{app.appid}/realname-consents", json={"scopes": ["phone"]}, headers=person.auth
    )
    assert unknown.status_code == 400


async def test_a_citizen_without_a_verified_identity(
    api: ApiClient, stores: Stores, token: str, app: MiniApp
) -> None:
    person = await citizen(stores, verified=False)
    openid, _ = await sdk.identities(stores, app.appid, UUID(app.org.id), person.account_id)
    await consent.grant(stores, person.account_id, f"miniapp:{app.appid}", ["real_name.name"], "test")
    assert (await ask(api, token, openid=openid, scope="name"))["errcode"] == sdk.REALNAME_MISSING


async def test_match_answers_only_true_or_false(
    api: ApiClient, stores: Stores, app: MiniApp, token: str
) -> None:
    person = await citizen(stores)
    openid = (await openid_of(api, app, person))["openid"]
    path = "/tongban/realname/match"
    wanted = {"openid": openid, "name": person.name, "id_number": person.id_number}
    assert (await ask(api, token, path, **wanted))["errcode"] == sdk.USER_UNAUTHORIZED
    await grant(api, person, app, "match")
    yes = await ask(api, token, path, **wanted)
    assert yes == {"errcode": 0, "errmsg": "ok", "match": True}
    # Full-width digits and a lower-case x are the same ID number; spaces around the name do not matter.
    loose = person.id_number.translate(str.maketrans("0123456789X", "０１２３４５６７８９x"))
    assert (await ask(api, token, path, **{**wanted, "id_number": loose, "name": f" {person.name} "}))[
        "match"
    ]
    before = await log_rows(stores, person.account_id)
    other_id = person.id_number[:-4] + ("0000" if person.id_number[-4:] != "0000" else "1111")
    no = await ask(api, token, path, **{**wanted, "id_number": other_id})
    assert no == {"errcode": 0, "errmsg": "ok", "match": False}
    assert await log_rows(stores, person.account_id) == before  # a wrong ID number decrypts nothing
    wrong_name = await ask(api, token, path, **{**wanted, "name": person.name + "伟"})
    assert wrong_name["match"] is False
    assert (await log_rows(stores, person.account_id))[len(before) :] == [
        (f"miniapp:{app.appid}", "tongban.realname match", "name")
    ]
    # Five tries an hour per citizen and app, the refused one at the start included.
    assert (await ask(api, token, path, **wanted))["errcode"] == sdk.MINUTE_QUOTA
    assert (await ask(api, token, path, **{**wanted, "name": ""}))["errcode"] == sdk.ARGUMENT_INVALID

    assert realname.MATCH_PER_CITIZEN_HOUR == 5
