"""Helpers for the mini-app registry tests (no tests here): people with real sessions, staff, organisations,
apps and versions made through the API in process, against the real PostgreSQL and Redis.

Accounts are written straight into the database through the PII vault as login and real-name
verification would leave them; everything after that goes through the mini-app API."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from uuid import UUID

import httpx
from litestar import Litestar
from litestar.testing import AsyncTestClient
from stdnum.cn import ric

from auth import repository as auth_repository
from auth import service
from core import clock, ids
from core.db import transaction
from core.pii.masking import mask_id_number, mask_name, mask_phone, normalize_id_number, normalize_phone
from core.stores import Stores
from miniapps import registry
from miniapps.models import Actor

ApiClient = AsyncTestClient[Litestar]


def new_phone() -> str:
    return "135" + f"{secrets.randbelow(10**8):08d}"


def new_id_number() -> str:
    born = date(1980, 1, 1) + timedelta(days=secrets.randbelow(9000))
    body = f"150102{born:%Y%m%d}{secrets.randbelow(1000):03d}"
    return body + ric.calc_check_digit(body + "0")


@dataclass
class Person:
    account_id: UUID
    phone: str
    access_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def make_person(stores: Stores, *, level: int = 2) -> Person:
    """An account at `level` (2: name and ID number verified) with one live session."""
    vault = await stores.vault()
    phone = new_phone()
    account_id, session_id = ids.new_id(), ids.new_id()
    async with transaction(stores.pool, stores.settings) as conn:
        phone_enc = await vault.encrypt(conn, phone, table="accounts", column="phone", row_id=account_id)
        phone_bidx = vault.blind_index(phone, purpose="accounts.phone", normalize=normalize_phone)
        assert await auth_repository.insert_account(
            conn, account_id, phone_enc, phone_bidx, mask_phone(phone)
        )
        amr = ["sms"]
        if level >= 2:
            id_number, name = new_id_number(), "张三"
            amr = ["sms", "idcard"]
            await conn.execute(
                """UPDATE accounts SET level = $2, amr = $3, name_enc = $4, name_masked = $5,
                       id_number_enc = $6, id_number_bidx = $7, id_number_masked = $8, real_name_at = now()
                   WHERE id = $1""",
                account_id,
                level,
                amr,
                await vault.encrypt(conn, name, table="accounts", column="name", row_id=account_id),
                mask_name(name),
                await vault.encrypt(conn, id_number, table="accounts", column="id_number", row_id=account_id),
                vault.blind_index(id_number, purpose="accounts.id_number", normalize=normalize_id_number),
                mask_id_number(id_number),
            )
        await auth_repository.insert_session(
            conn, session_id, account_id, "test-device", "phone", clock.now() + timedelta(days=1)
        )
        tokens = await service._new_session_tokens(
            stores, conn, session_id=session_id, account_id=account_id, level=level, amr=amr
        )
    return Person(account_id, phone, tokens.access_token)


async def make_staff(stores: Stores, *roles: str) -> Person:
    person = await make_person(stores)
    for role in roles:
        await registry.grant_staff(stores, person.account_id, role, Actor.ops("ops:test"))
    return person


async def create_organisation(api: ApiClient, staff: Person, admin: Person, **overrides: Any) -> str:
    body = {
        "name": f"测试部门 {secrets.token_hex(4)}",
        "kind": "department",
        "region_code": "150100",
        "first_admin": {"account_id": str(admin.account_id)},
        **overrides,
    }
    answer = await api.post("/v1/staff/organisations", json=body, headers=staff.auth)
    assert answer.status_code == 201, answer.text
    organisation_id: str = answer.json()["id"]
    return organisation_id


@dataclass
class Org:
    id: str
    staff: Person
    admin: Person


async def make_org(api: ApiClient, stores: Stores) -> Org:
    staff = await make_staff(stores, "platform_admin")
    admin = await make_person(stores)
    return Org(await create_organisation(api, staff, admin), staff, admin)


async def add_member(api: ApiClient, org: Org, person: Person, role: str) -> None:
    answer = await api.post(
        f"/v1/organisations/{org.id}/members",
        json={"member": {"account_id": str(person.account_id)}, "role": role},
        headers=org.admin.auth,
    )
    assert answer.status_code == 201, answer.text


async def register_app(
    api: ApiClient, org: Org, by: Person | None = None, **overrides: Any
) -> dict[str, Any]:
    body = {
        "name": f"社保查询 {secrets.token_hex(4)}",
        "category": "social_security",
        "region_code": "150100",
        "description": "养老保险缴费记录查询",
        **overrides,
    }
    answer = await api.post(f"/v1/organisations/{org.id}/miniapps", json=body, headers=(by or org.admin).auth)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def manifest(version: str = "1.0.0", **overrides: Any) -> dict[str, Any]:
    return {"version": version, "pages": ["pages/index", "pages/detail"], "min_level": 2, **overrides}


async def upload(
    api: ApiClient,
    person: Person,
    appid: str,
    *,
    version: str = "1.0.0",
    package: bytes | None = None,
    sha256: str | None = None,
    manifest_body: dict[str, Any] | str | None = None,
) -> httpx.Response:
    package = package if package is not None else b"PK\x03\x04" + secrets.token_bytes(2048)
    body = manifest_body if manifest_body is not None else manifest(version)
    data = {"manifest": body if isinstance(body, str) else json.dumps(body)}
    if sha256 is not None:
        data["sha256"] = sha256
    response: httpx.Response = await api.post(
        f"/v1/miniapps/{appid}/versions",
        data=data,
        files={"package": ("app.zip", package, "application/zip")},
        headers=person.auth,
    )
    return response


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def act(
    api: ApiClient,
    person: Person,
    appid: str,
    version_id: str,
    action: str,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    response: httpx.Response = await api.post(
        f"/v1/miniapps/{appid}/versions/{version_id}/{action}", json=body, headers=person.auth
    )
    return response


async def review(
    api: ApiClient, reviewer: Person, version_id: str, verdict: str, reason: str = ""
) -> httpx.Response:
    response: httpx.Response = await api.post(
        f"/v1/staff/reviews/{version_id}/{verdict}",
        json={"reason": reason} if verdict == "reject" else None,
        headers=reviewer.auth,
    )
    return response


async def approved_version(
    api: ApiClient, org: Org, reviewer: Person, appid: str, version: str = "1.0.0"
) -> str:
    """A version uploaded, submitted and approved; its id."""
    uploaded = await upload(api, org.admin, appid, version=version)
    assert uploaded.status_code == 201, uploaded.text
    version_id: str = uploaded.json()["id"]
    assert (await act(api, org.admin, appid, version_id, "submit")).status_code == 200
    approved = await review(api, reviewer, version_id, "approve")
    assert approved.status_code == 200, approved.text
    return version_id


async def released_app(api: ApiClient, org: Org, reviewer: Person, **app_fields: Any) -> tuple[str, str]:
    """(appid, version id) of a new app with 1.0.0 released."""
    appid = (await register_app(api, org, **app_fields))["app"]["appid"]
    version_id = await approved_version(api, org, reviewer, appid)
    released = await act(api, org.admin, appid, version_id, "release")
    assert released.status_code == 200, released.text
    return appid, version_id
