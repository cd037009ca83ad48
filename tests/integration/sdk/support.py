"""Helpers for the mini-app SDK tests (no tests here): a released mini-app with its AppSecret, citizens who
logged in and verified their real name, and the calls of the citizen's app and the mini-app's server, all
through the real service functions and the API in process against PostgreSQL and Redis.

The in-process client calls from the address "testclient", which an empty IP allowlist admits and no list
of addresses does; tests/e2e calls from 127.0.0.1."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx

from auth import service
from core.stores import Stores
from miniapps import sdk
from tests.integration.test_miniapps_support import (
    ApiClient,
    Org,
    Person,
    act,
    approved_version,
    make_org,
    make_staff,
    register_app,
)
from tests.support.accounts import login_in_process, verify_in_process
from tests.unit.test_realname_validation import random_id_number, random_name


@dataclass
class Citizen:
    account_id: UUID
    phone: str
    name: str
    id_number: str
    access_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def citizen(stores: Stores, *, verified: bool = True) -> Citizen:
    """A citizen who logged in by SMS code and (by default) verified their real name: an L2 token."""
    phone = "136" + f"{secrets.randbelow(10**8):08d}"
    tokens = await login_in_process(stores, phone)
    name, id_number = random_name(), random_id_number()
    if verified:
        await verify_in_process(stores, tokens.account_id, name, id_number)
        tokens = await service.refresh(stores, tokens.refresh_token)
    return Citizen(tokens.account_id, phone, name, id_number, tokens.access_token)


@dataclass
class MiniApp:
    appid: str
    secret: str
    org: Org
    version_id: str

    def credentials(self) -> dict[str, str]:
        return {"appid": self.appid, "secret": self.secret}


async def released_miniapp(api: ApiClient, stores: Stores, **fields: Any) -> MiniApp:
    """A new organisation with an app whose 1.0.0 is released (its manifest asks for real-name level L2)."""
    org = await make_org(api, stores)
    reviewer = await make_staff(stores, "reviewer")
    created = await register_app(api, org, **fields)
    appid = created["app"]["appid"]
    version_id = await approved_version(api, org, reviewer, appid)
    released = await act(api, org.admin, appid, version_id, "release")
    assert released.status_code == 200, released.text
    return MiniApp(appid, created["appsecret"], org, version_id)


async def grey_only_miniapp(api: ApiClient, stores: Stores, testers: list[UUID]) -> MiniApp:
    """An app whose first version is in a grey release that admits only `testers`."""
    org = await make_org(api, stores)
    reviewer = await make_staff(stores, "reviewer")
    created = await register_app(api, org)
    appid = created["app"]["appid"]
    version_id = await approved_version(api, org, reviewer, appid)
    grey = await act(
        api, org.admin, appid, version_id, "grey", {"percent": 0, "accounts": [str(a) for a in testers]}
    )
    assert grey.status_code == 200, grey.text
    return MiniApp(appid, created["appsecret"], org, version_id)


async def app_token(api: ApiClient, app: MiniApp) -> str:
    answer = await api.get("/cgi-bin/token", params={"grant_type": "client_credential", **app.credentials()})
    body = answer.json()
    assert answer.status_code == 200 and "access_token" in body, body
    token: str = body["access_token"]
    return token


async def login_code(api: ApiClient, person: Citizen | Person, appid: str) -> str:
    answer = await api.post(f"/v1/miniapps/{appid}/login-code", headers=person.auth)
    assert answer.status_code == 201, answer.text
    code: str = answer.json()["code"]
    return code


async def code2session(api: ApiClient, app: MiniApp, code: str, **extra: str) -> httpx.Response:
    response: httpx.Response = await api.get(
        "/sns/jscode2session",
        params={**app.credentials(), "js_code": code, "grant_type": "authorization_code", **extra},
    )
    return response


async def openid_of(api: ApiClient, app: MiniApp, person: Citizen | Person) -> dict[str, Any]:
    """The citizen logs into the app: {openid, session_key, unionid}."""
    answer = await code2session(api, app, await login_code(api, person, app.appid))
    body: dict[str, Any] = answer.json()
    assert "openid" in body, body
    return body


def errcode(response: httpx.Response) -> int:
    """The WeChat errcode of an SDK answer (always HTTP 200), 0 when it has none."""
    assert response.status_code == 200, response.text
    code: int = response.json().get("errcode", 0)
    return code


def forget_cached_apps() -> None:
    """Registry changes reach the SDK within its app cache's lifetime; tests need them at once."""
    sdk.APP_CACHE.clear()
