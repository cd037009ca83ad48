"""Versions of a mini-app: upload (manifest + package), the review and release state machine, grey release.

    development --trial--> trial --submit--> submitted --approve--> approved --grey--> grey --release--> released
         \\--------------submit-------------/     |  \\--reject--> rejected         \\--release----------/
                        <--withdraw-------------/

    released --rollback--> rolled_back (the version released before it is released again)
    grey --rollback--> rolled_back (the grey release stops; the released version stays)
    released --offline--> offline --release--> released
    approved | grey | released | superseded | offline --delist--> delisted (the platform)

Releasing a version moves the one released before it to `superseded` (what a roll-back restores). An app has
at most one released and one grey version. Anything else is refused with 409 `illegal_transition`; every
transition, allowed ones and automatic ones (supersede, restore), is written to miniapp_audit.

Who: members with DEVELOP roles upload, trial, submit and withdraw; OPERATE roles grey, release, roll back
and take offline; staff reviewers approve and reject (never for their own organisation's apps); staff
delist. The grey bucket of a citizen is catalog.grey_bucket(appid, account_id).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args
from uuid import UUID

import asyncpg
import msgspec
import structlog

from core import clock, ids
from core.db import connection, transaction
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.stores import Stores
from miniapps import catalog, repository
from miniapps.blobs import BlobStore, StagedBlob, blob_store_for, package_key
from miniapps.catalog import grey_bucket
from miniapps.models import (
    DEVELOP,
    OPERATE,
    READ,
    Actor,
    AuditEntry,
    GreyRelease,
    GreyView,
    IllegalTransition,
    Manifest,
    PackageTooLarge,
    ReviewItem,
    Scope,
    ScopeUse,
    StartTrial,
    VersionView,
)
from miniapps.registry import app_for_member, audit_entry, check_reason, check_region

__all__ = ["RULES", "grey_bucket"]

log = structlog.get_logger(__name__)

MANIFEST_MAX_BYTES = 64 * 1024
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY_RE = re.compile(r"at `key` in `\$\.?([^`]*)`")
_MISSING_RE = re.compile(r"missing required field `([^`]+)`")
# The unknown name is the sender's and may itself hold backticks: take everything up to the closing one.
_UNKNOWN_RE = re.compile(r"unknown field `(.+?)`(?= - at `|$)")

Who = Literal["develop", "operate", "review", "platform"]


@dataclass(frozen=True, slots=True)
class Rule:
    sources: frozenset[str]
    target: str
    who: Who
    # Whether the catalog may show something else afterwards.
    publishes: bool = False


RULES: dict[str, Rule] = {
    "trial": Rule(frozenset({"development", "trial"}), "trial", "develop"),
    "submit": Rule(frozenset({"development", "trial"}), "submitted", "develop"),
    "withdraw": Rule(frozenset({"submitted"}), "development", "develop"),
    "approve": Rule(frozenset({"submitted"}), "approved", "review"),
    "reject": Rule(frozenset({"submitted"}), "rejected", "review"),
    "grey": Rule(frozenset({"approved", "grey"}), "grey", "operate", publishes=True),
    "release": Rule(frozenset({"approved", "grey", "offline"}), "released", "operate", publishes=True),
    "rollback": Rule(frozenset({"released", "grey"}), "rolled_back", "operate", publishes=True),
    "offline": Rule(frozenset({"released"}), "offline", "operate", publishes=True),
    "delist": Rule(
        frozenset({"approved", "grey", "released", "superseded", "offline"}),
        "delisted",
        "platform",
        publishes=True,
    ),
}


# --- manifest and package ----------------------------------------------------------------------------------


def _bad_permission(raw: bytes, *, key_only: bool) -> str | None:
    """The first key of `permissions` that is not a known scope (key_only) or whose value is wrong:
    msgspec reports dict entries as `[...]`, and the field should name the entry."""
    try:
        permissions = msgspec.json.decode(raw).get("permissions")
    except (msgspec.DecodeError, AttributeError):
        return None
    if not isinstance(permissions, dict):
        return None
    for key, value in permissions.items():
        if key not in get_args(Scope):
            return str(key)
        if not key_only:
            try:
                msgspec.convert(value, ScopeUse)
            except msgspec.ValidationError:
                return str(key)
    return None


def _manifest_field(message: str, raw: bytes) -> str:
    """'manifest.pages[0]' from msgspec's "... - at `$.pages[0]`", with the missing or unknown field's name
    and the permission's key (manifest.permissions[scope.camera].desc)."""
    key_error = _KEY_RE.search(message)
    path_match = key_error or _PATH_RE.search(message)
    path = path_match.group(1) if path_match else ""
    if key_error or path.startswith("permissions[...]"):
        bad = _bad_permission(raw, key_only=key_error is not None)
        if bad is not None:
            path = f"permissions[{bad}]" + path.removeprefix("permissions").removeprefix("[...]")
    named = _MISSING_RE.search(message) or _UNKNOWN_RE.search(message)
    if named:
        # A name that is not a plain identifier ("a.b", "x[0]") goes in brackets so the path stays readable.
        name = named.group(1)
        part = f".{name}" if _IDENTIFIER_RE.match(name) else f"[{name}]"
        path = f"{path}{part}" if path else part.removeprefix(".")
    if not path:
        return "manifest"
    return "manifest" + ("" if path.startswith("[") else ".") + path


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest, or 422 invalid_manifest whose `field` names the offending part (manifest.pages[2])."""
    if len(raw) > MANIFEST_MAX_BYTES:
        raise InvalidInput(
            f"manifest: at most {MANIFEST_MAX_BYTES} bytes", field="manifest", code="invalid_manifest"
        )
    try:
        return msgspec.json.decode(raw, type=Manifest)
    except msgspec.ValidationError as exc:
        field = _manifest_field(str(exc), raw)
        reason = str(exc).split(" - at ")[0]
        if "matching regex" in reason:  # a regex says little to a developer: say what is expected
            reason = (
                "expected MAJOR.MINOR.PATCH, e.g. 1.2.0"
                if field == "manifest.version"
                else ("expected a page path such as pages/index/index")
            )
        raise InvalidInput(f"{field}: {reason}", field=field, code="invalid_manifest") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(
            f"manifest: not valid JSON ({exc})", field="manifest", code="invalid_manifest"
        ) from None


def check_sha256(declared: str) -> str:
    value = declared.strip().lower()
    if not _SHA256_RE.match(value):
        raise InvalidInput("sha256: 64 hexadecimal characters", field="sha256", code="invalid_sha256")
    return value


@dataclass(frozen=True, slots=True)
class ReceivedPackage:
    sha256: str
    size: int
    staged: StagedBlob


class PackageReceiver:
    """Takes a package in chunks as it arrives: counts, hashes and stages it, and stops at max_bytes with
    413 package_too_large (the staged bytes are discarded)."""

    def __init__(self, blobs: BlobStore, max_bytes: int) -> None:
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._size = 0
        self._staged = blobs.stage()

    async def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max:
            await self._staged.discard()
            raise PackageTooLarge(f"package: larger than {self._max} bytes", field="package")
        self._hash.update(chunk)
        await self._staged.write(chunk)

    def finish(self) -> ReceivedPackage:
        return ReceivedPackage(sha256=self._hash.hexdigest(), size=self._size, staged=self._staged)

    async def discard(self) -> None:
        await self._staged.discard()


def receiver_for(stores: Stores) -> PackageReceiver:
    return PackageReceiver(blob_store_for(stores.settings), stores.settings.miniapp_package_max_bytes)


# --- views -------------------------------------------------------------------------------------------------


def version_view(row: asyncpg.Record) -> VersionView:
    grey = None
    if row["grey_percent"] is not None:
        grey = GreyView(
            percent=row["grey_percent"],
            accounts=list(row["grey_accounts"]),
            regions=list(row["grey_regions"]),
        )
    return VersionView(
        id=row["id"],
        appid=row["appid"],
        version=row["version"],
        state=row["state"],
        manifest=msgspec.json.decode(row["manifest"]),
        package_sha256=row["package_sha256"],
        package_size=row["package_size"],
        trial_accounts=list(row["trial_accounts"]),
        reject_reason=row["reject_reason"],
        grey=grey,
        uploaded_by=row["uploaded_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        submitted_at=row["submitted_at"],
        reviewed_at=row["reviewed_at"],
        reviewed_by=row["reviewed_by"],
        released_at=row["released_at"],
    )


def _version_not_found() -> NotFound:
    return NotFound("no such version of this mini-app", code="version_not_found")


# --- upload ------------------------------------------------------------------------------------------------


async def check_can_upload(stores: Stores, account_id: UUID, appid: str) -> None:
    """Asked before the package is read: 404 / 403 cost the client no upload."""
    async with connection(stores.pool, stores.settings) as conn:
        await app_for_member(conn, appid, account_id, DEVELOP)


async def create_version(
    stores: Stores,
    actor: Actor,
    appid: str,
    *,
    manifest: bytes | None,
    package: ReceivedPackage | None,
    declared_sha256: str | None,
) -> VersionView:
    """A new version in `development` from a manifest and a received package. The staged package is
    committed to blob storage under its SHA-256 when everything checks, and discarded otherwise."""
    assert actor.account_id is not None
    try:
        if manifest is None:
            raise InvalidInput(
                "manifest: required (a JSON form field)", field="manifest", code="invalid_manifest"
            )
        parsed = parse_manifest(manifest)
        if package is None:
            raise InvalidInput("package: required (a file form field)", field="package")
        if package.size == 0:
            raise InvalidInput("package: empty", field="package")
        if declared_sha256 is not None and check_sha256(declared_sha256) != package.sha256:
            raise InvalidInput(
                "sha256: the package received does not have the declared SHA-256",
                field="sha256",
                code="package_hash_mismatch",
            )
        key = package_key(package.sha256)
        async with transaction(stores.pool, stores.settings) as conn:
            app = await app_for_member(conn, appid, actor.account_id, DEVELOP, for_update=True)
            if await repository.version_exists(conn, appid, parsed.version):
                raise Conflict(
                    f"version {parsed.version} of this app exists",
                    field="manifest.version",
                    code="version_exists",
                )
            # Committed before the row: a row never names a missing blob. A failed insert leaves an
            # unreferenced, content-addressed blob behind, which is harmless.
            await package.staged.commit(key)
            row = await repository.insert_version(
                conn,
                version_id=ids.new_id(),
                appid=appid,
                version=parsed.version,
                manifest=msgspec.to_builtins(parsed),
                package_sha256=package.sha256,
                package_size=package.size,
                package_key=key,
                uploaded_by=actor.account_id,
            )
            if row is None:
                raise Conflict(
                    f"version {parsed.version} of this app exists",
                    field="manifest.version",
                    code="version_exists",
                )
            await repository.add_audit(
                conn,
                action="upload",
                actor=actor,
                organisation_id=app["organisation_id"],
                appid=appid,
                version_id=row["id"],
                to_state="development",
                detail={"version": parsed.version, "sha256": package.sha256, "size": package.size},
            )
    except BaseException:
        if package is not None:
            await package.staged.discard()
        raise
    log.info("miniapps.version_uploaded", appid=appid, version=parsed.version, size=package.size)
    return version_view(row)


async def list_versions(stores: Stores, account_id: UUID, appid: str) -> list[VersionView]:
    async with connection(stores.pool, stores.settings) as conn:
        await app_for_member(conn, appid, account_id, READ)
        return [version_view(row) for row in await repository.versions_of_app(conn, appid)]


async def get_version(stores: Stores, account_id: UUID, appid: str, version_id: UUID) -> VersionView:
    async with connection(stores.pool, stores.settings) as conn:
        await app_for_member(conn, appid, account_id, READ)
        row = await repository.version_by_id(conn, version_id)
    if row is None or row["appid"] != appid:
        raise _version_not_found()
    return version_view(row)


async def version_audit(stores: Stores, account_id: UUID, appid: str, version_id: UUID) -> list[AuditEntry]:
    async with connection(stores.pool, stores.settings) as conn:
        await app_for_member(conn, appid, account_id, READ)
        row = await repository.version_by_id(conn, version_id)
        if row is None or row["appid"] != appid:
            raise _version_not_found()
        return [audit_entry(entry) for entry in await repository.audit_of_version(conn, version_id)]


# --- transitions -------------------------------------------------------------------------------------------


def _check_grey(request: GreyRelease) -> tuple[int, list[UUID], list[str]]:
    for index, region in enumerate(request.regions):
        check_region(region, f"regions[{index}]")
    return request.percent, sorted(set(request.accounts)), sorted(set(request.regions))


def _only_widens(row: asyncpg.Record, percent: int, accounts: list[UUID], regions: list[str]) -> None:
    if percent < (row["grey_percent"] or 0):
        raise Conflict(
            f"percent: a grey release only widens (now {row['grey_percent']}%)",
            field="percent",
            code="grey_only_widens",
        )
    if not set(row["grey_accounts"]) <= set(accounts):
        raise Conflict(
            "accounts: a grey release only widens (keep every listed account)",
            field="accounts",
            code="grey_only_widens",
        )
    if not set(row["grey_regions"]) <= set(regions):
        raise Conflict(
            "regions: a grey release only widens (keep every listed region)",
            field="regions",
            code="grey_only_widens",
        )


async def _authorise(
    conn: asyncpg.Connection, actor: Actor, rule: Rule, app: asyncpg.Record, appid: str | None
) -> None:
    """Members for develop/operate (through the app in the path); reviewers never review their own
    organisation's apps. Staff roles themselves are checked by the route guard (or the actor is ops)."""
    if rule.who in ("develop", "operate"):
        if actor.account_id is None or appid is None or appid != app["appid"]:
            raise _version_not_found()
        await app_for_member(conn, appid, actor.account_id, DEVELOP if rule.who == "develop" else OPERATE)
    elif (
        rule.who == "review"
        and actor.account_id is not None
        and await repository.member_role(conn, app["organisation_id"], actor.account_id) is not None
    ):
        raise Forbidden("reviewers do not review their own organisation's apps", code="conflict_of_interest")


async def _audit(
    conn: asyncpg.Connection,
    actor: Actor,
    action: str,
    app: asyncpg.Record,
    row: asyncpg.Record,
    to_state: str,
    detail: dict[str, Any] | None = None,
) -> None:
    await repository.add_audit(
        conn,
        action=action,
        actor=actor,
        organisation_id=app["organisation_id"],
        appid=app["appid"],
        version_id=row["id"],
        from_state=row["state"],
        to_state=to_state,
        detail={"version": row["version"], **(detail or {})},
    )


async def transition(
    stores: Stores,
    actor: Actor,
    version_id: UUID,
    action: str,
    *,
    appid: str | None = None,
    trial: StartTrial | None = None,
    grey: GreyRelease | None = None,
    reason: str | None = None,
) -> VersionView:
    """Apply `action` to the version (one transaction, the app row locked so that one app's transitions
    queue up). `appid` is the app of the path for member actions; staff actions pass none."""
    rule = RULES.get(action)
    if rule is None:
        raise InvalidInput(f"action: one of {', '.join(RULES)}", field="action")
    grey_config = _check_grey(grey) if grey is not None else None
    if action == "grey" and grey_config is None:
        raise InvalidInput("percent: required for a grey release", field="percent")
    if action == "reject":
        reason = check_reason(reason)
    if action == "trial" and trial is None:
        raise InvalidInput("accounts: name the trial users", field="accounts")
    now = clock.now()
    async with transaction(stores.pool, stores.settings) as conn:
        found = await repository.version_by_id(conn, version_id)
        if found is None or (appid is not None and found["appid"] != appid):
            raise _version_not_found()
        app = await repository.app_by_id(conn, found["appid"], for_update=True)
        row = await repository.version_by_id(conn, version_id, for_update=True)
        assert app is not None and row is not None
        await _authorise(conn, actor, rule, app, appid)
        state = row["state"]
        if state not in rule.sources:
            raise IllegalTransition(
                f"cannot {action} a version in state {state!r} (only from {', '.join(sorted(rule.sources))})"
            )
        detail: dict[str, Any] = {}
        columns: dict[str, Any] = {}
        if action == "trial":
            assert trial is not None
            columns["trial_accounts"] = sorted(set(trial.accounts))
            detail["trial_accounts"] = len(columns["trial_accounts"])
        elif action == "submit":
            columns.update(submitted_at=now, reject_reason=None)
        elif action == "withdraw":
            columns["submitted_at"] = None
        elif action in ("approve", "reject"):
            columns.update(reviewed_at=now, reviewed_by=actor.label)
            if action == "reject":
                columns["reject_reason"] = detail["reason"] = (reason or "").strip()
        elif action == "grey":
            assert grey_config is not None
            percent, accounts, regions = grey_config
            other = await repository.version_in_state(conn, app["appid"], "grey")
            if other is not None and other["id"] != row["id"]:
                raise Conflict(
                    f"version {other['version']} is in grey release: release or roll it back first",
                    code="grey_in_progress",
                )
            if state == "grey":
                _only_widens(row, percent, accounts, regions)
            columns.update(grey_percent=percent, grey_accounts=accounts, grey_regions=regions)
            detail.update(percent=percent, accounts=len(accounts), regions=regions)
        elif action == "release":
            other = await repository.version_in_state(conn, app["appid"], "grey")
            if other is not None and other["id"] != row["id"]:
                raise Conflict(
                    f"version {other['version']} is in grey release: release or roll it back first",
                    code="grey_in_progress",
                )
            current = await repository.version_in_state(conn, app["appid"], "released")
            if current is not None:
                await _audit(conn, actor, "supersede", app, current, "superseded", {"by": row["version"]})
                await repository.set_version_state(conn, current["id"], "superseded", superseded_at=now)
            columns["released_at"] = now
        restored = None
        if action == "rollback" and state == "released":
            restored = await repository.latest_superseded(conn, app["appid"])
            if restored is None:
                raise Conflict(
                    "there is no earlier released version to roll back to (take it offline instead)",
                    code="no_previous_release",
                )
            detail["restored"] = restored["version"]
        await _audit(conn, actor, action, app, row, rule.target, detail)
        updated = await repository.set_version_state(conn, row["id"], rule.target, **columns)
        if restored is not None:
            # After the roll-back's own update: at most one released version at any moment.
            await _audit(conn, actor, "restore", app, restored, "released", {"after": row["version"]})
            await repository.set_version_state(
                conn, restored["id"], "released", released_at=now, superseded_at=None
            )
        generation = await repository.bump_catalog_generation(conn) if rule.publishes else None
    if generation is not None:
        await catalog.published(stores, generation)
    log.info("miniapps.version_transition", appid=app["appid"], action=action, to=rule.target)
    return version_view(updated)


async def review_queue(stores: Stores, limit: int = 100) -> list[ReviewItem]:
    """Submitted versions waiting for a reviewer, oldest first."""
    async with connection(stores.pool, stores.settings) as conn:
        rows = await repository.review_queue(conn, limit)
    return [
        ReviewItem(
            version_id=row["id"],
            appid=row["appid"],
            app_name=row["app_name"],
            organisation_id=row["organisation_id"],
            organisation_name=row["organisation_name"],
            version=row["version"],
            package_sha256=row["package_sha256"],
            package_size=row["package_size"],
            manifest=msgspec.json.decode(row["manifest"]),
            submitted_at=row["submitted_at"],
        )
        for row in rows
    ]
