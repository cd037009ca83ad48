"""The mini-app registry end to end, against real processes (sandbox SMS gateway and population registry,
the job worker, a two-process API server) and the `tongban` CLI, spoken to over HTTP:

staff creates an organisation -> its admin registers an app -> uploads a version -> submits it -> a reviewer
approves it from the CLI -> grey release to 10% -> release -> the app is in the catalog, on both API
processes (the change reaches the other one through Redis pub/sub)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from miniapps.catalog import grey_bucket
from tests.support.auth import bearer
from tests.support.stack import Stack, running_stack, verified_citizen

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("miniapps"), only=["sms", "population"], workers=2) as running:
        yield running


def catalog_views(stack: Stack, query: str, tries: int = 8) -> list[list[dict[str, Any]]]:
    """The catalog's items for `query`, asked `tries` times on fresh connections (both processes answer)."""
    return [httpx.get(stack.url + "/v1/catalog", params={"q": query}).json()["items"] for _ in range(tries)]


def test_from_organisation_to_catalog(stack: Stack) -> None:
    # Staff: a citizen account given the platform_admin role by ops.
    staff_id, _, staff_token = verified_citizen(stack, "staff-phone", "137")
    granted = stack.cli("staff", "grant", staff_id, "platform_admin")
    assert granted.returncode == 0, granted.stdout + granted.stderr
    admin_id, _, admin_token = verified_citizen(stack, "admin-phone", "137")

    # 1. Staff creates the organisation with its first admin.
    tag = secrets.token_hex(3)
    organisation = httpx.post(
        stack.url + "/v1/staff/organisations",
        json={
            "name": f"鄂尔多斯市医保局 {tag}",
            "kind": "department",
            "region_code": "150600",
            "first_admin": {"account_id": admin_id},
        },
        headers=bearer(staff_token),
    )
    assert organisation.status_code == 201, organisation.text
    organisation_id = organisation.json()["id"]
    # A citizen without the role is refused.
    refused = httpx.post(stack.url + "/v1/staff/organisations", json={}, headers=bearer(admin_token))
    assert refused.status_code == 403 and refused.json()["code"] == "not_staff"

    # 2. The admin registers an app: the AppSecret comes once.
    app_name = f"医保电子凭证 {tag}"
    created = httpx.post(
        stack.url + f"/v1/organisations/{organisation_id}/miniapps",
        json={
            "name": app_name,
            "category": "health",
            "region_code": "150600",
            "description": "医保码、缴费、报销进度",
        },
        headers=bearer(admin_token),
    )
    assert created.status_code == 201, created.text
    appid, secret = created.json()["app"]["appid"], created.json()["appsecret"]
    shown = httpx.get(stack.url + f"/v1/miniapps/{appid}", headers=bearer(admin_token))
    assert shown.status_code == 200 and secret not in shown.text

    # 3. Upload a version: manifest + package, with the package's declared SHA-256.
    package = b"PK\x03\x04" + secrets.token_bytes(100_000)
    uploaded = httpx.post(
        stack.url + f"/v1/miniapps/{appid}/versions",
        data={
            "manifest": json.dumps({"version": "1.0.0", "pages": ["pages/index/index"], "min_level": 2}),
            "sha256": hashlib.sha256(package).hexdigest(),
        },
        files={"package": ("ybpz.zip", package, "application/zip")},
        headers=bearer(admin_token),
    )
    assert uploaded.status_code == 201, uploaded.text
    version_id = uploaded.json()["id"]

    # 4. Submit for review.
    submitted = httpx.post(
        stack.url + f"/v1/miniapps/{appid}/versions/{version_id}/submit", headers=bearer(admin_token)
    )
    assert submitted.status_code == 200 and submitted.json()["state"] == "submitted"

    # 5. A reviewer approves from the CLI.
    queue = stack.cli("miniapps", "review", "list")
    assert queue.returncode == 0 and version_id in queue.stdout, queue.stdout + queue.stderr
    approved = stack.cli("miniapps", "review", "approve", version_id)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert f"version 1.0.0 of {appid} approved" in approved.stdout

    # 6. Grey release to 10%: anonymous callers do not see it yet; a citizen in the first 10 buckets would.
    grey = httpx.post(
        stack.url + f"/v1/miniapps/{appid}/versions/{version_id}/grey",
        json={"percent": 10},
        headers=bearer(admin_token),
    )
    assert grey.status_code == 200 and grey.json()["grey"]["percent"] == 10
    assert all(items == [] for items in catalog_views(stack, tag))
    admin_view = httpx.get(stack.url + "/v1/catalog", params={"q": tag}, headers=bearer(admin_token)).json()
    expected = [(app_name, True)] if grey_bucket(appid, admin_id) < 10 else []
    assert [(item["name"], item["grey"]) for item in admin_view["items"]] == expected

    # 7. Release: in the catalog for everyone, on every API process, within a moment.
    released = httpx.post(
        stack.url + f"/v1/miniapps/{appid}/versions/{version_id}/release", headers=bearer(admin_token)
    )
    assert released.status_code == 200 and released.json()["state"] == "released"
    deadline = time.monotonic() + 5
    while True:
        views = catalog_views(stack, tag)
        if all(
            [(i["appid"], i["version"], i["grey"]) for i in items] == [(appid, "1.0.0", False)]
            for items in views
        ):
            break
        assert time.monotonic() < deadline, f"not in every process's catalog: {views}"
        time.sleep(0.1)
    item = httpx.get(stack.url + f"/v1/catalog/{appid}").json()
    assert (
        item["organisation"]["id"] == organisation_id
        and item["package_sha256"] == hashlib.sha256(package).hexdigest()
    )
    assert item["min_level"] == 2 and item["region_code"] == "150600"

    # The trail of the version, as its organisation reads it.
    trail = httpx.get(
        stack.url + f"/v1/miniapps/{appid}/versions/{version_id}/audit", headers=bearer(admin_token)
    )
    assert [(e["action"], e["actor"].split(":")[0]) for e in trail.json()] == [
        ("upload", "account"),
        ("submit", "account"),
        ("approve", "ops"),
        ("grey", "account"),
        ("release", "account"),
    ]
