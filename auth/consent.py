"""The consent ledger (PIPL arts. 14, 23, 29): which recipient may receive which of a person's data, and why.

Every grant and revoke is a consents row plus an account_events row, written in one transaction.
has_consent asks PostgreSQL every time (one lookup on the partial index consents_subject): there is no
cache, so a revocation is seen by the very next check in every process.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from auth import repository
from core import ids
from core.db import connection, transaction
from core.errors import InvalidInput, NotFound
from core.stores import Stores

# A scope names one kind of data or action: "phone", "real_name", "health_pass.read", "miniapp:wx123.notify".
SCOPE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
MAX_SCOPES = 32
MAX_RECIPIENT = 128
MAX_PURPOSE = 500


class Consent(msgspec.Struct, frozen=True):
    id: UUID
    recipient: str
    scopes: builtins.list[str]
    purpose: str
    granted_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _consent(row: asyncpg.Record) -> Consent:
    return Consent(
        id=row["id"],
        recipient=row["recipient"],
        scopes=builtins.list(row["scopes"]),
        purpose=row["purpose"],
        granted_at=row["granted_at"],
        revoked_at=row["revoked_at"],
    )


def _text(value: str, field: str, limit: int) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text or len(text) > limit or not text.isprintable():
        raise InvalidInput(f"{field}: 1 to {limit} printable characters", field=field)
    return text


def check_scopes(scopes: Sequence[str]) -> builtins.list[str]:
    """The scopes sorted and without repeats; InvalidInput(field="scopes") for anything else."""
    if isinstance(scopes, str) or not scopes or len(scopes) > MAX_SCOPES:
        raise InvalidInput(f"scopes: 1 to {MAX_SCOPES} scopes", field="scopes")
    for scope in scopes:
        if not isinstance(scope, str) or not SCOPE.match(scope):
            raise InvalidInput(
                "scopes: each is lower-case letters, digits and . _ : - (at most 64)", field="scopes"
            )
    return sorted(set(scopes))


async def grant(
    stores: Stores,
    subject_id: UUID,
    recipient: str,
    scopes: Sequence[str],
    purpose: str,
    *,
    actor: str = "self",
) -> Consent:
    """Record that `subject_id` lets `recipient` have `scopes` for `purpose`. Granting again exactly what
    is already granted (and not revoked) returns that consent instead of a second one."""
    recipient = _text(recipient, "recipient", MAX_RECIPIENT)
    purpose = _text(purpose, "purpose", MAX_PURPOSE)
    scope_list = check_scopes(scopes)
    async with transaction(stores.pool, stores.settings) as conn:
        # Locks the account row: two identical grants racing end up as one consent.
        account = await repository.account_by_id(conn, subject_id, for_update=True)
        if account is None or account["status"] == "deleted":
            raise NotFound("no such account")
        existing = await repository.active_consent_like(conn, subject_id, recipient, scope_list, purpose)
        if existing is not None:
            return _consent(existing)
        row = await repository.insert_consent(conn, ids.new_id(), subject_id, recipient, scope_list, purpose)
        await repository.add_event(
            conn,
            subject_id,
            "consent_granted",
            actor,
            {"consent": str(row["id"]), "recipient": recipient, "scopes": scope_list},
        )
    return _consent(row)


async def revoke(stores: Stores, subject_id: UUID, consent_id: UUID, *, actor: str = "self") -> Consent:
    """Withdraw a consent (PIPL art. 15). Another subject's consent id is NotFound; revoking an already
    revoked consent changes nothing and returns it."""
    async with transaction(stores.pool, stores.settings) as conn:
        row = await repository.consent_for_update(conn, subject_id, consent_id)
        if row is None:
            raise NotFound("no such consent")
        if row["revoked_at"] is not None:
            return _consent(row)
        row = await repository.revoke_consent(conn, consent_id)
        await repository.add_event(
            conn,
            subject_id,
            "consent_revoked",
            actor,
            {"consent": str(consent_id), "recipient": row["recipient"]},
        )
    return _consent(row)


async def list_consents(stores: Stores, subject_id: UUID) -> builtins.list[Consent]:
    """Every consent of the subject, granted and revoked, oldest first."""
    async with connection(stores.pool, stores.settings) as conn:
        rows = await repository.consents_of(conn, subject_id)
    return [_consent(row) for row in rows]


async def has_consent(
    stores: Stores, subject_id: UUID, recipient: str, scope: str, *, conn: asyncpg.Connection | None = None
) -> bool:
    """True when an unrevoked consent of the subject lets `recipient` have `scope`. One indexed query, no
    cache: a revocation committed anywhere is seen by the next call. Pass `conn` to check inside a
    transaction of your own."""
    if conn is not None:
        return await repository.has_active_consent(conn, subject_id, recipient, scope)
    async with connection(stores.pool, stores.settings) as own:
        return await repository.has_active_consent(own, subject_id, recipient, scope)


# The ledger's verbs as the other capabilities call them: consent.grant / revoke / list / has_consent.
# (That is why annotations in this module spell builtins.list.)
list = list_consents
