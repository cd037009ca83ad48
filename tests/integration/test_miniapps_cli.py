"""`tongban staff` and `tongban miniapps` against the real stores: granting and revoking staff roles, the
review queue approved and rejected from the console (audited as ops), organisations and platform freezes,
and one clear line for every bad input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from uuid import UUID

import pytest
from click.testing import Result
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from api.app import create_app
from core.db import transaction
from core.settings import Settings
from core.stores import Stores
from miniapps import registry
from miniapps.models import Actor
from scripts.cli import app
from scripts.users_cmd import ops_actor
from tests.integration.test_miniapps_support import (
    ApiClient,
    act,
    make_org,
    make_person,
    register_app,
    released_app,
    upload,
)


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def cli(*args: str) -> Result:
    # The command runs its own event loop (asyncio.run), so it goes to a thread off this test's loop.
    return await asyncio.to_thread(CliRunner(env={"COLUMNS": "200"}).invoke, app, list(args))


async def submitted_version(api: ApiClient, stores: Stores) -> tuple[str, str]:
    org = await make_org(api, stores)
    appid = (await register_app(api, org))["app"]["appid"]
    uploaded = await upload(api, org.admin, appid)
    version_id: str = uploaded.json()["id"]
    assert (await act(api, org.admin, appid, version_id, "submit")).status_code == 200
    return appid, version_id


async def version_row(stores: Stores, version_id: str) -> tuple[str, str | None, str | None]:
    async with transaction(stores.pool, stores.settings) as conn:
        row = await conn.fetchrow(
            "SELECT state, reviewed_by, reject_reason FROM miniapp_versions WHERE id = $1", UUID(version_id)
        )
    return row["state"], row["reviewed_by"], row["reject_reason"]


async def test_staff_grant_list_revoke(api: ApiClient, stores: Stores) -> None:
    person = await make_person(stores)
    granted = await cli("staff", "grant", str(person.account_id), "reviewer")
    assert granted.exit_code == 0, granted.output
    assert "is now reviewer" in granted.output
    assert "already was reviewer" in (await cli("staff", "grant", str(person.account_id), "reviewer")).output
    me = await api.get("/v1/staff/me", headers=person.auth)
    assert me.status_code == 200 and me.json()["roles"] == ["reviewer"]
    listed = await cli("staff", "list")
    assert listed.exit_code == 0 and str(person.account_id) in listed.output and ops_actor() in listed.output

    revoked = await cli("staff", "revoke", str(person.account_id), "reviewer")
    assert revoked.exit_code == 0 and "no longer reviewer" in revoked.output
    registry.STAFF_CACHE.clear()  # the API's process cache (the CLI is another "process")
    assert (await api.get("/v1/staff/me", headers=person.auth)).status_code == 403
    not_held = await cli("staff", "revoke", str(person.account_id), "reviewer")
    assert not_held.exit_code == 1 and "is not reviewer" in not_held.output

    bad_role = await cli("staff", "grant", str(person.account_id), "superuser")
    assert (
        bad_role.exit_code == 1
        and "ROLE: one of platform_admin, reviewer, health_authority" in bad_role.output
    )
    bad_id = await cli("staff", "grant", "not-a-uuid", "reviewer")
    assert bad_id.exit_code == 1 and "ACCOUNT_ID" in bad_id.output
    unknown = await cli("staff", "grant", str(uuid.uuid4()), "reviewer")
    assert unknown.exit_code == 1 and "no such account" in unknown.output
    async with transaction(stores.pool, stores.settings) as conn:
        actions = await conn.fetch(
            "SELECT action, actor FROM miniapp_audit WHERE detail->>'account' = $1 ORDER BY id",
            str(person.account_id),
        )
    assert [(row["action"], row["actor"]) for row in actions] == [
        ("staff_granted", ops_actor()),
        ("staff_revoked", ops_actor()),
    ]


async def test_review_list_approve_reject(api: ApiClient, stores: Stores) -> None:
    appid, to_approve = await submitted_version(api, stores)
    _, to_reject = await submitted_version(api, stores)
    queue = await cli("miniapps", "review", "list")
    assert queue.exit_code == 0, queue.output
    assert to_approve in queue.output and to_reject in queue.output and appid in queue.output

    approved = await cli("miniapps", "review", "approve", to_approve)
    assert approved.exit_code == 0, approved.output
    assert f"version 1.0.0 of {appid} approved" in approved.output
    assert await version_row(stores, to_approve) == ("approved", ops_actor(), None)

    no_reason = await cli("miniapps", "review", "reject", to_reject, "--reason", "  ")
    assert no_reason.exit_code == 1 and "--reason" in no_reason.output
    rejected = await cli("miniapps", "review", "reject", to_reject, "--reason", "缺少隐私政策")
    assert rejected.exit_code == 0, rejected.output
    assert await version_row(stores, to_reject) == ("rejected", ops_actor(), "缺少隐私政策")

    twice = await cli("miniapps", "review", "approve", to_approve)
    assert twice.exit_code == 1 and "cannot approve a version in state 'approved'" in twice.output
    unknown = await cli("miniapps", "review", "approve", str(uuid.uuid4()))
    assert unknown.exit_code == 1 and "no such version" in unknown.output
    queue = await cli("miniapps", "review", "list")
    assert to_approve not in queue.output and to_reject not in queue.output
    async with transaction(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            "SELECT action, actor FROM miniapp_audit WHERE version_id = ANY($1::uuid[]) AND action IN ('approve', 'reject')",
            [UUID(to_approve), UUID(to_reject)],
        )
    assert sorted((row["action"], row["actor"]) for row in rows) == [
        ("approve", ops_actor()),
        ("reject", ops_actor()),
    ]


async def test_organisations_and_freezes_from_the_console(api: ApiClient, stores: Stores) -> None:
    admin = await make_person(stores)
    created = await cli(
        "miniapps",
        "orgs",
        "create",
        "--name",
        "乌海市政务服务局",
        "--region",
        "150300",
        "--admin",
        str(admin.account_id),
    )
    assert created.exit_code == 0, created.output
    mine = await api.get("/v1/me/organisations", headers=admin.auth)
    assert [(o["name"], o["role"]) for o in mine.json()] == [("乌海市政务服务局", "admin")]
    assert "乌海市政务服务局" in (await cli("miniapps", "orgs", "list")).output
    bad_region = await cli(
        "miniapps", "orgs", "create", "--name", "某局", "--region", "999999", "--admin", str(admin.account_id)
    )
    assert bad_region.exit_code == 1 and "region_code" in bad_region.output

    org = await make_org(api, stores)
    reviewer = await make_person(stores)
    await registry.grant_staff(stores, reviewer.account_id, "reviewer", Actor.ops("ops:test"))
    appid, _ = await released_app(api, org, reviewer)
    frozen = await cli("miniapps", "freeze", appid, "--reason", "投诉核查")
    assert frozen.exit_code == 0, frozen.output
    assert (await api.get(f"/v1/catalog/{appid}")).status_code == 404
    org_try = await api.post(f"/v1/miniapps/{appid}/unfreeze", headers=org.admin.auth)
    assert org_try.status_code == 403 and org_try.json()["code"] == "frozen_by_platform"
    assert (await cli("miniapps", "unfreeze", appid)).exit_code == 0
    assert (await api.get(f"/v1/catalog/{appid}")).status_code == 200
    again = await cli("miniapps", "unfreeze", appid)
    assert again.exit_code == 1 and "not frozen" in again.output
