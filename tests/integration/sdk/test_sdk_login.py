"""Mini-app login: the citizen's login code (POST /v1/miniapps/{appid}/login-code), jscode2session,
checksession and resetusersessionkey, against WeChat's shapes and errcodes; openids per app, unionids per
organisation; codes single use and bound to their app; only apps the citizen's catalog view shows."""

from __future__ import annotations

import asyncio
import base64
from uuid import UUID

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from core import clock
from core import redis as redis_mod
from core.pipelined_redis import close_pipelined, pipelined
from core.settings import Settings
from core.stores import Stores
from miniapps import analytics, opendata, sdk
from miniapps.analytics import visit_day
from miniapps.sdk import SdkError
from tests.integration.sdk.support import (
    Citizen,
    MiniApp,
    app_token,
    citizen,
    code2session,
    errcode,
    forget_cached_apps,
    grey_only_miniapp,
    login_code,
    openid_of,
    released_miniapp,
)
from tests.integration.test_miniapps_support import ApiClient, act, approved_version, make_staff, register_app
from tests.support.proxy import proxy_for, through_proxy


@pytest.fixture
async def person(stores: Stores) -> Citizen:
    return await citizen(stores)


async def sibling_app(api: ApiClient, stores: Stores, app: MiniApp) -> MiniApp:
    """A second released app of the same organisation."""
    created = await register_app(api, app.org)
    appid = created["app"]["appid"]
    version_id = await approved_version(api, app.org, await make_staff(stores, "reviewer"), appid)
    assert (await act(api, app.org.admin, appid, version_id, "release")).status_code == 200
    return MiniApp(appid, created["appsecret"], app.org, version_id)


async def test_a_login_code_becomes_openid_session_key_and_unionid(
    api: ApiClient, app: MiniApp, person: Citizen
) -> None:
    issued = await api.post(f"/v1/miniapps/{app.appid}/login-code", headers=person.auth)
    assert issued.status_code == 201, issued.text
    assert set(issued.json()) == {"code", "expires_in"} and issued.json()["expires_in"] == 300
    # A stray access_token parameter (some WeChat libraries send one) is ignored.
    answer = await code2session(api, app, issued.json()["code"], access_token="whatever")
    body = answer.json()
    assert answer.status_code == 200 and set(body) == {"openid", "session_key", "unionid"}, body
    assert all(isinstance(value, str) for value in body.values())
    assert len(body["openid"]) == 28 and body["openid"].startswith("o")
    assert len(body["unionid"]) == 28 and body["unionid"].startswith("u")
    assert len(base64.b64decode(body["session_key"], validate=True)) == 16
    assert person.account_id.hex not in body["openid"] and str(person.account_id) not in body["openid"]


async def test_openids_are_stable_per_app_and_unionids_per_organisation(
    api: ApiClient, stores: Stores, app: MiniApp, person: Citizen
) -> None:
    first, second = await openid_of(api, app, person), await openid_of(api, app, person)
    assert first["openid"] == second["openid"] and first["unionid"] == second["unionid"]
    assert first["session_key"] != second["session_key"]
    other = await citizen(stores)
    assert (await openid_of(api, app, other))["openid"] != first["openid"]
    sibling = await sibling_app(api, stores, app)
    in_sibling = await openid_of(api, sibling, person)
    assert in_sibling["openid"] != first["openid"] and in_sibling["unionid"] == first["unionid"]
    elsewhere = await released_miniapp(api, stores)
    in_other_org = await openid_of(api, elsewhere, person)
    assert in_other_org["openid"] != first["openid"] and in_other_org["unionid"] != first["unionid"]
    # The openid is stored for the reverse lookup, scoped to its app.
    assert await sdk.account_of_openid(stores, app.appid, first["openid"]) == person.account_id
    with pytest.raises(sdk.SdkError) as refused:
        await sdk.account_of_openid(stores, sibling.appid, first["openid"])
    assert refused.value.errcode == sdk.INVALID_OPENID


async def test_codes_are_single_use_expire_and_belong_to_their_app(
    api: ApiClient, stores: Stores, app: MiniApp, person: Citizen
) -> None:
    code = await login_code(api, person, app.appid)
    # A failed call (wrong secret) does not use the code up.
    wrong = await api.get(
        "/sns/jscode2session",
        params={"appid": app.appid, "secret": "0" * 32, "js_code": code, "grant_type": "authorization_code"},
    )
    assert errcode(wrong) == sdk.INVALID_APPSECRET
    # Another app's server cannot use it (and does not use it up either).
    other = await released_miniapp(api, stores)
    assert errcode(await code2session(api, other, code)) == sdk.INVALID_CODE
    assert "openid" in (await code2session(api, app, code)).json()
    reused = await code2session(api, app, code)
    assert errcode(reused) == sdk.CODE_USED and reused.json()["errmsg"].startswith("code been used, rid: ")
    assert set(reused.json()) == {"errcode", "errmsg"}
    assert errcode(await code2session(api, app, "0716AVll20uHk94SLDml27etM946AVlq")) == sdk.INVALID_CODE
    assert errcode(await code2session(api, app, "x" * 500)) == sdk.INVALID_CODE
    # Expired: Redis has dropped it.
    stale = await login_code(api, person, app.appid)
    await stores.redis.delete(sdk._key(app.appid, "code", sdk._hash(stale)))
    assert errcode(await code2session(api, app, stale)) == sdk.INVALID_CODE
    missing = await api.get(
        "/sns/jscode2session",
        params={**app.credentials(), "grant_type": "authorization_code"},
    )
    assert errcode(missing) == sdk.CODE_MISSING
    wrong_grant = await code2session(
        api, app, await login_code(api, person, app.appid), grant_type="password"
    )
    assert errcode(wrong_grant) == sdk.INVALID_GRANT_TYPE


async def test_a_code_is_used_once_across_processes(
    settings: Settings, stores: Stores, app: MiniApp, person: Citizen
) -> None:
    """Two API processes (each its own Redis connections) race for every code: one wins, the other 40163."""
    assert settings.redis_url
    other = Stores(
        settings=settings, pool=stores.pool, redis=redis_mod.create_client(settings, settings.redis_url)
    )
    try:
        assert pipelined(other.redis) is not pipelined(stores.redis)
        codes = await sdk.issue_login_codes_unchecked(
            stores, person.account_id, app.appid, UUID(app.org.id), 40
        )
        found = await sdk.sdk_app(stores, app.appid)
        assert found is not None

        async def trade(process: Stores, code: str) -> int:
            try:
                await sdk.code_to_session(process, found, code)
            except SdkError as exc:
                return exc.errcode
            return 0

        outcomes = await asyncio.gather(
            *(trade(process, code) for code in codes for process in (other, stores))
        )
        pairs = [sorted(outcomes[n : n + 2]) for n in range(0, len(outcomes), 2)]
        assert pairs == [[0, sdk.CODE_USED]] * len(codes)
    finally:
        await close_pipelined(other.redis)
        await other.redis.aclose()


async def test_redis_down_is_a_system_error_then_codes_trade_again(
    api: ApiClient, settings: Settings, app: MiniApp, person: Citizen
) -> None:
    """WeChat's -1 (system busy) in HTTP 200, never a 500; the code is still good once Redis is back."""
    assert settings.redis_url
    proxy = proxy_for(settings.redis_url)
    try:
        cut = msgspec.structs.replace(settings, redis_url=through_proxy(settings.redis_url, proxy))
        async with AsyncTestClient(app=create_app(cut)) as cut_off:
            code = await login_code(api, person, app.appid)
            proxy.down()
            for _ in range(2):
                down = await code2session(cut_off, app, code)
                assert errcode(down) == sdk.SYSTEM_ERROR and set(down.json()) == {"errcode", "errmsg"}
            proxy.up()
            assert "openid" in (await code2session(cut_off, app, code)).json()
            assert errcode(await code2session(cut_off, app, code)) == sdk.CODE_USED
    finally:
        proxy.close()


async def test_codes_live_five_minutes(api: ApiClient, stores: Stores, app: MiniApp, person: Citizen) -> None:
    code = await login_code(api, person, app.appid)
    ttl = await stores.redis.ttl(sdk._key(app.appid, "code", sdk._hash(code)))
    assert 295 <= ttl <= 300


async def test_only_apps_the_citizens_catalog_shows(api: ApiClient, stores: Stores) -> None:
    tester, outsider = await citizen(stores), await citizen(stores)
    grey = await grey_only_miniapp(api, stores, [tester.account_id])
    assert (await api.post(f"/v1/miniapps/{grey.appid}/login-code", headers=tester.auth)).status_code == 201
    refused = await api.post(f"/v1/miniapps/{grey.appid}/login-code", headers=outsider.auth)
    assert refused.status_code == 404 and refused.json()["code"] == "app_not_found"
    unknown = await api.post("/v1/miniapps/tb0000000000000000/login-code", headers=outsider.auth)
    assert unknown.status_code == 404
    anonymous = await api.post(f"/v1/miniapps/{grey.appid}/login-code")
    assert anonymous.status_code == 401
    # The app asks for real-name level L2; an L1 citizen cannot open it.
    released = await released_miniapp(api, stores)
    l1 = await citizen(stores, verified=False)
    low = await api.post(f"/v1/miniapps/{released.appid}/login-code", headers=l1.auth)
    assert low.status_code == 403 and low.json()["code"] == "insufficient_level"


async def test_a_frozen_app_cannot_trade_codes(api: ApiClient, stores: Stores, person: Citizen) -> None:
    app = await released_miniapp(api, stores)
    code = await login_code(api, person, app.appid)
    frozen = await api.post(
        f"/v1/miniapps/{app.appid}/freeze", json={"reason": "整改"}, headers=app.org.admin.auth
    )
    assert frozen.status_code == 200
    forget_cached_apps()
    assert errcode(await code2session(api, app, code)) == sdk.API_FORBIDDEN
    # And citizens no longer get codes for it: it left the catalog.
    assert (await api.post(f"/v1/miniapps/{app.appid}/login-code", headers=person.auth)).status_code == 404


async def test_checksession_and_resetusersessionkey(
    api: ApiClient, stores: Stores, app: MiniApp, person: Citizen
) -> None:
    session = await openid_of(api, app, person)
    token = await app_token(api, app)

    async def call(path: str, key: str, sig_method: str = "hmac_sha256", openid: str | None = None) -> dict:  # type: ignore[type-arg]
        answer = await api.get(
            path,
            params={
                "access_token": token,
                "openid": openid or session["openid"],
                "signature": opendata.session_signature(key),
                "sig_method": sig_method,
            },
        )
        assert answer.status_code == 200
        body: dict = answer.json()  # type: ignore[type-arg]
        return body

    assert await call("/wxa/checksession", session["session_key"]) == {"errcode": 0, "errmsg": "ok"}
    assert (await call("/wxa/checksession", opendata.new_session_key()))["errcode"] == sdk.INVALID_SIGNATURE
    assert (await call("/wxa/checksession", session["session_key"], "md5"))[
        "errcode"
    ] == sdk.INVALID_SIG_METHOD
    sk_key = sdk._key(app.appid, "sk", session["openid"])
    ttl_before = await stores.redis.ttl(sk_key)
    reset = await call("/wxa/resetusersessionkey", session["session_key"])
    assert set(reset) == {"errcode", "errmsg", "openid", "session_key"}
    assert reset["errcode"] == 0 and reset["errmsg"] == "ok" and reset["openid"] == session["openid"]
    assert reset["session_key"] != session["session_key"]
    assert len(base64.b64decode(reset["session_key"], validate=True)) == 16
    assert 0 < await stores.redis.ttl(sk_key) <= ttl_before  # the old key's expiry is kept, not renewed
    assert (await call("/wxa/checksession", session["session_key"]))["errcode"] == sdk.INVALID_SIGNATURE
    assert (await call("/wxa/checksession", reset["session_key"]))["errcode"] == 0
    assert (await call("/wxa/resetusersessionkey", session["session_key"]))[
        "errcode"
    ] == sdk.INVALID_SIGNATURE
    # A new login replaces the session key.
    again = await openid_of(api, app, person)
    assert (await call("/wxa/checksession", reset["session_key"]))["errcode"] == sdk.INVALID_SIGNATURE
    assert (await call("/wxa/checksession", again["session_key"]))["errcode"] == 0
    # Another app cannot check this app's sessions, even with the right key and openid.
    other = await released_miniapp(api, stores)
    other_token = await app_token(api, other)
    crossed = await api.get(
        "/wxa/checksession",
        params={
            "access_token": other_token,
            "openid": again["openid"],
            "signature": opendata.session_signature(again["session_key"]),
            "sig_method": "hmac_sha256",
        },
    )
    assert errcode(crossed) == sdk.INVALID_SIGNATURE


async def test_a_login_code_counts_a_visit(api: ApiClient, stores: Stores, app: MiniApp) -> None:
    person = await citizen(stores)
    key = analytics.users_key(app.appid, visit_day(clock.now()))
    before = await stores.redis.pfcount(key)
    await login_code(api, person, app.appid)
    assert await stores.redis.pfcount(key) == before + 1
