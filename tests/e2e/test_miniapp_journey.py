"""A mini-app's whole SDK journey over real processes (sandbox SMS gateway and population registry, the job
worker, a two-process API server), spoken to over HTTP as the citizen's phone and the mini-app's server do:

a released app -> a citizen opens it (login code) -> the app's server trades the code with its AppSecret
(jscode2session) for openid + session_key -> the phone number after the citizen's consent -> a subscribe
message, delivered by the worker into the citizen's inbox -> the citizen withdraws the consent and the next
phone call fails; and a server outside the app's IP allowlist is refused."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from miniapps import opendata
from tests.support.auth import bearer
from tests.support.stack import Stack, running_stack, verified_citizen

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("journey"), only=["sms", "population"], workers=2) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def released_app(stack: Stack) -> tuple[str, str, str]:
    """(appid, AppSecret, admin token) of a new app with 1.0.0 released, its servers allowlisted at
    127.0.0.1, set up through the registry's API and the ops CLI."""
    staff_id, _, staff_token = verified_citizen(stack, "staff-phone", "137")
    granted = stack.cli("staff", "grant", staff_id, "platform_admin")
    assert granted.returncode == 0, granted.stdout + granted.stderr
    admin_id, _, admin_token = verified_citizen(stack, "admin-phone", "137")
    tag = secrets.token_hex(3)
    organisation = ok(
        httpx.post(
            stack.url + "/v1/staff/organisations",
            json={
                "name": f"呼和浩特市社保局 {tag}",
                "kind": "department",
                "region_code": "150100",
                "first_admin": {"account_id": admin_id},
            },
            headers=bearer(staff_token),
        ),
        201,
    )
    created = ok(
        httpx.post(
            stack.url + f"/v1/organisations/{organisation['id']}/miniapps",
            json={
                "name": f"社保待遇认证 {tag}",
                "category": "social_security",
                "region_code": "150100",
                "ip_allowlist": ["127.0.0.1"],
            },
            headers=bearer(admin_token),
        ),
        201,
    )
    appid, secret = created["app"]["appid"], created["appsecret"]
    package = b"PK\x03\x04" + secrets.token_bytes(4096)
    uploaded = ok(
        httpx.post(
            stack.url + f"/v1/miniapps/{appid}/versions",
            data={
                "manifest": json.dumps({"version": "1.0.0", "pages": ["pages/index/index"], "min_level": 2}),
                "sha256": hashlib.sha256(package).hexdigest(),
            },
            files={"package": ("app.zip", package, "application/zip")},
            headers=bearer(admin_token),
        ),
        201,
    )
    version_id = uploaded["id"]
    ok(
        httpx.post(
            stack.url + f"/v1/miniapps/{appid}/versions/{version_id}/submit", headers=bearer(admin_token)
        )
    )
    approved = stack.cli("miniapps", "review", "approve", version_id)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    ok(
        httpx.post(
            stack.url + f"/v1/miniapps/{appid}/versions/{version_id}/release", headers=bearer(admin_token)
        )
    )
    return appid, secret, admin_token


def wait_until_listed(stack: Stack, appid: str, token: str) -> None:
    """Both API processes show the release (the other one hears of it through Redis)."""
    deadline = time.monotonic() + 10
    while True:
        answers = [httpx.get(stack.url + f"/v1/catalog/{appid}", headers=bearer(token)) for _ in range(6)]
        if all(answer.status_code == 200 for answer in answers):
            return
        assert time.monotonic() < deadline, [answer.text for answer in answers]
        time.sleep(0.1)


def test_the_whole_mini_app_journey(stack: Stack) -> None:
    appid, secret, admin_token = released_app(stack)
    template = ok(
        httpx.post(
            stack.url + f"/v1/miniapps/{appid}/templates",
            json={
                "title": "待遇认证结果通知",
                "keywords": [{"key": "thing1", "label": "认证事项"}, {"key": "phrase2", "label": "认证结果"}],
            },
            headers=bearer(admin_token),
        ),
        201,
    )
    account_id, phone, citizen_token = verified_citizen(stack, "citizen-phone", "137")
    citizen = bearer(citizen_token)
    wait_until_listed(stack, appid, citizen_token)

    # The mini-app's server gets its access token: racing callers on both processes get one token.
    def fetch_token(_: int) -> str:
        answer = httpx.get(
            stack.url + "/cgi-bin/token",
            params={"grant_type": "client_credential", "appid": appid, "secret": secret},
        )
        body = ok(answer)
        assert set(body) == {"access_token", "expires_in"}, body
        return str(body["access_token"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = set(pool.map(fetch_token, range(16)))
    assert len(tokens) == 1
    [access_token] = tokens
    stable = ok(
        httpx.post(
            stack.url + "/cgi-bin/stable_token",
            json={"grant_type": "client_credential", "appid": appid, "secret": secret},
        )
    )
    assert stable["access_token"] == access_token

    # 1. The citizen opens the app: a login code, handed to the mini-app, traded on its server.
    code = ok(httpx.post(stack.url + f"/v1/miniapps/{appid}/login-code", headers=citizen), 201)["code"]
    session = ok(
        httpx.get(
            stack.url + "/sns/jscode2session",
            params={"appid": appid, "secret": secret, "js_code": code, "grant_type": "authorization_code"},
        )
    )
    assert set(session) == {"openid", "session_key", "unionid"}
    openid = session["openid"]
    reused = ok(
        httpx.get(
            stack.url + "/sns/jscode2session",
            params={"appid": appid, "secret": secret, "js_code": code, "grant_type": "authorization_code"},
        )
    )
    assert reused["errcode"] == 40163
    checked = ok(
        httpx.get(
            stack.url + "/wxa/checksession",
            params={
                "access_token": access_token,
                "openid": openid,
                "signature": opendata.session_signature(session["session_key"]),
                "sig_method": "hmac_sha256",
            },
        )
    )
    assert checked == {"errcode": 0, "errmsg": "ok"}

    # 2. The phone number, after the citizen's consent in the app.
    first = ok(httpx.post(stack.url + f"/v1/miniapps/{appid}/phone-code", headers=citizen), 201)
    answer = ok(
        httpx.post(
            stack.url + "/wxa/business/getuserphonenumber",
            params={"access_token": access_token},
            json={"code": first["code"]},
        )
    )
    assert answer["errcode"] == 0 and answer["phone_info"]["phoneNumber"] == phone
    assert answer["phone_info"]["watermark"]["appid"] == appid

    # 3. A subscribe message: the citizen accepts the template, the app's server sends, the worker delivers.
    accepted = ok(
        httpx.post(
            stack.url + f"/v1/miniapps/{appid}/subscriptions",
            json={"template_ids": [template["template_id"]]},
            headers=citizen,
        )
    )
    assert accepted[0]["remaining"] == 1
    sent = ok(
        httpx.post(
            stack.url + "/cgi-bin/message/subscribe/send",
            params={"access_token": access_token},
            json={
                "touser": openid,
                "template_id": template["template_id"],
                "page": "pages/index/index",
                "data": {"thing1": {"value": "2026年度养老待遇资格认证"}, "phrase2": {"value": "已通过"}},
                "miniprogram_state": "formal",
                "lang": "zh_CN",
            },
        )
    )
    assert sent == {"errcode": 0, "errmsg": "ok"}
    deadline = time.monotonic() + 20
    while True:
        inbox = ok(httpx.get(stack.url + "/v1/me/messages", headers=citizen))["messages"]
        if inbox:
            break
        assert time.monotonic() < deadline, "the worker did not deliver the message:\n" + stack.worker.log()
        time.sleep(0.2)
    assert [(m["title"], m["source"]) for m in inbox] == [("待遇认证结果通知", f"miniapp.{appid}")]
    assert inbox[0]["body"] == "认证事项：2026年度养老待遇资格认证\n认证结果：已通过"

    # 4. The citizen withdraws the consent: the mini-app's next phone call fails.
    pending = ok(httpx.post(stack.url + f"/v1/miniapps/{appid}/phone-code", headers=citizen), 201)
    assert pending["consent_id"] == first["consent_id"]
    withdrawn = httpx.delete(stack.url + f"/v1/me/consents/{first['consent_id']}", headers=citizen)
    assert withdrawn.status_code == 204, withdrawn.text
    refused = ok(
        httpx.post(
            stack.url + "/wxa/business/getuserphonenumber",
            params={"access_token": access_token},
            json={"code": pending["code"]},
        )
    )
    assert refused["errcode"] == 50001 and set(refused) == {"errcode", "errmsg"}
    consents = ok(httpx.get(stack.url + "/v1/me/consents", headers=citizen))
    assert [c["revoked_at"] is not None for c in consents if c["recipient"] == f"miniapp:{appid}"] == [True]

    # 5. Servers outside the app's IP allowlist: AppSecret calls get 40164, access_token calls 61004, on both
    # API processes once their app caches expire (2 s).
    moved = httpx.put(
        stack.url + f"/v1/miniapps/{appid}/ip-allowlist",
        json={"cidrs": ["203.0.113.0/24"]},
        headers=bearer(admin_token),
    )
    assert moved.status_code == 200, moved.text
    deadline = time.monotonic() + 10
    while True:
        codes = [
            ok(
                httpx.get(
                    stack.url + "/cgi-bin/token",
                    params={"grant_type": "client_credential", "appid": appid, "secret": secret},
                )
            ).get("errcode", 0)
            for _ in range(4)
        ] + [
            ok(
                httpx.post(
                    stack.url + "/wxa/business/getuserphonenumber",
                    params={"access_token": access_token},
                    json={"code": "x"},
                )
            ).get("errcode", 0)
            for _ in range(4)
        ]
        if codes == [40164] * 4 + [61004] * 4:
            break
        assert time.monotonic() < deadline, codes
        time.sleep(0.2)

    # No secret, token, code or phone number in the API's or the worker's logs.
    logs = stack.api.log() + stack.worker.log()
    for leaked in (secret, access_token, code, first["code"], session["session_key"], phone):
        assert leaked not in logs
    assert account_id in logs  # ids are logged, personal data is not
