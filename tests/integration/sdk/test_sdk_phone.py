"""The phone number: the citizen consents in the app (consent ledger) and gets a one-time phone code; the
mini-app's server trades it for the number (decrypted through the vault, in the PII access log); a
withdrawn consent stops the very next call."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from core.stores import Stores
from miniapps import sdk
from tests.integration.sdk.support import (
    Citizen,
    MiniApp,
    app_token,
    citizen,
    errcode,
    login_code,
    released_miniapp,
)
from tests.integration.test_miniapps_support import ApiClient


async def phone_code(api: ApiClient, person: Citizen, appid: str) -> dict[str, Any]:
    answer = await api.post(f"/v1/miniapps/{appid}/phone-code", headers=person.auth)
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def get_phone(api: ApiClient, token: str, code: Any) -> Any:
    answer = await api.post(
        "/wxa/business/getuserphonenumber",
        params={"access_token": token},
        json={"code": code} if code is not None else {},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


async def access_log(stores: Stores, account_id: UUID) -> list[tuple[str, str, str, bool]]:
    rows = await stores.pool.fetch(
        """SELECT actor, reason, column_name, succeeded FROM pii_access_log
           WHERE table_name = 'accounts' AND row_id = $1 ORDER BY id""",
        str(account_id),
    )
    return [(row["actor"], row["reason"], row["column_name"], row["succeeded"]) for row in rows]


async def test_the_phone_number_after_consent_in_wechats_shape(
    api: ApiClient, stores: Stores, app: MiniApp, token: str
) -> None:
    person = await citizen(stores)
    issued = await phone_code(api, person, app.appid)
    assert set(issued) == {"code", "expires_in", "consent_id"} and issued["expires_in"] == 300
    consents = (await api.get("/v1/me/consents", headers=person.auth)).json()
    [granted] = [c for c in consents if c["id"] == issued["consent_id"]]
    assert granted["recipient"] == f"miniapp:{app.appid}" and granted["scopes"] == ["phone"]
    assert granted["revoked_at"] is None
    before = await access_log(stores, person.account_id)

    body = await get_phone(api, token, issued["code"])
    assert set(body) == {"errcode", "errmsg", "phone_info"}
    assert body["errcode"] == 0 and body["errmsg"] == "ok"
    info = body["phone_info"]
    assert set(info) == {"phoneNumber", "purePhoneNumber", "countryCode", "watermark"}
    assert info["phoneNumber"] == info["purePhoneNumber"] == person.phone
    assert info["countryCode"] == "86"
    assert set(info["watermark"]) == {"timestamp", "appid"} and info["watermark"]["appid"] == app.appid
    assert isinstance(info["watermark"]["timestamp"], int)
    # The decrypt is in the PII access log, naming the mini-app and the API.
    after = await access_log(stores, person.account_id)
    assert after[len(before) :] == [(f"miniapp:{app.appid}", "getuserphonenumber", "phone", True)]
    # Asking again for the same app keeps the one consent.
    again = await phone_code(api, person, app.appid)
    assert again["consent_id"] == issued["consent_id"] and again["code"] != issued["code"]


async def test_phone_codes_are_single_use_and_bound_to_their_app(
    api: ApiClient, stores: Stores, app: MiniApp, token: str
) -> None:
    person = await citizen(stores)
    code = (await phone_code(api, person, app.appid))["code"]
    other = await released_miniapp(api, stores)
    other_token = await app_token(api, other)
    assert (await get_phone(api, other_token, code))["errcode"] == sdk.INVALID_CODE
    assert (await get_phone(api, token, code))["errcode"] == 0
    reused = await get_phone(api, token, code)
    assert reused["errcode"] == sdk.CODE_USED and set(reused) == {"errcode", "errmsg"}
    assert (await get_phone(api, token, "nonsense"))["errcode"] == sdk.INVALID_CODE
    assert (await get_phone(api, token, None))["errcode"] == sdk.CODE_MISSING
    assert (await get_phone(api, token, 12345))["errcode"] == sdk.CODE_MISSING
    # A login code is not a phone code.
    assert (await get_phone(api, token, await login_code(api, person, app.appid)))[
        "errcode"
    ] == sdk.INVALID_CODE
    # The other app never got a consent, so it cannot even ask the citizen's data through another route.
    consents = (await api.get("/v1/me/consents", headers=person.auth)).json()
    assert {c["recipient"] for c in consents} == {f"miniapp:{app.appid}"}


async def test_a_withdrawn_consent_stops_the_very_next_call(
    api: ApiClient, stores: Stores, app: MiniApp, token: str
) -> None:
    person = await citizen(stores)
    first = await phone_code(api, person, app.appid)
    pending = await phone_code(api, person, app.appid)  # the mini-app holds a second code
    assert (await get_phone(api, token, first["code"]))["errcode"] == 0
    withdrawn = await api.delete(f"/v1/me/consents/{first['consent_id']}", headers=person.auth)
    assert withdrawn.status_code == 204, withdrawn.text
    before = await access_log(stores, person.account_id)
    refused = await get_phone(api, token, pending["code"])
    assert refused["errcode"] == sdk.USER_UNAUTHORIZED and set(refused) == {"errcode", "errmsg"}
    assert await access_log(stores, person.account_id) == before  # nothing was decrypted
    # Consenting again in the app is a new consent; the refused code stays used up.
    renewed = await phone_code(api, person, app.appid)
    assert renewed["consent_id"] != first["consent_id"]
    assert (await get_phone(api, token, pending["code"]))["errcode"] == sdk.CODE_USED
    assert (await get_phone(api, token, renewed["code"]))["phone_info"]["phoneNumber"] == person.phone


async def test_phone_codes_only_for_apps_the_citizen_sees(api: ApiClient, stores: Stores) -> None:
    person = await citizen(stores)
    refused = await api.post("/v1/miniapps/tb0000000000000000/phone-code", headers=person.auth)
    assert refused.status_code == 404
    assert (await api.get("/v1/me/consents", headers=person.auth)).json() == []


async def test_the_phone_api_needs_the_apps_token(api: ApiClient, app: MiniApp) -> None:
    answer = await api.post("/wxa/business/getuserphonenumber", json={"code": "x"})
    assert errcode(answer) == sdk.ACCESS_TOKEN_MISSING
