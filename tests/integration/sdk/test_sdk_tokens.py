"""App access tokens (GET /cgi-bin/token, POST /cgi-bin/stable_token) against WeChat's documented shapes and
errcodes: the same token while valid, renewal in the last 5 minutes with both tokens valid, force_refresh
and its daily limit, bad credentials, the IP allowlist, frozen apps and AppSecret resets."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.stores import Stores
from miniapps import sdk
from miniapps.sdk import SdkError
from tests.integration.sdk.support import (
    MiniApp,
    app_token,
    errcode,
    forget_cached_apps,
    released_miniapp,
)
from tests.integration.test_miniapps_support import ApiClient


@pytest.fixture
async def app(api: ApiClient, stores: Stores) -> MiniApp:
    return await released_miniapp(api, stores)


PAST_THE_TOKEN = sdk.INVALID_SIGNATURE


def wx_error_shape(body: dict[str, object], code: int) -> None:
    """WeChat's error body: exactly errcode (number) and errmsg (string, with the request id)."""
    assert set(body) == {"errcode", "errmsg"}, body
    assert body["errcode"] == code, body
    assert isinstance(body["errmsg"], str) and ", rid: " in body["errmsg"]


async def token_get(api: ApiClient, **params: str) -> dict[str, object]:
    answer = await api.get("/cgi-bin/token", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


async def stable(api: ApiClient, **body: object) -> dict[str, object]:
    answer = await api.post("/cgi-bin/stable_token", json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


async def token_works(api: ApiClient, token: str) -> int:
    """The errcode of an access-token call; past the token check it is 87009 (no session to check)."""
    answer = await api.get(
        "/wxa/checksession",
        params={"access_token": token, "openid": "o-nobody", "signature": "00", "sig_method": "hmac_sha256"},
    )
    return errcode(answer)


async def test_both_endpoints_answer_the_same_token_in_wechats_shape(api: ApiClient, app: MiniApp) -> None:
    first = await token_get(api, grant_type="client_credential", **app.credentials())
    assert set(first) == {"access_token", "expires_in"}
    assert isinstance(first["access_token"], str) and isinstance(first["expires_in"], int)
    assert 7190 <= first["expires_in"] <= 7200
    again = await token_get(api, grant_type="client_credential", **app.credentials())
    from_stable = await stable(api, grant_type="client_credential", force_refresh=False, **app.credentials())
    assert set(from_stable) == {"access_token", "expires_in"}
    assert again["access_token"] == from_stable["access_token"] == first["access_token"]
    assert len(str(first["access_token"])) <= 512  # WeChat: keep 512 characters for a token
    assert await token_works(api, str(first["access_token"])) == PAST_THE_TOKEN


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"grant_type": "password"}, sdk.INVALID_GRANT_TYPE),
        ({"grant_type": "client_credential", "secret": "x"}, sdk.APPID_MISSING),
        ({"grant_type": "client_credential", "appid": "tb0000000000000000"}, sdk.APPSECRET_MISSING),
        (
            {"grant_type": "client_credential", "appid": "tb0000000000000000", "secret": "x"},
            sdk.INVALID_APPID,
        ),
        (
            {"grant_type": "client_credential", "appid": "wx4f4bc4dec97d474b", "secret": "x"},
            sdk.INVALID_APPID,
        ),
    ],
)
async def test_bad_requests_get_wechats_errcodes(
    api: ApiClient, app: MiniApp, params: dict[str, str], code: int
) -> None:
    wx_error_shape(await token_get(api, **params), code)
    wx_error_shape(await stable(api, **params), code)


async def test_a_wrong_secret_is_40125_on_both_endpoints(api: ApiClient, app: MiniApp) -> None:
    wrong = {"grant_type": "client_credential", "appid": app.appid, "secret": "0" * 32}
    wx_error_shape(await token_get(api, **wrong), sdk.INVALID_APPSECRET)
    wx_error_shape(await stable(api, **wrong), sdk.INVALID_APPSECRET)


async def test_malformed_bodies_are_47001(api: ApiClient, app: MiniApp) -> None:
    answer = await api.post(
        "/cgi-bin/stable_token", content=b"{not json", headers={"content-type": "application/json"}
    )
    wx_error_shape(answer.json(), sdk.DATA_FORMAT)
    body = await stable(api, grant_type="client_credential", force_refresh="yes", **app.credentials())
    wx_error_shape(body, sdk.DATA_FORMAT)


async def test_the_ip_allowlist_guards_secret_and_token_calls(
    api: ApiClient, app: MiniApp, stores: Stores
) -> None:
    token = str((await token_get(api, grant_type="client_credential", **app.credentials()))["access_token"])
    allowed = await api.put(
        f"/v1/miniapps/{app.appid}/ip-allowlist",
        json={"cidrs": ["203.0.113.0/24"]},
        headers=app.org.admin.auth,
    )
    assert allowed.status_code == 200, allowed.text
    forget_cached_apps()
    # The in-process client calls from "testclient", outside any list: refused in WeChat's shape. Even
    # the right secret is refused, and a wrong one cannot be told from it.
    body = await token_get(api, grant_type="client_credential", **app.credentials())
    wx_error_shape(body, sdk.INVALID_IP)
    assert "testclient" in str(body["errmsg"])
    wrong = {"grant_type": "client_credential", "appid": app.appid, "secret": "0" * 32}
    wx_error_shape(await stable(api, **wrong), sdk.INVALID_IP)
    # A token used from outside: WeChat's 61004.
    assert await token_works(api, token) == sdk.CLIENT_IP_NOT_REGISTERED
    # From inside the list all is well (over HTTP from an allowlisted address: tests/e2e).
    inside, outside = "203.0.113.7", "198.51.100.9"
    assert (await sdk.authenticate_app(stores, app.appid, app.secret, inside)).appid == app.appid
    assert (await sdk.app_for_token(stores, token, inside)).appid == app.appid
    for check, code in (
        (sdk.authenticate_app(stores, app.appid, app.secret, outside), sdk.INVALID_IP),
        (sdk.authenticate_app(stores, app.appid, "0" * 32, outside), sdk.INVALID_IP),
        (sdk.app_for_token(stores, token, outside), sdk.CLIENT_IP_NOT_REGISTERED),
    ):
        with pytest.raises(SdkError) as refused:
            await check
        assert refused.value.errcode == code


async def test_a_frozen_app_gets_no_token_and_its_tokens_stop(api: ApiClient, app: MiniApp) -> None:
    token = str((await token_get(api, grant_type="client_credential", **app.credentials()))["access_token"])
    frozen = await api.post(
        f"/v1/miniapps/{app.appid}/freeze", json={"reason": "安全整改"}, headers=app.org.admin.auth
    )
    assert frozen.status_code == 200, frozen.text
    forget_cached_apps()
    wx_error_shape(
        await token_get(api, grant_type="client_credential", **app.credentials()), sdk.API_FORBIDDEN
    )
    assert await token_works(api, token) == sdk.API_FORBIDDEN
    # A wrong secret learns nothing about the freeze.
    wrong = {"grant_type": "client_credential", "appid": app.appid, "secret": "0" * 32}
    wx_error_shape(await token_get(api, **wrong), sdk.INVALID_APPSECRET)
    unfrozen = await api.post(f"/v1/miniapps/{app.appid}/unfreeze", headers=app.org.admin.auth)
    assert unfrozen.status_code == 200, unfrozen.text
    forget_cached_apps()
    assert await token_works(api, token) == PAST_THE_TOKEN


async def test_a_secret_reset_ends_the_old_secret_and_its_tokens(api: ApiClient, app: MiniApp) -> None:
    old_token = await app_token(api, app)
    reset = await api.post(f"/v1/miniapps/{app.appid}/secret", headers=app.org.admin.auth)
    assert reset.status_code in (200, 201), reset.text
    new_secret = reset.json()["appsecret"]
    forget_cached_apps()
    wx_error_shape(
        await token_get(api, grant_type="client_credential", **app.credentials()), sdk.INVALID_APPSECRET
    )
    assert await token_works(api, old_token) == sdk.INVALID_CREDENTIAL
    fresh = await token_get(api, grant_type="client_credential", appid=app.appid, secret=new_secret)
    assert fresh["access_token"] != old_token
    assert await token_works(api, str(fresh["access_token"])) == PAST_THE_TOKEN


async def test_renewal_in_the_last_five_minutes_keeps_both_tokens_valid(
    api: ApiClient, app: MiniApp, stores: Stores
) -> None:
    forget_cached_apps()
    sdk_app = await sdk.sdk_app(stores, app.appid)
    assert sdk_app is not None
    now = int(time.time() * 1000)
    first = await sdk.access_token(stores, sdk_app, now_ms=now)
    # With more than 5 minutes left the same token comes back, with what is left of its life.
    later = await sdk.access_token(stores, sdk_app, now_ms=now + (7200 - 301) * 1000)
    assert later.access_token == first.access_token and later.expires_in == 301
    # Inside the last 5 minutes the next caller gets a new token for a full lifetime ...
    renewed = await sdk.access_token(stores, sdk_app, now_ms=now + (7200 - 299) * 1000)
    assert renewed.access_token != first.access_token and renewed.expires_in == 7200
    # ... and then everyone does; the old one still works until it expires.
    assert (
        await sdk.access_token(stores, sdk_app, now_ms=now + 7000 * 1000)
    ).access_token == renewed.access_token
    assert await token_works(api, first.access_token) == PAST_THE_TOKEN
    assert await token_works(api, renewed.access_token) == PAST_THE_TOKEN


async def test_racing_callers_get_one_token(api: ApiClient, app: MiniApp, stores: Stores) -> None:
    forget_cached_apps()
    sdk_app = await sdk.sdk_app(stores, app.appid)
    assert sdk_app is not None
    now = int(time.time() * 1000)
    first = await asyncio.gather(*(sdk.access_token(stores, sdk_app, now_ms=now) for _ in range(20)))
    assert len({token.access_token for token in first}) == 1
    due = now + 7000 * 1000  # renewal is due: still only one new token among racing callers
    renewed = await asyncio.gather(*(sdk.access_token(stores, sdk_app, now_ms=due) for _ in range(20)))
    assert len({token.access_token for token in renewed}) == 1
    assert renewed[0].access_token != first[0].access_token


async def test_force_refresh_ends_the_old_token_at_once_and_is_limited(api: ApiClient, app: MiniApp) -> None:
    old = await app_token(api, app)
    forced = await stable(api, grant_type="client_credential", force_refresh=True, **app.credentials())
    assert set(forced) == {"access_token", "expires_in"} and forced["access_token"] != old
    assert await token_works(api, old) == sdk.INVALID_CREDENTIAL
    assert await token_works(api, str(forced["access_token"])) == PAST_THE_TOKEN
    # Within 30 s of a forced refresh WeChat keeps the token; each attempt still counts against 20 a day.
    for _ in range(19):
        again = await stable(api, grant_type="client_credential", force_refresh=True, **app.credentials())
        assert again["access_token"] == forced["access_token"]
    wx_error_shape(
        await stable(api, grant_type="client_credential", force_refresh=True, **app.credentials()),
        sdk.DAILY_QUOTA,
    )
    # The normal mode is not limited by it.
    normal = await stable(api, grant_type="client_credential", **app.credentials())
    assert normal["access_token"] == forced["access_token"]


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, sdk.ACCESS_TOKEN_MISSING), ("nonsense", sdk.INVALID_CREDENTIAL), ("tb0123456789abcdef.x", 40001)],
)
async def test_missing_and_unknown_tokens(api: ApiClient, token: str | None, code: int) -> None:
    params = {"openid": "o", "signature": "0", "sig_method": "hmac_sha256"}
    if token is not None:
        params["access_token"] = token
    answer = await api.get("/wxa/checksession", params=params)
    wx_error_shape(answer.json(), code)


async def test_authenticate_app_checks_the_address_before_the_secret(stores: Stores, app: MiniApp) -> None:
    with pytest.raises(SdkError) as refused:
        await sdk.authenticate_app(stores, app.appid, "wrong", "not-an-address")
    # The test client's address is not an IP, but an empty allowlist admits every caller.
    assert refused.value.errcode == sdk.INVALID_APPSECRET
