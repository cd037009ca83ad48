"""Who is who on the mini-app platform, and the apps they own.

- Staff: accounts with platform roles (platform_admin, reviewer, health_authority), granted and revoked by
  ops (`tongban staff`). API processes cache an account's roles for `staff_cache_seconds`.
- Organisations (departments, utilities, hospitals): created by a platform_admin with a first admin; its
  admins add members (real-name verified accounts, L2+) as admin, developer or operator.
- Apps: appid "tb" + 16 hex; an AppSecret of 32 hex shown once (at creation and reset) and stored as
  HMAC-SHA256(key=appid, secret); IP allowlist; freeze (by the organisation's admins or by the platform, and
  only the platform lifts a platform freeze).

Anything of an organisation or app the caller is not a member of answers 404, as if it did not exist.

For the SDK endpoints: sdk_app(stores, appid) -> SdkApp, secret_matches(app, secret), ip_allowed(app, ip).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from typing import Literal
from uuid import UUID

import asyncpg
import msgspec
import structlog
from msgspec import UNSET

from auth import rights
from auth.phone import normalize_mobile
from core import ids
from core.db import connection, transaction
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.stores import Stores
from miniapps import catalog, repository
from miniapps.models import (
    EDIT_APPS,
    GUARD_APPS,
    MANAGE_MEMBERS,
    READ,
    STAFF_ROLES,
    Actor,
    AddMember,
    AppCreated,
    AppView,
    AuditEntry,
    CreateApp,
    CreateOrganisation,
    MemberRef,
    MemberView,
    OrganisationView,
    SdkApp,
    SecretReset,
    SetAllowlist,
    StaffMember,
    UpdateApp,
)

log = structlog.get_logger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- staff -------------------------------------------------------------------------------------------------


class _StaffCache:
    """account id -> (valid until, roles), per process."""

    def __init__(self) -> None:
        self._items: dict[UUID, tuple[float, frozenset[str]]] = {}

    def get(self, account_id: UUID) -> frozenset[str] | None:
        item = self._items.get(account_id)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, account_id: UUID, roles: frozenset[str], seconds: float) -> None:
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[account_id] = (time.monotonic() + seconds, roles)

    def forget(self, account_id: UUID) -> None:
        self._items.pop(account_id, None)

    def clear(self) -> None:
        self._items.clear()


STAFF_CACHE = _StaffCache()


def _check_staff_role(role: str) -> str:
    if role not in STAFF_ROLES:
        raise InvalidInput(f"role: one of {', '.join(STAFF_ROLES)}", field="role", code="invalid_role")
    return role


async def staff_roles(stores: Stores, account_id: UUID) -> frozenset[str]:
    """The account's platform roles (empty for a citizen), cached in this process for a few seconds."""
    roles = STAFF_CACHE.get(account_id)
    if roles is None:
        async with connection(stores.pool, stores.settings) as conn:
            roles = frozenset(await repository.staff_roles_of(conn, account_id))
        STAFF_CACHE.put(account_id, roles, stores.settings.staff_cache_seconds)
    return roles


async def grant_staff(stores: Stores, account_id: UUID, role: str, actor: Actor) -> bool:
    """Give the account a platform role; False when it had it already. 404 for an unknown account."""
    _check_staff_role(role)
    async with transaction(stores.pool, stores.settings) as conn:
        try:
            granted = await repository.insert_staff_role(conn, account_id, role, actor.label)
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("no such account", code="account_not_found") from None
        if granted:
            await repository.add_audit(
                conn, action="staff_granted", actor=actor, detail={"account": str(account_id), "role": role}
            )
    STAFF_CACHE.forget(account_id)
    return granted


async def revoke_staff(stores: Stores, account_id: UUID, role: str, actor: Actor) -> bool:
    """Take a platform role away; False when the account did not have it. Other processes see it within
    staff_cache_seconds."""
    _check_staff_role(role)
    async with transaction(stores.pool, stores.settings) as conn:
        revoked = await repository.delete_staff_role(conn, account_id, role)
        if revoked:
            await repository.add_audit(
                conn, action="staff_revoked", actor=actor, detail={"account": str(account_id), "role": role}
            )
    STAFF_CACHE.forget(account_id)
    return revoked


async def list_staff(stores: Stores) -> list[StaffMember]:
    async with connection(stores.pool, stores.settings) as conn:
        rows = await repository.list_staff(conn)
    return [
        StaffMember(
            account_id=row["account_id"],
            role=row["role"],
            granted_by=row["granted_by"],
            granted_at=row["granted_at"],
        )
        for row in rows
    ]


# --- checks shared by organisations and apps ---------------------------------------------------------------


def check_reason(reason: str | None, field: str = "reason") -> str:
    text = (reason or "").strip()
    if not text or len(text) > 500:
        raise InvalidInput(f"{field}: 1 to 500 characters", field=field)
    return text


def check_region(code: str, field: str) -> str:
    """A current GB/T 2260 code (province, city or county), else 422 invalid_region on `field`."""
    if not catalog.region_known(code):
        raise InvalidInput(f"{field}: not a GB/T 2260 region code in use", field=field, code="invalid_region")
    return code


async def resolve_member(stores: Stores, ref: MemberRef, field: str) -> UUID:
    """The id of an active, real-name verified (L2+) account named by id or phone."""
    if (ref.account_id is None) == (ref.phone is None):
        raise InvalidInput(f"{field}: give exactly one of account_id or phone", field=field)
    if ref.phone is not None:
        phone = normalize_mobile(ref.phone, field=f"{field}.phone")
        summary = await rights.find_account(stores, phone=phone)
    else:
        summary = await rights.find_account(stores, account_id=ref.account_id)
    if summary is None or summary.status != "active":
        raise NotFound(f"{field}: no such active account", field=field, code="account_not_found")
    if summary.level < 2:
        raise Conflict(
            f"{field}: members must have verified their real name (L2)",
            field=field,
            code="member_not_verified",
        )
    return summary.id


def _organisation_view(row: asyncpg.Record, role: str | None = None) -> OrganisationView:
    return OrganisationView(
        id=row["id"],
        name=row["name"],
        kind=row["kind"],
        region_code=row["region_code"],
        created_at=row["created_at"],
        role=role,  # type: ignore[arg-type]
    )


def _member_view(row: asyncpg.Record) -> MemberView:
    return MemberView(
        account_id=row["account_id"],
        role=row["role"],
        granted_by=row["granted_by"],
        granted_at=row["granted_at"],
    )


def _organisation_not_found() -> NotFound:
    return NotFound("no such organisation among yours", code="organisation_not_found")


def _app_not_found() -> NotFound:
    return NotFound("no such mini-app among yours", code="app_not_found")


async def require_role(
    conn: asyncpg.Connection,
    organisation_id: UUID,
    account_id: UUID,
    allowed: frozenset[str],
    *,
    lock: bool = False,
) -> str:
    """The account's role in the organisation when it is one of `allowed`: 404 for non-members, 403
    insufficient_org_role for members with another role."""
    role = await repository.member_role(conn, organisation_id, account_id, lock=lock)
    if role is None:
        raise _organisation_not_found()
    if role not in allowed:
        raise Forbidden(
            f"this needs the role {' or '.join(sorted(allowed))} in the organisation (yours: {role})",
            code="insufficient_org_role",
        )
    return role


async def app_for_member(
    conn: asyncpg.Connection,
    appid: str,
    account_id: UUID,
    allowed: frozenset[str],
    *,
    for_update: bool = False,
) -> asyncpg.Record:
    """The app, when the account is a member of its organisation with one of `allowed` roles."""
    app = await repository.app_by_id(conn, appid, for_update=for_update)
    if app is None:
        raise _app_not_found()
    role = await repository.member_role(conn, app["organisation_id"], account_id)
    if role is None:
        raise _app_not_found()
    if role not in allowed:
        raise Forbidden(
            f"this needs the role {' or '.join(sorted(allowed))} in the organisation (yours: {role})",
            code="insufficient_org_role",
        )
    return app


# --- organisations -----------------------------------------------------------------------------------------


async def create_organisation(stores: Stores, actor: Actor, request: CreateOrganisation) -> OrganisationView:
    """A new organisation with its first admin (staff: platform_admin, or ops)."""
    name = request.name.strip()
    if not name:
        raise InvalidInput("name: must not be blank", field="name")
    check_region(request.region_code, "region_code")
    admin_id = await resolve_member(stores, request.first_admin, "first_admin")
    organisation_id = ids.new_id()
    async with transaction(stores.pool, stores.settings) as conn:
        row = await repository.insert_organisation(
            conn, organisation_id, name, request.kind, request.region_code, actor.label
        )
        if row is None:
            raise Conflict("an organisation of this name exists", field="name", code="organisation_exists")
        await repository.put_member(conn, organisation_id, admin_id, "admin", actor.label)
        await repository.add_audit(
            conn,
            action="organisation_created",
            actor=actor,
            organisation_id=organisation_id,
            detail={"name": name, "first_admin": str(admin_id)},
        )
    log.info("miniapps.organisation_created", organisation=str(organisation_id))
    return _organisation_view(row)


async def list_organisations(stores: Stores) -> list[OrganisationView]:
    async with connection(stores.pool, stores.settings) as conn:
        return [_organisation_view(row) for row in await repository.list_organisations(conn)]


async def my_organisations(stores: Stores, account_id: UUID) -> list[OrganisationView]:
    async with connection(stores.pool, stores.settings) as conn:
        rows = await repository.organisations_of_account(conn, account_id)
    return [_organisation_view(row, row["role"]) for row in rows]


async def add_member(stores: Stores, actor: Actor, organisation_id: UUID, request: AddMember) -> MemberView:
    """An admin adds a member or changes a member's role. An organisation keeps at least one admin."""
    assert actor.account_id is not None
    async with connection(stores.pool, stores.settings) as conn:
        await require_role(conn, organisation_id, actor.account_id, MANAGE_MEMBERS)
    member_id = await resolve_member(stores, request.member, "member")
    async with transaction(stores.pool, stores.settings) as conn:
        await require_role(conn, organisation_id, actor.account_id, MANAGE_MEMBERS, lock=True)
        admins = await repository.lock_admins(conn, organisation_id)
        previous = await repository.member_role(conn, organisation_id, member_id)
        if previous == "admin" and request.role != "admin" and admins == [member_id]:
            raise Conflict("the organisation's last admin stays admin", code="last_admin")
        row = await repository.put_member(conn, organisation_id, member_id, request.role, actor.label)
        await repository.add_audit(
            conn,
            action="member_granted",
            actor=actor,
            organisation_id=organisation_id,
            detail={"account": str(member_id), "role": request.role, "previous": previous},
        )
    return _member_view(row)


async def remove_member(stores: Stores, actor: Actor, organisation_id: UUID, member_id: UUID) -> None:
    assert actor.account_id is not None
    async with transaction(stores.pool, stores.settings) as conn:
        await require_role(conn, organisation_id, actor.account_id, MANAGE_MEMBERS, lock=True)
        admins = await repository.lock_admins(conn, organisation_id)
        if admins == [member_id]:
            raise Conflict("the organisation's last admin cannot be removed", code="last_admin")
        if not await repository.delete_member(conn, organisation_id, member_id):
            raise NotFound("no such member", code="member_not_found")
        await repository.add_audit(
            conn,
            action="member_removed",
            actor=actor,
            organisation_id=organisation_id,
            detail={"account": str(member_id)},
        )


async def list_members(stores: Stores, account_id: UUID, organisation_id: UUID) -> list[MemberView]:
    async with connection(stores.pool, stores.settings) as conn:
        await require_role(conn, organisation_id, account_id, READ)
        return [_member_view(row) for row in await repository.members_of(conn, organisation_id)]


# --- apps --------------------------------------------------------------------------------------------------


def new_appid() -> str:
    return "tb" + secrets.token_hex(8)


def new_app_secret() -> str:
    """32 hex characters: 128 random bits, so a fast hash is enough to store it."""
    return secrets.token_hex(16)


def hash_secret(appid: str, secret: str) -> bytes:
    return hmac.new(appid.encode(), secret.encode(), hashlib.sha256).digest()


def parse_allowlist(cidrs: list[str], field: str) -> list[Network]:
    """Networks from CIDRs or single addresses; host bits set ("10.0.0.1/24") are refused as a likely typo."""
    networks: list[Network] = []
    for index, text in enumerate(cidrs):
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError:
            raise InvalidInput(
                f"{field}[{index}]: not an IP address or CIDR network (host bits must be zero)",
                field=f"{field}[{index}]",
                code="invalid_cidr",
            ) from None
    return sorted(set(networks), key=lambda net: (net.version, net))


def app_view(row: asyncpg.Record) -> AppView:
    return AppView(
        appid=row["appid"],
        organisation_id=row["organisation_id"],
        name=row["name"],
        description=row["description"],
        category=row["category"],
        region_code=row["region_code"],
        service_item_code=row["service_item_code"],
        icon_url=row["icon_url"],
        status=row["status"],
        frozen_by=row["frozen_by"],
        frozen_reason=row["frozen_reason"],
        ip_allowlist=[str(net) for net in row["ip_allowlist"]],
        secret_reset_at=row["secret_reset_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _name_taken() -> Conflict:
    return Conflict("a mini-app of this name exists", field="name", code="app_name_taken")


async def create_app(stores: Stores, actor: Actor, organisation_id: UUID, request: CreateApp) -> AppCreated:
    """Register an app (admins and developers of the organisation). The AppSecret is in the answer, once."""
    assert actor.account_id is not None
    name = request.name.strip()
    if not name:
        raise InvalidInput("name: must not be blank", field="name")
    check_region(request.region_code, "region_code")
    networks = parse_allowlist(request.ip_allowlist, "ip_allowlist")
    appid, secret = new_appid(), new_app_secret()
    async with transaction(stores.pool, stores.settings) as conn:
        await require_role(conn, organisation_id, actor.account_id, EDIT_APPS)
        row = await repository.insert_app(
            conn,
            appid=appid,
            organisation_id=organisation_id,
            name=name,
            description=request.description,
            category=request.category,
            region_code=request.region_code,
            service_item_code=request.service_item_code,
            icon_url=request.icon_url,
            secret_hash=hash_secret(appid, secret),
            ip_allowlist=networks,
            created_by=actor.account_id,
        )
        if row is None:
            raise _name_taken()
        await repository.add_audit(
            conn, action="app_created", actor=actor, organisation_id=organisation_id, appid=appid
        )
    log.info("miniapps.app_created", appid=appid, organisation=str(organisation_id))
    return AppCreated(app=app_view(row), appsecret=secret)


async def list_apps(stores: Stores, account_id: UUID, organisation_id: UUID) -> list[AppView]:
    async with connection(stores.pool, stores.settings) as conn:
        await require_role(conn, organisation_id, account_id, READ)
        return [app_view(row) for row in await repository.apps_of_organisation(conn, organisation_id)]


async def get_app(stores: Stores, account_id: UUID, appid: str) -> AppView:
    async with connection(stores.pool, stores.settings) as conn:
        return app_view(await app_for_member(conn, appid, account_id, READ))


async def update_app(stores: Stores, actor: Actor, appid: str, request: UpdateApp) -> AppView:
    assert actor.account_id is not None
    changes = {
        field: getattr(request, field)
        for field in request.__struct_fields__
        if getattr(request, field) is not UNSET
    }
    if "name" in changes:
        changes["name"] = changes["name"].strip()
        if not changes["name"]:
            raise InvalidInput("name: must not be blank", field="name")
    if "region_code" in changes:
        check_region(changes["region_code"], "region_code")
    async with transaction(stores.pool, stores.settings) as conn:
        app = await app_for_member(conn, appid, actor.account_id, EDIT_APPS, for_update=True)
        if not changes:
            return app_view(app)
        try:
            row = await repository.update_app(conn, appid, changes)
        except asyncpg.UniqueViolationError:
            raise _name_taken() from None
        assert row is not None
        await repository.add_audit(
            conn,
            action="app_updated",
            actor=actor,
            organisation_id=app["organisation_id"],
            appid=appid,
            detail={"fields": sorted(changes)},
        )
        generation = await repository.bump_catalog_generation(conn)
    await catalog.published(stores, generation)
    return app_view(row)


async def set_allowlist(stores: Stores, actor: Actor, appid: str, request: SetAllowlist) -> AppView:
    assert actor.account_id is not None
    networks = parse_allowlist(request.cidrs, "cidrs")
    async with transaction(stores.pool, stores.settings) as conn:
        app = await app_for_member(conn, appid, actor.account_id, EDIT_APPS, for_update=True)
        row = await repository.set_app_allowlist(conn, appid, networks)
        await repository.add_audit(
            conn,
            action="allowlist_set",
            actor=actor,
            organisation_id=app["organisation_id"],
            appid=appid,
            detail={"cidrs": [str(net) for net in networks]},
        )
    return app_view(row)


async def reset_secret(stores: Stores, actor: Actor, appid: str) -> SecretReset:
    """A new AppSecret (admins): the old one stops working at once. Shown in this answer only."""
    assert actor.account_id is not None
    secret = new_app_secret()
    async with transaction(stores.pool, stores.settings) as conn:
        app = await app_for_member(conn, appid, actor.account_id, GUARD_APPS, for_update=True)
        row = await repository.set_app_secret(conn, appid, hash_secret(appid, secret))
        await repository.add_audit(
            conn, action="secret_reset", actor=actor, organisation_id=app["organisation_id"], appid=appid
        )
    log.info("miniapps.secret_reset", appid=appid)
    return SecretReset(appid=appid, appsecret=secret, reset_at=row["secret_reset_at"])


async def _set_frozen(
    stores: Stores,
    actor: Actor,
    appid: str,
    *,
    freeze: bool,
    by: Literal["organisation", "platform"],
    reason: str | None,
) -> AppView:
    async with transaction(stores.pool, stores.settings) as conn:
        if by == "organisation":
            assert actor.account_id is not None
            app = await app_for_member(conn, appid, actor.account_id, GUARD_APPS, for_update=True)
        else:
            app = await repository.app_by_id(conn, appid, for_update=True)
            if app is None:
                raise NotFound("no such mini-app", code="app_not_found")
        if freeze and app["status"] == "frozen":
            raise Conflict(f"the app is frozen already (by the {app['frozen_by']})", code="already_frozen")
        if not freeze:
            if app["status"] != "frozen":
                raise Conflict("the app is not frozen", code="not_frozen")
            if by == "organisation" and app["frozen_by"] == "platform":
                raise Forbidden("only the platform lifts a platform freeze", code="frozen_by_platform")
        row = await repository.set_app_status(
            conn,
            appid,
            "frozen" if freeze else "active",
            by if freeze else None,
            reason.strip() if freeze and reason else None,
        )
        await repository.add_audit(
            conn,
            action="app_frozen" if freeze else "app_unfrozen",
            actor=actor,
            organisation_id=app["organisation_id"],
            appid=appid,
            from_state=app["status"],
            to_state=row["status"],
            detail={"by": by, "reason": reason} if freeze else {"by": by},
        )
        generation = await repository.bump_catalog_generation(conn)
    await catalog.published(stores, generation)
    log.info("miniapps.app_frozen" if freeze else "miniapps.app_unfrozen", appid=appid, by=by)
    return app_view(row)


async def freeze_app(
    stores: Stores, actor: Actor, appid: str, reason: str, *, by: Literal["organisation", "platform"]
) -> AppView:
    """A frozen app leaves the catalog and the SDK refuses it tokens, until unfrozen."""
    check_reason(reason)
    return await _set_frozen(stores, actor, appid, freeze=True, by=by, reason=reason)


async def unfreeze_app(
    stores: Stores, actor: Actor, appid: str, *, by: Literal["organisation", "platform"]
) -> AppView:
    return await _set_frozen(stores, actor, appid, freeze=False, by=by, reason=None)


def audit_entry(row: asyncpg.Record) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        action=row["action"],
        actor=row["actor"],
        at=row["at"],
        organisation_id=row["organisation_id"],
        appid=row["appid"],
        version_id=row["version_id"],
        from_state=row["from_state"],
        to_state=row["to_state"],
        detail=msgspec.json.decode(row["detail"]),
    )


async def app_audit(stores: Stores, account_id: UUID, appid: str, limit: int = 200) -> list[AuditEntry]:
    """The app's audit trail, newest first (members of its organisation)."""
    async with connection(stores.pool, stores.settings) as conn:
        await app_for_member(conn, appid, account_id, READ)
        return [audit_entry(row) for row in await repository.audit_of_app(conn, appid, limit)]


# --- for the SDK endpoints ---------------------------------------------------------------------------------


async def sdk_app(stores: Stores, appid: str) -> SdkApp | None:
    """The app as the SDK endpoints need it, or None for an unknown appid."""
    async with connection(stores.pool, stores.settings) as conn:
        row = await repository.sdk_app(conn, appid)
    if row is None:
        return None
    return SdkApp(
        appid=row["appid"],
        organisation_id=row["organisation_id"],
        organisation_name=row["organisation_name"],
        status=row["status"],
        secret_hash=bytes(row["secret_hash"]),
        secret_reset_at=row["secret_reset_at"],
        ip_allowlist=tuple(str(net) for net in row["ip_allowlist"]),
    )


def secret_matches(app: SdkApp, secret: str) -> bool:
    """Constant-time comparison of a presented AppSecret with the stored hash."""
    return hmac.compare_digest(hash_secret(app.appid, secret), app.secret_hash)


def ip_allowed(app: SdkApp, ip: str) -> bool:
    """An empty allowlist admits any address; otherwise the address must fall in one of its networks."""
    if not app.ip_allowlist:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net) for net in app.ip_allowlist)
