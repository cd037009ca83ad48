"""Legal persons (法人): an L2 person registers the enterprise they are the legal representative of, grants
roles in it to other accounts, and any member may act for it (the `ent` claim of their access token).

Who may do what in an enterprise:
- legal_representative: the one who registered it (checked against the enterprise registry); grants and
  revokes admins and agents; can never be revoked.
- admin: grants and revokes agents.
- agent: acts for the enterprise.
An enterprise the caller does not belong to answers 404, as if it did not exist (no probing by id).
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Annotated, Final, Literal
from uuid import UUID

import asyncpg
import msgspec
import structlog
from stdnum.cn import uscc as uscc_code
from stdnum.exceptions import ValidationError

from auth import repository
from auth.enterprise_registry import EnterpriseRegistry, registry_for
from auth.phone import normalize_mobile
from auth.service import ID_NUMBER_INDEX
from auth.tokens import AccessClaims, Enterprise, issue_access_token
from core import ids
from core.db import transaction
from core.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from core.pii.masking import normalize_id_number, normalize_phone
from core.stores import Stores

log = structlog.get_logger(__name__)

PHONE_INDEX = "accounts.phone"
LEGAL_REPRESENTATIVE: Final = "legal_representative"
# Registry statuses under which an enterprise still exists and can act (存续 / 在业).
ACTIVE_STATUSES = frozenset({"active"})
# Which roles each role may grant and revoke.
MANAGES: dict[str, frozenset[str]] = {
    LEGAL_REPRESENTATIVE: frozenset({"admin", "agent"}),
    "admin": frozenset({"agent"}),
    "agent": frozenset(),
}

Role = Literal["legal_representative", "admin", "agent"]


class RegisterEnterprise(msgspec.Struct, forbid_unknown_fields=True):
    uscc: Annotated[str, msgspec.Meta(max_length=64)]  # a blank or bad code is 422 `invalid_uscc`


class EnterpriseView(msgspec.Struct):
    id: UUID
    uscc: str
    name: str
    role: Role
    registered_at: datetime


class GrantMember(msgspec.Struct, forbid_unknown_fields=True):
    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    role: Literal["admin", "agent"]


class MemberView(msgspec.Struct):
    account_id: UUID
    role: Role
    phone: str  # masked: 138****5678
    name: str | None  # masked, once the member verified their real name
    granted_at: datetime
    granted_by: UUID | None


class ActAs(msgspec.Struct, forbid_unknown_fields=True):
    # Required, and null means "act as myself again".
    enterprise_id: UUID | None


class ActingToken(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int
    enterprise: Enterprise | None


def canonical_uscc(value: str) -> str:
    """The 18-character code (GB 32100: charset and MOD-31 check character), from a spelling with spaces,
    dashes, full-width characters or lower case; anything else is 422 on field `uscc`."""
    try:
        code: str = uscc_code.validate(normalize_id_number(value))
    except ValidationError:
        raise InvalidInput(
            "uscc: not a valid unified social credit code (GB 32100)", field="uscc", code="invalid_uscc"
        ) from None
    return code


def _member_view(row: asyncpg.Record) -> MemberView:
    return MemberView(
        account_id=row["account_id"],
        role=row["role"],
        phone=row["phone_masked"],
        name=row["name_masked"],
        granted_at=row["granted_at"],
        granted_by=row["granted_by"],
    )


async def register(
    stores: Stores,
    claims: AccessClaims,
    request: RegisterEnterprise,
    registry: EnterpriseRegistry | None = None,
) -> EnterpriseView:
    """Register the enterprise whose legal representative the caller is, per the enterprise registry."""
    code = canonical_uscc(request.uscc)
    # Asked before the transaction: no connection is held while the registry answers.
    found = await (registry or registry_for(stores.settings)).lookup(code)
    if found is None:
        raise NotFound(
            "the enterprise registry has no enterprise with this code", code="enterprise_not_found"
        )
    vault = await stores.vault()
    legal_rep_bidx = vault.blind_index(
        found.legal_rep_id_number, purpose=ID_NUMBER_INDEX, normalize=normalize_id_number
    )
    async with transaction(stores.pool, stores.settings) as conn:
        account = await repository.account_by_id(conn, claims.account_id)
        own_bidx = account["id_number_bidx"] if account is not None else None
        if own_bidx is None or not hmac.compare_digest(bytes(own_bidx), legal_rep_bidx):
            raise Forbidden(
                "only the enterprise's legal representative can register it",
                code="not_legal_representative",
            )
        if found.status not in ACTIVE_STATUSES:
            raise Conflict(
                f"the enterprise registry lists this enterprise as {found.status!r}",
                code="enterprise_inactive",
            )
        enterprise_id = ids.new_id()
        row = await repository.insert_enterprise(conn, enterprise_id, code, found.name, claims.account_id)
        if row is None:
            raise Conflict("this enterprise is registered already", code="enterprise_registered")
        await repository.put_member(
            conn, enterprise_id, claims.account_id, LEGAL_REPRESENTATIVE, claims.account_id
        )
        await repository.add_event(
            conn, claims.account_id, "enterprise_registered", "self", {"enterprise": str(enterprise_id)}
        )
    log.info("enterprise.registered", enterprise=str(enterprise_id))
    return EnterpriseView(
        id=row["id"],
        uscc=row["uscc"],
        name=row["name"],
        role=LEGAL_REPRESENTATIVE,
        registered_at=row["registered_at"],
    )


async def my_enterprises(stores: Stores, claims: AccessClaims) -> list[EnterpriseView]:
    async with transaction(stores.pool, stores.settings) as conn:
        rows = await repository.account_enterprises(conn, claims.account_id)
    return [
        EnterpriseView(
            id=row["id"],
            uscc=row["uscc"],
            name=row["name"],
            role=row["role"],
            registered_at=row["registered_at"],
        )
        for row in rows
    ]


def _not_found() -> NotFound:
    return NotFound("no such enterprise among yours", code="enterprise_not_found")


async def _manager_role(conn: asyncpg.Connection, enterprise_id: UUID, account_id: UUID) -> str:
    """The caller's role if it may manage members (legal representative or admin); 404 for non-members,
    403 for agents."""
    role = await repository.member_role(conn, enterprise_id, account_id, lock=True)
    if role is None:
        raise _not_found()
    if not MANAGES[role]:
        raise Forbidden(
            "only the legal representative or an admin manages members", code="not_enterprise_admin"
        )
    return role


async def grant(
    stores: Stores, claims: AccessClaims, enterprise_id: UUID, request: GrantMember
) -> MemberView:
    """Give an existing account a role. Unknown phones and accounts that are not active are the same 404."""
    phone = normalize_mobile(request.phone)
    vault = await stores.vault()
    phone_bidx = vault.blind_index(phone, purpose=PHONE_INDEX, normalize=normalize_phone)
    async with transaction(stores.pool, stores.settings) as conn:
        caller_role = await _manager_role(conn, enterprise_id, claims.account_id)
        if request.role not in MANAGES[caller_role]:
            raise Forbidden(
                f"a {caller_role} cannot grant the role {request.role}", code="role_not_grantable"
            )
        account = await repository.account_by_phone(conn, phone_bidx)
        # Banned accounts and accounts on their way out gain no roles; all look alike to the caller.
        if account is None or account["status"] != "active":
            raise NotFound("no account with this phone", code="account_not_found")
        current = await repository.member_role(conn, enterprise_id, account["id"], lock=True)
        if current == LEGAL_REPRESENTATIVE:
            raise Conflict("the legal representative's role cannot change", code="is_legal_representative")
        if current is not None and current not in MANAGES[caller_role]:
            raise Forbidden(
                f"a {caller_role} cannot change the role of a {current}", code="role_not_grantable"
            )
        row = await repository.put_member(conn, enterprise_id, account["id"], request.role, claims.account_id)
        await repository.add_event(
            conn,
            account["id"],
            "enterprise_role_granted",
            f"account:{claims.account_id}",
            {"enterprise": str(enterprise_id), "role": request.role},
        )
    return _member_view(row)


async def revoke(stores: Stores, claims: AccessClaims, enterprise_id: UUID, member_id: UUID) -> None:
    """Take a member's role away; their sessions acting for the enterprise act as the person again, and
    their next refresh carries no `ent` (an access token already issued keeps it until it expires)."""
    async with transaction(stores.pool, stores.settings) as conn:
        caller_role = await _manager_role(conn, enterprise_id, claims.account_id)
        current = await repository.member_role(conn, enterprise_id, member_id, lock=True)
        if current is None:
            raise NotFound("no such member", code="member_not_found")
        if current == LEGAL_REPRESENTATIVE:
            raise Forbidden(
                "the legal representative cannot be removed", code="cannot_revoke_legal_representative"
            )
        if current not in MANAGES[caller_role]:
            raise Forbidden(f"a {caller_role} cannot revoke a {current}", code="role_not_grantable")
        await repository.delete_member(conn, enterprise_id, member_id)
        await repository.stop_acting_for(conn, enterprise_id, member_id)
        await repository.add_event(
            conn,
            member_id,
            "enterprise_role_revoked",
            f"account:{claims.account_id}",
            {"enterprise": str(enterprise_id), "role": current},
        )


async def members(stores: Stores, claims: AccessClaims, enterprise_id: UUID) -> list[MemberView]:
    async with transaction(stores.pool, stores.settings) as conn:
        await _manager_role(conn, enterprise_id, claims.account_id)
        rows = await repository.enterprise_members(conn, enterprise_id)
    return [_member_view(row) for row in rows]


async def act_as(stores: Stores, claims: AccessClaims, request: ActAs) -> ActingToken:
    """Switch the current session's acting identity and give an access token that says so. The session's
    refresh token stays: each refresh re-reads the acting identity and the membership behind it."""
    enterprise: Enterprise | None = None
    async with transaction(stores.pool, stores.settings) as conn:
        if request.enterprise_id is not None:
            role = await repository.member_role(conn, request.enterprise_id, claims.account_id, lock=True)
            if role is None:
                raise _not_found()
            enterprise = Enterprise(id=str(request.enterprise_id), role=role)
        session = await repository.switch_acting_enterprise(
            conn, claims.session_id, claims.account_id, request.enterprise_id
        )
        if session is None or session["status"] not in ("active", "deleting"):
            raise Unauthorized("the session has ended", code="invalid_token")
        await repository.add_event(
            conn,
            claims.account_id,
            "acting_switched",
            "self",
            {
                "session": claims.sid,
                "enterprise": str(request.enterprise_id) if request.enterprise_id else None,
            },
        )
        access, ttl = await issue_access_token(
            stores,
            account_id=claims.account_id,
            session_id=claims.session_id,
            level=session["level"],
            amr=list(session["amr"]),
            enterprise=enterprise,
        )
    return ActingToken(
        access_token=access,
        token_type="Bearer",  # noqa: S106 (the RFC 6750 token type, not a secret)
        expires_in=ttl,
        enterprise=enterprise,
    )
