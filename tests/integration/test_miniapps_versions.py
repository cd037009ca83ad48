"""Versions over the API (the app in process) with the real PostgreSQL, Redis and blob storage: upload
(manifest errors naming the field, size limit, declared hash), every state transition allowed and refused
with its audit row, grey release that only widens, release / roll-back, review rules."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from core.db import transaction
from core.settings import Settings
from core.stores import Stores
from miniapps.blobs import blob_store_for, package_key
from tests.integration.test_miniapps_support import (
    ApiClient,
    Org,
    Person,
    act,
    add_member,
    approved_version,
    make_org,
    make_person,
    make_staff,
    register_app,
    review,
    sha256_hex,
    upload,
)

PACKAGE_MAX = 64 * 1024


@pytest.fixture(scope="module")
def blob_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("blobs")


@pytest.fixture(scope="module")
def configured(settings: Settings, blob_dir: Path) -> Settings:
    return msgspec.structs.replace(
        settings, miniapp_package_max_bytes=PACKAGE_MAX, miniapp_blob_dir=str(blob_dir)
    )


@pytest.fixture(scope="module")
async def api(configured: Settings) -> AsyncIterator[ApiClient]:
    async with AsyncTestClient(app=create_app(configured)) as client:
        yield client


@dataclass
class Team:
    org: Org
    reviewer: Person
    developer: Person
    operator: Person


@pytest.fixture(scope="module")
async def team(api: ApiClient, stores: Stores) -> Team:
    org = await make_org(api, stores)
    developer, operator = await make_person(stores), await make_person(stores)
    await add_member(api, org, developer, "developer")
    await add_member(api, org, operator, "operator")
    return Team(org, await make_staff(stores, "reviewer"), developer, operator)


async def new_app(api: ApiClient, team: Team) -> str:
    appid: str = (await register_app(api, team.org))["app"]["appid"]
    return appid


async def state_of(stores: Stores, version_id: str) -> str:
    async with transaction(stores.pool, stores.settings) as conn:
        state: str = await conn.fetchval("SELECT state FROM miniapp_versions WHERE id = $1", UUID(version_id))
    return state


async def audit_of(stores: Stores, version_id: str) -> list[tuple[str, str | None, str | None]]:
    async with transaction(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            "SELECT action, from_state, to_state FROM miniapp_audit WHERE version_id = $1 ORDER BY id",
            UUID(version_id),
        )
    return [(row["action"], row["from_state"], row["to_state"]) for row in rows]


# --- upload ------------------------------------------------------------------------------------------------


async def test_upload_stores_the_package_by_its_hash(
    api: ApiClient, stores: Stores, team: Team, configured: Settings
) -> None:
    appid = await new_app(api, team)
    package = b"PK\x03\x04" + secrets.token_bytes(40_000)
    answer = await upload(api, team.developer, appid, package=package, sha256=sha256_hex(package).upper())
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["state"] == "development" and body["version"] == "1.0.0"
    assert body["package_sha256"] == sha256_hex(package) and body["package_size"] == len(package)
    assert body["manifest"]["pages"] == ["pages/index", "pages/detail"] and body["manifest"]["min_level"] == 2
    blobs = blob_store_for(configured)
    assert await blobs.read(package_key(sha256_hex(package))) == package
    assert await audit_of(stores, body["id"]) == [("upload", None, "development")]
    again = await upload(api, team.developer, appid, package=package)
    assert again.status_code == 409 and again.json()["code"] == "version_exists"
    assert again.json()["field"] == "manifest.version"


@pytest.mark.parametrize(
    ("manifest_body", "field"),
    [
        ({"pages": ["pages/index"]}, "manifest.version"),
        ({"version": "1.0", "pages": ["pages/index"]}, "manifest.version"),
        ({"version": "1.0.0", "pages": []}, "manifest.pages"),
        ({"version": "1.0.0", "pages": ["pages/index", 7]}, "manifest.pages[1]"),
        ({"version": "1.0.0", "pages": ["pages/index", "../etc/passwd"]}, "manifest.pages[1]"),
        ({"version": "1.0.0", "pages": ["pages/index"], "min_level": 4}, "manifest.min_level"),
        ({"version": "1.0.0", "pages": ["pages/index"], "window": {}}, "manifest.window"),
        (
            {
                "version": "1.0.0",
                "pages": ["p"],
                "permissions": {"scope.album": {"desc": "选照片"}, "scope.camera": {}},
            },
            "manifest.permissions[scope.camera].desc",
        ),
        (
            {"version": "1.0.0", "pages": ["p"], "permissions": {"scope.spy": {"desc": "x"}}},
            "manifest.permissions[scope.spy]",
        ),
        ("{not json", "manifest"),
        ("[]", "manifest"),
    ],
)
async def test_manifest_errors_name_the_field(
    api: ApiClient, team: Team, manifest_body: dict[str, Any] | str, field: str
) -> None:
    appid = await new_app(api, team)
    answer = await upload(api, team.developer, appid, manifest_body=manifest_body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_manifest"
    assert answer.json()["field"] == field
    assert answer.json()["detail"].startswith(field + ":")


async def test_a_package_over_the_limit_is_413_and_leaves_nothing(
    api: ApiClient, team: Team, blob_dir: Path
) -> None:
    appid = await new_app(api, team)
    exactly = await upload(api, team.developer, appid, package=secrets.token_bytes(PACKAGE_MAX))
    assert exactly.status_code == 201, exactly.text
    too_large = await upload(
        api, team.developer, appid, version="1.0.1", package=secrets.token_bytes(PACKAGE_MAX + 1)
    )
    assert too_large.status_code == 413
    assert too_large.json()["code"] == "package_too_large" and too_large.json()["field"] == "package"
    # Announced far too large: refused before a byte of the body is read.
    huge = await api.post(
        f"/v1/miniapps/{appid}/versions",
        content=b"x",
        headers={
            **team.developer.auth,
            "content-type": "multipart/form-data; boundary=abc",
            "content-length": str(PACKAGE_MAX * 10),
        },
    )
    assert huge.status_code == 413 and huge.json()["code"] == "package_too_large"
    assert list((blob_dir / "tmp").glob("*.part")) == []


async def test_declared_hash_must_match(api: ApiClient, stores: Stores, team: Team) -> None:
    appid = await new_app(api, team)
    package = secrets.token_bytes(1000)
    mismatch = await upload(api, team.developer, appid, package=package, sha256=sha256_hex(package + b"!"))
    assert mismatch.status_code == 422
    assert mismatch.json()["code"] == "package_hash_mismatch" and mismatch.json()["field"] == "sha256"
    malformed = await upload(api, team.developer, appid, package=package, sha256="abc")
    assert malformed.status_code == 422 and malformed.json()["code"] == "invalid_sha256"
    async with transaction(stores.pool, stores.settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM miniapp_versions WHERE appid = $1", appid) == 0


async def test_upload_form_and_who_may_upload(api: ApiClient, stores: Stores, team: Team) -> None:
    appid = await new_app(api, team)
    no_package = await api.post(
        f"/v1/miniapps/{appid}/versions", data={"manifest": '{"version": "1.0.0", "pages": ["p"]}'},
        files={"other": ("x", b"y")}, headers=team.developer.auth,
    )  # fmt: skip
    assert no_package.status_code == 422 and no_package.json()["field"] == "other"
    missing = await api.post(
        f"/v1/miniapps/{appid}/versions",
        files={"manifest": (None, '{"version": "1.0.0", "pages": ["p"]}')},
        headers=team.developer.auth,
    )
    assert missing.status_code == 422 and missing.json()["field"] == "package"
    empty = await upload(api, team.developer, appid, package=b"")
    assert empty.status_code == 422 and empty.json()["field"] == "package"
    not_multipart = await api.post(
        f"/v1/miniapps/{appid}/versions", json={"manifest": {}}, headers=team.developer.auth
    )
    assert not_multipart.status_code == 422 and not_multipart.json()["code"] == "multipart_required"
    operator = await upload(api, team.operator, appid)
    assert operator.status_code == 403 and operator.json()["code"] == "insufficient_org_role"
    outsider = await upload(api, await make_person(stores), appid)
    assert outsider.status_code == 404 and outsider.json()["code"] == "app_not_found"


# --- every transition, allowed and refused -----------------------------------------------------------------

STATES = [
    "development", "trial", "submitted", "approved", "rejected", "grey",
    "released", "superseded", "rolled_back", "offline", "delisted",
]  # fmt: skip
# Written out here, not read from miniapps.versions.RULES: a change to the rules must fail this test.
ALLOWED_FROM = {
    "trial": {"development", "trial"},
    "submit": {"development", "trial"},
    "withdraw": {"submitted"},
    "approve": {"submitted"},
    "reject": {"submitted"},
    "grey": {"approved", "grey"},
    "release": {"approved", "grey", "offline"},
    "rollback": {"released", "grey"},
    "offline": {"released"},
    "delist": {"approved", "grey", "released", "superseded", "offline"},
}
TARGET = {
    "trial": "trial",
    "submit": "submitted",
    "withdraw": "development",
    "approve": "approved",
    "reject": "rejected",
    "grey": "grey",
    "release": "released",
    "rollback": "rolled_back",
    "offline": "offline",
    "delist": "delisted",
}


async def perform(api: ApiClient, team: Team, appid: str, version_id: str, action: str) -> httpx.Response:
    """The action as the API takes it from whoever may do it."""
    if action in ("approve", "reject"):
        return await review(api, team.reviewer, version_id, action, reason="页面无法打开")
    if action == "delist":
        response: httpx.Response = await api.post(
            f"/v1/staff/versions/{version_id}/delist", headers=team.org.staff.auth
        )
        return response
    body: dict[str, Any] | None = None
    if action == "trial":
        body = {"accounts": [str(team.developer.account_id)]}
    elif action == "grey":
        body = {"percent": 10}
    return await act(api, team.org.admin, appid, version_id, action, body)


async def force_state(stores: Stores, version_id: str, state: str) -> None:
    async with transaction(stores.pool, stores.settings) as conn:
        await conn.execute(
            """UPDATE miniapp_versions SET state = $2,
                   grey_percent = CASE WHEN $2 = 'grey' THEN 10 END,
                   superseded_at = CASE WHEN $2 = 'superseded' THEN now() END
               WHERE id = $1""",
            UUID(version_id),
            state,
        )


@pytest.mark.parametrize("action", list(ALLOWED_FROM))
@pytest.mark.parametrize("state", STATES)
async def test_transition(api: ApiClient, stores: Stores, team: Team, state: str, action: str) -> None:
    appid = await new_app(api, team)
    if action == "rollback" and state == "released":
        # A roll-back of a released version needs one released before it.
        earlier = await upload(api, team.developer, appid, version="0.9.0")
        await force_state(stores, earlier.json()["id"], "superseded")
    uploaded = await upload(api, team.developer, appid)
    assert uploaded.status_code == 201, uploaded.text
    version_id = uploaded.json()["id"]
    await force_state(stores, version_id, state)
    before = await audit_of(stores, version_id)

    answer = await perform(api, team, appid, version_id, action)

    if state in ALLOWED_FROM[action]:
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == TARGET[action]
        assert await state_of(stores, version_id) == TARGET[action]
        assert (await audit_of(stores, version_id))[len(before) :] == [(action, state, TARGET[action])]
    else:
        assert answer.status_code == 409, answer.text
        assert answer.json()["code"] == "illegal_transition"
        assert state in answer.json()["detail"]
        assert await state_of(stores, version_id) == state
        assert await audit_of(stores, version_id) == before


# --- the rules around the transitions ----------------------------------------------------------------------


async def test_release_supersedes_and_rollback_restores(api: ApiClient, stores: Stores, team: Team) -> None:
    org = team.org
    appid = await new_app(api, team)
    first = await approved_version(api, org, team.reviewer, appid, "1.0.0")
    released = await act(api, org.admin, appid, first, "release")
    assert released.status_code == 200 and released.json()["released_at"] is not None
    nothing_before = await act(api, org.admin, appid, first, "rollback")
    assert nothing_before.status_code == 409 and nothing_before.json()["code"] == "no_previous_release"

    second = await approved_version(api, org, team.reviewer, appid, "1.1.0")
    assert (await act(api, org.admin, appid, second, "release")).status_code == 200
    assert await state_of(stores, first) == "superseded"
    assert (await audit_of(stores, first))[-1] == ("supersede", "released", "superseded")

    rolled = await act(api, team.operator, appid, second, "rollback")
    assert rolled.status_code == 200 and rolled.json()["state"] == "rolled_back"
    assert await state_of(stores, first) == "released"
    assert (await audit_of(stores, first))[-1] == ("restore", "superseded", "released")
    # One step only: rolling back 1.0.0 now has nothing left before it.
    again = await act(api, org.admin, appid, first, "rollback")
    assert again.status_code == 409 and again.json()["code"] == "no_previous_release"

    listed = await api.get(f"/v1/miniapps/{appid}/versions", headers=team.developer.auth)
    assert [(v["version"], v["state"]) for v in listed.json()] == [
        ("1.1.0", "rolled_back"),
        ("1.0.0", "released"),
    ]
    trail = await api.get(f"/v1/miniapps/{appid}/versions/{second}/audit", headers=team.developer.auth)
    assert [entry["action"] for entry in trail.json()] == [
        "upload",
        "submit",
        "approve",
        "release",
        "rollback",
    ]


async def test_grey_release_only_widens(api: ApiClient, stores: Stores, team: Team) -> None:
    org = team.org
    appid = await new_app(api, team)
    version_id = await approved_version(api, org, team.reviewer, appid)
    first_account, second_account = str(team.developer.account_id), str(team.operator.account_id)
    grey = await act(
        api,
        org.admin,
        appid,
        version_id,
        "grey",
        {"percent": 10, "accounts": [first_account], "regions": ["150102"]},
    )
    assert grey.status_code == 200, grey.text
    assert grey.json()["grey"] == {"percent": 10, "accounts": [first_account], "regions": ["150102"]}
    widened = await act(
        api,
        team.operator,
        appid,
        version_id,
        "grey",
        {"percent": 30, "accounts": [first_account, second_account], "regions": ["150102", "150200"]},
    )
    assert widened.status_code == 200 and widened.json()["grey"]["percent"] == 30
    for body, field in (
        (
            {"percent": 20, "accounts": [first_account, second_account], "regions": ["150102", "150200"]},
            "percent",
        ),
        ({"percent": 40, "accounts": [second_account], "regions": ["150102", "150200"]}, "accounts"),
        ({"percent": 40, "accounts": [first_account, second_account], "regions": ["150102"]}, "regions"),
    ):
        narrowed = await act(api, org.admin, appid, version_id, "grey", body)
        assert narrowed.status_code == 409 and narrowed.json()["code"] == "grey_only_widens"
        assert narrowed.json()["field"] == field
    bad_region = await act(api, org.admin, appid, version_id, "grey", {"percent": 50, "regions": ["990000"]})
    assert bad_region.status_code == 422 and bad_region.json()["field"] == "regions[0]"
    too_much = await act(api, org.admin, appid, version_id, "grey", {"percent": 101})
    assert too_much.status_code == 400 and too_much.json()["field"] == "percent"
    async with transaction(stores.pool, stores.settings) as conn:
        percent = await conn.fetchval(
            "SELECT grey_percent FROM miniapp_versions WHERE id = $1", UUID(version_id)
        )
    assert percent == 30
    assert [a for a, _, _ in await audit_of(stores, version_id)][-2:] == ["grey", "grey"]


async def test_one_grey_release_at_a_time(api: ApiClient, team: Team) -> None:
    org = team.org
    appid = await new_app(api, team)
    first = await approved_version(api, org, team.reviewer, appid, "1.0.0")
    second = await approved_version(api, org, team.reviewer, appid, "1.1.0")
    assert (await act(api, org.admin, appid, first, "grey", {"percent": 5})).status_code == 200
    busy = await act(api, org.admin, appid, second, "grey", {"percent": 5})
    assert busy.status_code == 409 and busy.json()["code"] == "grey_in_progress"
    busy = await act(api, org.admin, appid, second, "release")
    assert busy.status_code == 409 and busy.json()["code"] == "grey_in_progress"
    # Stopping the grey release frees the way.
    assert (await act(api, org.admin, appid, first, "rollback")).json()["state"] == "rolled_back"
    assert (await act(api, org.admin, appid, second, "release")).json()["state"] == "released"


async def test_roles_in_the_state_machine(api: ApiClient, stores: Stores, team: Team) -> None:
    org = team.org
    appid = await new_app(api, team)
    version_id = (await upload(api, team.developer, appid)).json()["id"]
    refused = await act(api, team.operator, appid, version_id, "submit")
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_org_role"
    assert (await act(api, team.developer, appid, version_id, "submit")).status_code == 200
    # Citizens do not review; members never see the staff routes.
    assert (await review(api, team.developer, version_id, "approve")).status_code == 403
    approved = await review(api, team.reviewer, version_id, "approve")
    assert approved.json()["reviewed_by"] == f"account:{team.reviewer.account_id}"
    refused = await act(api, team.developer, appid, version_id, "release")
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_org_role"
    # The version must belong to the app in the path.
    other = await new_app(api, team)
    wrong_app = await act(api, org.admin, other, version_id, "release")
    assert wrong_app.status_code == 404 and wrong_app.json()["code"] == "version_not_found"
    assert (await act(api, team.operator, appid, version_id, "release")).status_code == 200


async def test_reviewers_do_not_review_their_own_organisation(
    api: ApiClient, stores: Stores, team: Team
) -> None:
    insider = await make_staff(stores, "reviewer")
    await add_member(api, team.org, insider, "developer")
    appid = await new_app(api, team)
    version_id = (await upload(api, team.developer, appid)).json()["id"]
    await act(api, team.developer, appid, version_id, "submit")
    refused = await review(api, insider, version_id, "approve")
    assert refused.status_code == 403 and refused.json()["code"] == "conflict_of_interest"
    assert await state_of(stores, version_id) == "submitted"


async def test_reject_says_why_and_the_queue_shows_submitted(
    api: ApiClient, stores: Stores, team: Team
) -> None:
    appid = await new_app(api, team)
    version_id = (await upload(api, team.developer, appid)).json()["id"]
    await act(api, team.developer, appid, version_id, "submit")
    queue = await api.get("/v1/staff/reviews", headers=team.reviewer.auth)
    assert version_id in [item["version_id"] for item in queue.json()]
    no_reason = await review(api, team.reviewer, version_id, "reject", reason=" ")
    assert no_reason.status_code == 422 and no_reason.json()["field"] == "reason"
    rejected = await review(api, team.reviewer, version_id, "reject", reason="隐私政策缺失")
    assert rejected.status_code == 200 and rejected.json()["reject_reason"] == "隐私政策缺失"
    queue = await api.get("/v1/staff/reviews", headers=team.reviewer.auth)
    assert version_id not in [item["version_id"] for item in queue.json()]
    async with transaction(stores.pool, stores.settings) as conn:
        detail = await conn.fetchval(
            "SELECT detail->>'reason' FROM miniapp_audit WHERE version_id = $1 AND action = 'reject'",
            UUID(version_id),
        )
    assert detail == "隐私政策缺失"
