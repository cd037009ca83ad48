"""A mini-app's whole life in one journey, over HTTP against real processes (sandbox SMS gateway and
population registry, the job worker, a two-process API server) and the `tongban` CLI, spoken to as staff,
the organisation, a reviewer, the citizen's phone and the mini-app's own server do:

staff creates an organisation -> its admin registers an app -> uploads a version -> submits it -> a reviewer
approves it from the CLI -> grey release to 10% -> release, in every process's catalog -> a citizen finds it
in the catalog and opens it (login code) -> the app's server trades the code with its AppSecret
(jscode2session) for openid + session_key -> the phone number after the citizen's consent -> a subscribe
message, delivered by the worker into the citizen's inbox -> the citizen withdraws the consent and the next
phone call fails (50001) -> the citizen rates a transaction 非常不满意 and that opens a rectification case
the organisation sees, as does `tongban miniapps cases`; and servers outside the app's IP allowlist are
refused, and no secret, token, code or phone number reaches a log."""

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
from miniapps.catalog import grey_bucket
from tests.support.auth import bearer
from tests.support.stack import Stack, running_stack, verified_citizen

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("miniapp"), only=["sms", "population"], workers=2) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def catalog_views(stack: Stack, query: str, token: str | None = None, tries: int = 8) -> list[list[Any]]:
    """The catalog's items for `query`, asked `tries` times on fresh connections (both processes answer)."""
    headers = bearer(token) if token else None
    return [
        ok(httpx.get(stack.url + "/v1/catalog", params={"q": query}, headers=headers))["items"]
        for _ in range(tries)
    ]


def eventually(check: Any, what: str, seconds: float = 10.0, pause: float = 0.1) -> Any:
    """check() until it answers something truthy; fails naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (answer := check()):
        assert time.monotonic() < deadline, what
        time.sleep(pause)
    return answer


def test_a_mini_app_from_registration_to_a_rectification_case(stack: Stack) -> None:
    # Staff: a citizen account given the platform_admin role by ops; the organisation's admin: a citizen.
    staff_id, _, staff_token = verified_citizen(stack, "staff-phone", "137")
    granted = stack.cli("staff", "grant", staff_id, "platform_admin")
    assert granted.returncode == 0, granted.stdout + granted.stderr
    admin_id, _, admin_token = verified_citizen(stack, "admin-phone", "137")
    admin = bearer(admin_token)

    # 1. Staff creates the organisation with its first admin; a citizen without the role is refused.
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
    refused = httpx.post(stack.url + "/v1/staff/organisations", json={}, headers=admin)
    assert refused.status_code == 403 and refused.json()["code"] == "not_staff"

    # 2. The admin registers the app, its servers allowlisted at 127.0.0.1: the AppSecret comes once.
    app_name = f"社保待遇认证 {tag}"
    created = ok(
        httpx.post(
            stack.url + f"/v1/organisations/{organisation['id']}/miniapps",
            json={
                "name": app_name,
                "category": "social_security",
                "region_code": "150100",
                "description": "养老待遇资格认证、进度查询",
                "ip_allowlist": ["127.0.0.1"],
            },
            headers=admin,
        ),
        201,
    )
    appid, secret = created["app"]["appid"], created["appsecret"]
    shown = httpx.get(stack.url + f"/v1/miniapps/{appid}", headers=admin)
    assert shown.status_code == 200 and secret not in shown.text

    # 3. A version: manifest + package with its declared SHA-256; submitted for review.
    package = b"PK\x03\x04" + secrets.token_bytes(100_000)
    version_id = ok(
        httpx.post(
            stack.url + f"/v1/miniapps/{appid}/versions",
            data={
                "manifest": json.dumps({"version": "1.0.0", "pages": ["pages/index/index"], "min_level": 2}),
                "sha256": hashlib.sha256(package).hexdigest(),
            },
            files={"package": ("app.zip", package, "application/zip")},
            headers=admin,
        ),
        201,
    )["id"]
    submitted = ok(
        httpx.post(stack.url + f"/v1/miniapps/{appid}/versions/{version_id}/submit", headers=admin)
    )
    assert submitted["state"] == "submitted"

    # 4. A reviewer approves from the CLI.
    queue = stack.cli("miniapps", "review", "list")
    assert queue.returncode == 0 and version_id in queue.stdout, queue.stdout + queue.stderr
    approved = stack.cli("miniapps", "review", "approve", version_id)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert f"version 1.0.0 of {appid} approved" in approved.stdout

    # 5. Grey release to 10%: anonymous callers do not see it; a citizen in the first 10 buckets does.
    grey = ok(
        httpx.post(
            stack.url + f"/v1/miniapps/{appid}/versions/{version_id}/grey",
            json={"percent": 10},
            headers=admin,
        )
    )
    assert grey["grey"]["percent"] == 10
    assert all(items == [] for items in catalog_views(stack, tag))
    in_grey = [(app_name, True)] if grey_bucket(appid, admin_id) < 10 else []
    admin_view = ok(httpx.get(stack.url + "/v1/catalog", params={"q": tag}, headers=admin))["items"]
    assert [(item["name"], item["grey"]) for item in admin_view] == in_grey

    # 6. Release: in the catalog for everyone, on every API process (the other hears of it through Redis).
    released = ok(
        httpx.post(stack.url + f"/v1/miniapps/{appid}/versions/{version_id}/release", headers=admin)
    )
    assert released["state"] == "released"
    eventually(
        lambda: all(
            [(i["appid"], i["version"], i["grey"]) for i in items] == [(appid, "1.0.0", False)]
            for items in catalog_views(stack, tag)
        ),
        "the release is not in every process's catalog",
    )
    item = ok(httpx.get(stack.url + f"/v1/catalog/{appid}"))
    assert item["organisation"]["id"] == organisation["id"]
    assert item["package_sha256"] == hashlib.sha256(package).hexdigest()
    assert item["min_level"] == 2 and item["region_code"] == "150100"
    trail = ok(httpx.get(stack.url + f"/v1/miniapps/{appid}/versions/{version_id}/audit", headers=admin))
    assert [(e["action"], e["actor"].split(":")[0]) for e in trail] == [
        ("upload", "account"),
        ("submit", "account"),
        ("approve", "ops"),
        ("grey", "account"),
        ("release", "account"),
    ]
    template = ok(
        httpx.post(
            stack.url + f"/v1/miniapps/{appid}/templates",
            json={
                "title": "待遇认证结果通知",
                "keywords": [{"key": "thing1", "label": "认证事项"}, {"key": "phrase2", "label": "认证结果"}],
            },
            headers=admin,
        ),
        201,
    )

    # 7. The mini-app's server gets its access token: racing callers on both processes get one token.
    def fetch_token(_: int) -> str:
        body = ok(
            httpx.get(
                stack.url + "/cgi-bin/token",
                params={"grant_type": "client_credential", "appid": appid, "secret": secret},
            )
        )
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

    # 8. A citizen finds the app in their catalog and opens it: a login code for the mini-app.
    account_id, phone, citizen_token = verified_citizen(stack, "citizen-phone", "137")
    citizen = bearer(citizen_token)
    assert [i["appid"] for i in catalog_views(stack, tag, citizen_token, tries=1)[0]] == [appid]
    code = ok(httpx.post(stack.url + f"/v1/miniapps/{appid}/login-code", headers=citizen), 201)["code"]

    # 9. The app's server trades it with its AppSecret: openid + session_key (+ unionid); once only.
    def jscode2session(js_code: str) -> Any:
        return ok(
            httpx.get(
                stack.url + "/sns/jscode2session",
                params={
                    "appid": appid,
                    "secret": secret,
                    "js_code": js_code,
                    "grant_type": "authorization_code",
                },
            )
        )

    session = jscode2session(code)
    assert set(session) == {"openid", "session_key", "unionid"}, session
    openid = session["openid"]
    assert jscode2session(code)["errcode"] == 40163  # whichever process answers
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

    # 10. The phone number, after the citizen's consent in the app.
    def phone_number(phone_code: str) -> Any:
        return ok(
            httpx.post(
                stack.url + "/wxa/business/getuserphonenumber",
                params={"access_token": access_token},
                json={"code": phone_code},
            )
        )

    first = ok(httpx.post(stack.url + f"/v1/miniapps/{appid}/phone-code", headers=citizen), 201)
    answer = phone_number(first["code"])
    assert answer["errcode"] == 0 and answer["phone_info"]["phoneNumber"] == phone
    assert answer["phone_info"]["watermark"]["appid"] == appid

    # 11. A subscribe message: the citizen accepts the template, the app's server sends, the worker delivers.
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
    inbox = eventually(
        lambda: ok(httpx.get(stack.url + "/v1/me/messages", headers=citizen))["messages"],
        "the worker did not deliver the message",
        seconds=20,
        pause=0.2,
    )
    assert [(m["title"], m["source"]) for m in inbox] == [("待遇认证结果通知", f"miniapp.{appid}")]
    assert inbox[0]["body"] == "认证事项：2026年度养老待遇资格认证\n认证结果：已通过"

    # 12. The citizen withdraws the consent: the mini-app's very next phone call fails with 50001.
    pending = ok(httpx.post(stack.url + f"/v1/miniapps/{appid}/phone-code", headers=citizen), 201)
    assert pending["consent_id"] == first["consent_id"]
    withdrawn = httpx.delete(stack.url + f"/v1/me/consents/{first['consent_id']}", headers=citizen)
    assert withdrawn.status_code == 204, withdrawn.text
    refused_phone = phone_number(pending["code"])
    assert refused_phone["errcode"] == 50001 and set(refused_phone) == {"errcode", "errmsg"}
    consents = ok(httpx.get(stack.url + "/v1/me/consents", headers=citizen))
    assert [c["revoked_at"] is not None for c in consents if c["recipient"] == f"miniapp:{appid}"] == [True]

    # 13. A bad rating (好差评) of a transaction opens a rectification case: the organisation sees it, and so
    # does ops in `tongban miniapps cases`.
    transaction_id = f"SB-{tag}-0001"
    rating = ok(
        httpx.post(
            stack.url + f"/v1/miniapps/{appid}/ratings",
            json={"transaction_id": transaction_id, "level": "非常不满意", "comment": "认证三次都没通过"},
            headers=citizen,
        ),
        201,
    )
    case_id = rating["case_id"]
    assert case_id and rating["case_due_on"]
    cases = ok(httpx.get(stack.url + f"/v1/miniapps/{appid}/cases", headers=admin))
    assert [(c["id"], c["transaction_id"], c["level"], c["status"]) for c in cases] == [
        (case_id, transaction_id, "非常不满意", "open")
    ]
    assert cases[0]["due_on"] == rating["case_due_on"]
    listed = stack.cli("miniapps", "cases")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if case_id in line]
    assert appid in line and transaction_id in line and rating["case_due_on"] in line

    # 14. Servers outside the app's IP allowlist: AppSecret calls get 40164, access_token calls 61004, on both
    # API processes once their app caches expire (2 s).
    ok(
        httpx.put(
            stack.url + f"/v1/miniapps/{appid}/ip-allowlist",
            json={"cidrs": ["203.0.113.0/24"]},
            headers=admin,
        )
    )

    def refusals() -> bool:
        codes = [jscode2session("x").get("errcode", 0) for _ in range(4)]
        codes += [phone_number("x").get("errcode", 0) for _ in range(4)]
        return codes == [40164] * 4 + [61004] * 4

    eventually(refusals, "the new allowlist did not reach both processes", pause=0.2)

    # No secret, token, code or phone number in the API's or the worker's logs; ids are logged.
    logs = stack.api.log() + stack.worker.log()
    for leaked in (secret, access_token, code, first["code"], session["session_key"], phone):
        assert leaked not in logs
    assert account_id in logs
