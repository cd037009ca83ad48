"""Staff, organisations, members and apps over the API (the app in process) with the real PostgreSQL and
Redis: the staff guard and its cache, who may do what in an organisation, the AppSecret shown once and
stored hashed, IP allowlists, freezes, the SDK look-ups, and the audit rows all of it leaves."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from core.db import transaction
from core.settings import Settings
from core.stores import Stores
from miniapps import registry
from miniapps.models import Actor
from tests.integration.test_miniapps_support import (
    ApiClient,
    add_member,
    create_organisation,
    make_org,
    make_person,
    make_staff,
    register_app,
)

STAFF_CACHE_SECONDS = 0.5


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    configured = msgspec.structs.replace(settings, staff_cache_seconds=STAFF_CACHE_SECONDS)
    async with AsyncTestClient(app=create_app(configured)) as client:
        yield client


async def audit_actions(stores: Stores, **where: Any) -> list[tuple[str, str]]:
    ((column, value),) = where.items()
    async with transaction(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            f"SELECT action, actor FROM miniapp_audit WHERE {column} = $1 ORDER BY id",  # noqa: S608
            value,
        )
    return [(row["action"], row["actor"]) for row in rows]


# --- staff -------------------------------------------------------------------------------------------------


async def test_only_platform_admins_create_organisations(api: ApiClient, stores: Stores) -> None:
    admin = await make_person(stores)
    body = {
        "name": "呼和浩特市人社局",
        "kind": "department",
        "region_code": "150100",
        "first_admin": {"account_id": str(admin.account_id)},
    }
    anonymous = await api.post("/v1/staff/organisations", json=body)
    assert anonymous.status_code == 401
    citizen = await make_person(stores)
    refused = await api.post("/v1/staff/organisations", json=body, headers=citizen.auth)
    assert refused.status_code == 403 and refused.json()["code"] == "not_staff"
    reviewer = await make_staff(stores, "reviewer")
    refused = await api.post("/v1/staff/organisations", json=body, headers=reviewer.auth)
    assert refused.status_code == 403 and refused.json()["code"] == "not_staff"

    staff = await make_staff(stores, "platform_admin")
    created = await api.post("/v1/staff/organisations", json=body, headers=staff.auth)
    assert created.status_code == 201, created.text
    organisation_id = created.json()["id"]
    mine = await api.get("/v1/me/organisations", headers=admin.auth)
    assert [(o["id"], o["role"]) for o in mine.json()] == [(organisation_id, "admin")]
    assert await audit_actions(stores, organisation_id=UUID(organisation_id)) == [
        ("organisation_created", f"account:{staff.account_id}")
    ]
    again = await api.post("/v1/staff/organisations", json=body, headers=staff.auth)
    assert again.status_code == 409 and again.json()["code"] == "organisation_exists"


async def test_staff_roles_are_cached_briefly_and_revoked_at_once_here(
    api: ApiClient, stores: Stores
) -> None:
    staff = await make_staff(stores, "reviewer")
    me = await api.get("/v1/staff/me", headers=staff.auth)
    assert me.status_code == 200 and me.json()["roles"] == ["reviewer"]
    assert (await api.get("/v1/staff/reviews", headers=staff.auth)).status_code == 200

    # Revoked by another process (straight in the table): this process trusts its cache a moment longer.
    async with transaction(stores.pool, stores.settings) as conn:
        await conn.execute("DELETE FROM staff_roles WHERE account_id = $1", staff.account_id)
    assert (await api.get("/v1/staff/reviews", headers=staff.auth)).status_code == 200
    await asyncio.sleep(STAFF_CACHE_SECONDS + 0.2)
    refused = await api.get("/v1/staff/reviews", headers=staff.auth)
    assert refused.status_code == 403 and refused.json()["code"] == "not_staff"

    # Granted and revoked through the service in this process: effective at once.
    actor = Actor.ops("ops:test")
    assert await registry.grant_staff(stores, staff.account_id, "reviewer", actor)
    assert not await registry.grant_staff(stores, staff.account_id, "reviewer", actor)
    assert (await api.get("/v1/staff/reviews", headers=staff.auth)).status_code == 200
    assert await registry.revoke_staff(stores, staff.account_id, "reviewer", actor)
    assert (await api.get("/v1/staff/reviews", headers=staff.auth)).status_code == 403
    assert [
        action for action, _ in await audit_actions(stores, actor="ops:test") if action.startswith("staff")
    ]


async def test_staff_guard_names_only_known_roles() -> None:
    from api.guards import staff

    with pytest.raises(ValueError, match="staff roles"):
        staff("superuser")


# --- organisations and members -----------------------------------------------------------------------------


async def test_first_admin_must_be_a_verified_existing_account(api: ApiClient, stores: Stores) -> None:
    staff = await make_staff(stores, "platform_admin")
    l1 = await make_person(stores, level=1)
    body = {"name": "包头市医保局", "kind": "department", "region_code": "150200"}
    unverified = await api.post(
        "/v1/staff/organisations",
        json={**body, "first_admin": {"account_id": str(l1.account_id)}},
        headers=staff.auth,
    )
    assert unverified.status_code == 409 and unverified.json()["code"] == "member_not_verified"
    assert unverified.json()["field"] == "first_admin"
    unknown = await api.post(
        "/v1/staff/organisations",
        json={**body, "first_admin": {"phone": "13900000001"}},
        headers=staff.auth,
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "account_not_found"
    both = await api.post(
        "/v1/staff/organisations",
        json={**body, "first_admin": {"phone": "13900000001", "account_id": str(l1.account_id)}},
        headers=staff.auth,
    )
    assert both.status_code == 422 and both.json()["field"] == "first_admin"
    bad_region = await api.post(
        "/v1/staff/organisations",
        json={**body, "region_code": "159999", "first_admin": {"account_id": str(l1.account_id)}},
        headers=staff.auth,
    )
    assert bad_region.status_code == 422 and bad_region.json()["code"] == "invalid_region"
    assert bad_region.json()["field"] == "region_code"
    # By phone, as written on a form.
    admin = await make_person(stores)
    spaced = f"+86 {admin.phone[:3]} {admin.phone[3:7]} {admin.phone[7:]}"
    organisation_id = await create_organisation(
        api, staff, admin, name="包头市医保局", region_code="150200", first_admin={"phone": spaced}
    )
    members = await api.get(f"/v1/organisations/{organisation_id}/members", headers=admin.auth)
    assert [(m["account_id"], m["role"]) for m in members.json()] == [(str(admin.account_id), "admin")]


async def test_admins_manage_members_and_keep_the_last_admin(api: ApiClient, stores: Stores) -> None:
    org = await make_org(api, stores)
    developer, operator, outsider = (
        await make_person(stores),
        await make_person(stores),
        await make_person(stores),
    )
    await add_member(api, org, developer, "developer")
    by_phone = await api.post(
        f"/v1/organisations/{org.id}/members",
        json={"member": {"phone": operator.phone}, "role": "operator"},
        headers=org.admin.auth,
    )
    assert by_phone.status_code == 201 and by_phone.json()["role"] == "operator"

    # A developer does not manage members; an outsider does not even see the organisation.
    refused = await api.post(
        f"/v1/organisations/{org.id}/members",
        json={"member": {"account_id": str(outsider.account_id)}, "role": "admin"},
        headers=developer.auth,
    )
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_org_role"
    hidden = await api.get(f"/v1/organisations/{org.id}/members", headers=outsider.auth)
    assert hidden.status_code == 404 and hidden.json()["code"] == "organisation_not_found"
    # Members are real-name verified.
    l1 = await make_person(stores, level=1)
    unverified = await api.post(
        f"/v1/organisations/{org.id}/members",
        json={"member": {"account_id": str(l1.account_id)}, "role": "developer"},
        headers=org.admin.auth,
    )
    assert unverified.status_code == 409 and unverified.json()["code"] == "member_not_verified"
    # An L1 token does not reach the organisation routes at all.
    assert (await api.get(f"/v1/organisations/{org.id}/members", headers=l1.auth)).status_code == 403

    # The last admin can be neither demoted nor removed.
    demote = await api.post(
        f"/v1/organisations/{org.id}/members",
        json={"member": {"account_id": str(org.admin.account_id)}, "role": "developer"},
        headers=org.admin.auth,
    )
    assert demote.status_code == 409 and demote.json()["code"] == "last_admin"
    remove_self = await api.delete(
        f"/v1/organisations/{org.id}/members/{org.admin.account_id}", headers=org.admin.auth
    )
    assert remove_self.status_code == 409 and remove_self.json()["code"] == "last_admin"

    removed = await api.delete(
        f"/v1/organisations/{org.id}/members/{developer.account_id}", headers=org.admin.auth
    )
    assert removed.status_code == 204
    members = await api.get(f"/v1/organisations/{org.id}/members", headers=org.admin.auth)
    assert {m["account_id"]: m["role"] for m in members.json()} == {
        str(org.admin.account_id): "admin",
        str(operator.account_id): "operator",
    }
    actions = [action for action, _ in await audit_actions(stores, organisation_id=UUID(org.id))]
    assert actions == ["organisation_created", "member_granted", "member_granted", "member_removed"]


# --- apps --------------------------------------------------------------------------------------------------


async def test_app_secret_is_shown_once_and_stored_hashed(api: ApiClient, stores: Stores) -> None:
    org = await make_org(api, stores)
    created = await register_app(api, org)
    appid, secret = created["app"]["appid"], created["appsecret"]
    assert re.fullmatch(r"tb[0-9a-f]{16}", appid)
    assert re.fullmatch(r"[0-9a-f]{32}", secret)

    # Never again: not in the app, its list, its audit; in the database only as HMAC-SHA256(appid, secret).
    for path in (
        f"/v1/miniapps/{appid}",
        f"/v1/organisations/{org.id}/miniapps",
        f"/v1/miniapps/{appid}/audit",
    ):
        answer = await api.get(path, headers=org.admin.auth)
        assert answer.status_code == 200 and secret not in answer.text
    async with transaction(stores.pool, stores.settings) as conn:
        row = await conn.fetchrow("SELECT * FROM miniapps WHERE appid = $1", appid)
        audit = await conn.fetch("SELECT detail::text FROM miniapp_audit WHERE appid = $1", appid)
    assert row is not None
    assert secret not in str(dict(row)) and secret.encode() not in bytes(row["secret_hash"])
    assert all(secret not in r["detail"] for r in audit)
    assert bytes(row["secret_hash"]) == hmac.new(appid.encode(), secret.encode(), hashlib.sha256).digest()

    sdk = await registry.sdk_app(stores, appid)
    assert sdk is not None and sdk.status == "active" and sdk.organisation_id == UUID(org.id)
    assert registry.secret_matches(sdk, secret) and not registry.secret_matches(sdk, "0" * 32)

    # A reset: a new secret, shown once; the old one stops matching at once.
    reset = await api.post(f"/v1/miniapps/{appid}/secret", headers=org.admin.auth)
    assert reset.status_code == 200
    new_secret = reset.json()["appsecret"]
    assert new_secret != secret and re.fullmatch(r"[0-9a-f]{32}", new_secret)
    sdk = await registry.sdk_app(stores, appid)
    assert sdk is not None
    assert registry.secret_matches(sdk, new_secret) and not registry.secret_matches(sdk, secret)
    assert await registry.sdk_app(stores, "tb0000000000000000") is None
    assert [a for a, _ in await audit_actions(stores, appid=appid)] == ["app_created", "secret_reset"]


async def test_who_may_do_what_with_an_app(api: ApiClient, stores: Stores) -> None:
    org = await make_org(api, stores)
    developer, operator, outsider = (
        await make_person(stores),
        await make_person(stores),
        await make_person(stores),
    )
    await add_member(api, org, developer, "developer")
    await add_member(api, org, operator, "operator")
    # Developers register apps; operators do not.
    appid = (await register_app(api, org, by=developer))["app"]["appid"]
    body = {"name": "不可以", "category": "tax", "region_code": "150100"}
    refused = await api.post(f"/v1/organisations/{org.id}/miniapps", json=body, headers=operator.auth)
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_org_role"
    # Only admins reset the secret or freeze.
    for person in (developer, operator):
        answer = await api.post(f"/v1/miniapps/{appid}/secret", headers=person.auth)
        assert answer.status_code == 403 and answer.json()["code"] == "insufficient_org_role"
    # Outsiders see nothing.
    hidden = await api.get(f"/v1/miniapps/{appid}", headers=outsider.auth)
    assert hidden.status_code == 404 and hidden.json()["code"] == "app_not_found"
    # Everyone in the organisation reads it.
    assert (await api.get(f"/v1/miniapps/{appid}", headers=operator.auth)).status_code == 200


async def test_app_fields_are_checked_and_names_unique(api: ApiClient, stores: Stores) -> None:
    org = await make_org(api, stores)
    first = await register_app(api, org)
    taken = await api.post(
        f"/v1/organisations/{org.id}/miniapps",
        json={"name": first["app"]["name"], "category": "tax", "region_code": "150100"},
        headers=org.admin.auth,
    )
    assert taken.status_code == 409 and taken.json()["code"] == "app_name_taken"
    bad_cidr = await api.post(
        f"/v1/organisations/{org.id}/miniapps",
        json={
            "name": "新应用",
            "category": "tax",
            "region_code": "150100",
            "ip_allowlist": ["10.0.0.0/8", "10.1.2.3/16"],
        },
        headers=org.admin.auth,
    )
    assert bad_cidr.status_code == 422 and bad_cidr.json()["field"] == "ip_allowlist[1]"
    bad_category = await api.post(
        f"/v1/organisations/{org.id}/miniapps",
        json={"name": "新应用", "category": "Tax Office", "region_code": "150100"},
        headers=org.admin.auth,
    )
    assert bad_category.status_code == 400 and bad_category.json()["field"] == "category"

    appid = first["app"]["appid"]
    patched = await api.patch(
        f"/v1/miniapps/{appid}",
        json={
            "description": "新的描述",
            "service_item_code": "11150100MB1234567X4150117001000",
            "icon_url": None,
        },
        headers=org.admin.auth,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["description"] == "新的描述" and patched.json()["name"] == first["app"]["name"]
    assert patched.json()["service_item_code"] == "11150100MB1234567X4150117001000"


async def test_ip_allowlist(api: ApiClient, stores: Stores) -> None:
    org = await make_org(api, stores)
    appid = (await register_app(api, org))["app"]["appid"]
    sdk = await registry.sdk_app(stores, appid)
    assert sdk is not None and registry.ip_allowed(sdk, "203.0.113.9")  # empty: any address
    answer = await api.put(
        f"/v1/miniapps/{appid}/ip-allowlist",
        json={"cidrs": ["10.20.0.0/16", "203.0.113.7", "2001:db8::/32"]},
        headers=org.admin.auth,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["ip_allowlist"] == ["10.20.0.0/16", "203.0.113.7/32", "2001:db8::/32"]
    sdk = await registry.sdk_app(stores, appid)
    assert sdk is not None
    assert registry.ip_allowed(sdk, "10.20.3.4") and registry.ip_allowed(sdk, "203.0.113.7")
    assert registry.ip_allowed(sdk, "2001:db8::1")
    assert not registry.ip_allowed(sdk, "203.0.113.8") and not registry.ip_allowed(sdk, "not an ip")
    bad = await api.put(
        f"/v1/miniapps/{appid}/ip-allowlist", json={"cidrs": ["10.0.0.300"]}, headers=org.admin.auth
    )
    assert (
        bad.status_code == 422 and bad.json()["code"] == "invalid_cidr" and bad.json()["field"] == "cidrs[0]"
    )


async def test_freezes_by_organisation_and_platform(api: ApiClient, stores: Stores) -> None:
    org = await make_org(api, stores)
    appid = (await register_app(api, org))["app"]["appid"]
    frozen = await api.post(
        f"/v1/miniapps/{appid}/freeze", json={"reason": "密钥泄露排查"}, headers=org.admin.auth
    )
    assert frozen.status_code == 200 and frozen.json()["status"] == "frozen"
    assert frozen.json()["frozen_by"] == "organisation"
    sdk = await registry.sdk_app(stores, appid)
    assert sdk is not None and sdk.status == "frozen"
    again = await api.post(f"/v1/miniapps/{appid}/freeze", json={"reason": "x"}, headers=org.admin.auth)
    assert again.status_code == 409 and again.json()["code"] == "already_frozen"
    assert (await api.post(f"/v1/miniapps/{appid}/unfreeze", headers=org.admin.auth)).json()[
        "status"
    ] == "active"

    # A platform freeze is lifted by the platform only.
    platform = await api.post(
        f"/v1/staff/miniapps/{appid}/freeze", json={"reason": "违规收集个人信息"}, headers=org.staff.auth
    )
    assert platform.status_code == 200 and platform.json()["frozen_by"] == "platform"
    refused = await api.post(f"/v1/miniapps/{appid}/unfreeze", headers=org.admin.auth)
    assert refused.status_code == 403 and refused.json()["code"] == "frozen_by_platform"
    citizen_try = await api.post(f"/v1/staff/miniapps/{appid}/unfreeze", headers=org.admin.auth)
    assert citizen_try.status_code == 403
    lifted = await api.post(f"/v1/staff/miniapps/{appid}/unfreeze", headers=org.staff.auth)
    assert lifted.status_code == 200 and lifted.json()["status"] == "active"
    not_frozen = await api.post(f"/v1/staff/miniapps/{appid}/unfreeze", headers=org.staff.auth)
    assert not_frozen.status_code == 409 and not_frozen.json()["code"] == "not_frozen"
    assert [a for a, _ in await audit_actions(stores, appid=appid)] == [
        "app_created",
        "app_frozen",
        "app_unfrozen",
        "app_frozen",
        "app_unfrozen",
    ]


async def test_audit_rows_cannot_be_changed(stores: Stores) -> None:
    async with transaction(stores.pool, stores.settings) as conn:
        await conn.execute("INSERT INTO miniapp_audit (action, actor) VALUES ('probe', 'ops:test')")
    for statement in ("UPDATE miniapp_audit SET actor = 'x'", "DELETE FROM miniapp_audit"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            async with transaction(stores.pool, stores.settings) as conn:
                await conn.execute(statement)
