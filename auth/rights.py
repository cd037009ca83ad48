"""The data subject's rights under PIPL, and the accounts ops tools that sit beside them.

- Access and copy (art. 45): export_personal_data gives everything held about the caller; the name and ID
  number are decrypted through the vault as actor "self", so each export is in the PII access log.
- Deletion (art. 47): request_deletion starts a grace period (auth_deletion_grace_days) that
  cancel_deletion ends; the deferred job auth.erase_account then erases the personal data. The account id
  stays behind as a pseudonym for the records other capabilities must keep.
- Ops (the `tongban users` / `sessions` commands): look up by blind index, reveal with a logged reason,
  ban, unban, revoke sessions.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec
import structlog

from auth import consent, repository, revocation, service
from auth.consent import Consent
from auth.phone import normalize_mobile
from core import clock
from core.db import connection, transaction
from core.errors import Conflict, InvalidInput, NotFound
from core.jobs import enqueue_in_tx, job, periodic
from core.pii.masking import normalize_id_number, normalize_phone
from core.pii.vault import Vault
from core.ratelimit import Limiter, Window
from core.stores import Stores

log = structlog.get_logger(__name__)

TABLE = "accounts"
# Vault columns (the AAD): the same names the writers use (auth/service.py for the phone).
PHONE_COLUMN, NAME_COLUMN, ID_NUMBER_COLUMN = "phone", "name", "id_number"
PHONE_INDEX, ID_NUMBER_INDEX = service.PHONE_INDEX, service.ID_NUMBER_INDEX
EXPORT_REASON = "PIPL export"
ERASE_JOB = "auth.erase_account"
MAX_REASON = 500


# --- what goes out ------------------------------------------------------------------------------------


class ExportedAccount(msgspec.Struct, kw_only=True):
    id: UUID
    phone: str
    name: str | None
    id_number: str | None
    level: int
    amr: list[str]
    status: str
    created_at: datetime
    updated_at: datetime
    real_name_at: datetime | None
    face_verified_at: datetime | None


class ExportedSession(msgspec.Struct, kw_only=True):
    id: UUID
    device_id: str
    device_name: str
    acting_enterprise: UUID | None
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None


class ExportedEvent(msgspec.Struct, kw_only=True):
    kind: str
    actor: str
    detail: dict[str, Any]
    at: datetime


class ExportedMembership(msgspec.Struct, kw_only=True):
    enterprise_id: UUID
    enterprise_name: str
    uscc: str
    role: str
    granted_at: datetime


class DeletionState(msgspec.Struct, kw_only=True):
    """none: never requested; pending: erasure at due_at unless cancelled; cancelled; completed."""

    state: Literal["none", "pending", "cancelled", "completed"]
    requested_at: datetime | None = None
    due_at: datetime | None = None
    cancelled_at: datetime | None = None
    completed_at: datetime | None = None


class PersonalDataExport(msgspec.Struct, kw_only=True):
    exported_at: datetime
    account: ExportedAccount
    sessions: list[ExportedSession]
    events: list[ExportedEvent]
    consents: list[Consent]
    enterprises: list[ExportedMembership]
    deletion: DeletionState


class EraseAccount(msgspec.Struct, frozen=True):
    account_id: UUID


def deletion_state(row: asyncpg.Record | None) -> DeletionState:
    if row is None:
        return DeletionState(state="none")
    if row["completed_at"] is not None:
        state: Literal["pending", "cancelled", "completed"] = "completed"
    elif row["cancelled_at"] is not None:
        state = "cancelled"
    else:
        state = "pending"
    return DeletionState(
        state=state,
        requested_at=row["requested_at"],
        due_at=row["due_at"],
        cancelled_at=row["cancelled_at"],
        completed_at=row["completed_at"],
    )


def erase_job_id(account_id: UUID, requested_at: datetime) -> str:
    """One erase job per deletion request: repeating a request adds nothing; a new request after a
    cancel gets its own job (the cancelled one's job, when it fires, finds nothing due and does nothing)."""
    return f"{ERASE_JOB}.{account_id}.{int(requested_at.timestamp() * 1_000_000)}"


async def _decrypt(
    vault: Vault, conn: asyncpg.Connection, account: asyncpg.Record, column: str, actor: str, reason: str
) -> str | None:
    blob = account[f"{column}_enc"]
    if not blob:  # never set (name, ID number before real-name), or erased
        return None
    return await vault.decrypt(
        conn, blob, table=TABLE, column=column, row_id=account["id"], actor=actor, reason=reason
    )


def _decode_detail(raw: str) -> dict[str, Any]:
    detail = msgspec.json.decode(raw)
    return detail if isinstance(detail, dict) else {"value": detail}


# --- access and copy (art. 45) ------------------------------------------------------------------------


async def export_personal_data(stores: Stores, account_id: UUID) -> PersonalDataExport:
    """Everything held about the account, decrypted (and logged) for its holder. Rate-limited."""
    settings = stores.settings
    await Limiter(stores.redis, settings).hit(
        "pipl-export", account_id.hex, (Window("hour", settings.auth_export_per_hour, 3600),)
    )
    vault = await stores.vault()
    async with transaction(stores.pool, settings) as conn:
        account = await repository.account_by_id(conn, account_id)
        if account is None or account["status"] == "deleted":
            raise NotFound("no such account")
        # Recorded before reading the events, so the export shows itself.
        await repository.add_event(conn, account_id, "data_exported", "self")
        phone = await _decrypt(vault, conn, account, PHONE_COLUMN, "self", EXPORT_REASON)
        name = await _decrypt(vault, conn, account, NAME_COLUMN, "self", EXPORT_REASON)
        id_number = await _decrypt(vault, conn, account, ID_NUMBER_COLUMN, "self", EXPORT_REASON)
        sessions = await repository.sessions_of(conn, account_id)
        events = await repository.events_of(conn, account_id)
        consents = await repository.consents_of(conn, account_id)
        memberships = await repository.memberships_of(conn, account_id)
        deletion = await repository.deletion_of(conn, account_id)
    return PersonalDataExport(
        exported_at=clock.now(),
        account=ExportedAccount(
            id=account["id"],
            phone=phone or "",
            name=name,
            id_number=id_number,
            level=account["level"],
            amr=list(account["amr"]),
            status=account["status"],
            created_at=account["created_at"],
            updated_at=account["updated_at"],
            real_name_at=account["real_name_at"],
            face_verified_at=account["face_verified_at"],
        ),
        sessions=[ExportedSession(**dict(row)) for row in sessions],
        events=[
            ExportedEvent(
                kind=row["kind"], actor=row["actor"], detail=_decode_detail(row["detail"]), at=row["at"]
            )
            for row in events
        ],
        consents=[consent._consent(row) for row in consents],
        enterprises=[
            ExportedMembership(
                enterprise_id=row["enterprise_id"],
                enterprise_name=row["name"],
                uscc=row["uscc"],
                role=row["role"],
                granted_at=row["granted_at"],
            )
            for row in memberships
        ],
        deletion=deletion_state(deletion),
    )


# --- deletion (art. 47) -------------------------------------------------------------------------------


async def request_deletion(stores: Stores, account_id: UUID) -> DeletionState:
    """Start erasure after the grace period. Asking again while one is pending returns that one."""
    settings = stores.settings
    async with transaction(stores.pool, settings) as conn:
        account = await repository.account_by_id(conn, account_id, for_update=True)
        if account is None or account["status"] == "deleted":
            raise NotFound("no such account")
        if account["status"] == "banned":
            raise Conflict("a suspended account cannot request deletion here", code="account_banned")
        current = await repository.deletion_of(conn, account_id, for_update=True)
        if current is not None and current["cancelled_at"] is None and current["completed_at"] is None:
            return deletion_state(current)
        due_at = clock.now() + timedelta(days=settings.auth_deletion_grace_days)
        row = await repository.upsert_deletion(conn, account_id, due_at)
        await repository.set_account_status(conn, account_id, "deleting")
        await repository.add_event(
            conn, account_id, "deletion_requested", "self", {"due_at": row["due_at"].isoformat()}
        )
        await enqueue_in_tx(
            conn,
            ERASE_JOB,
            EraseAccount(account_id=account_id),
            job_id=erase_job_id(account_id, row["requested_at"]),
            defer_until=row["due_at"],
        )
    return deletion_state(row)


async def cancel_deletion(stores: Stores, account_id: UUID) -> DeletionState:
    """End a pending request: the account is active again. NotFound when nothing is pending."""
    async with transaction(stores.pool, stores.settings) as conn:
        account = await repository.account_by_id(conn, account_id, for_update=True)
        if account is None or account["status"] == "deleted":
            raise NotFound("no such account")
        row = await repository.cancel_deletion(conn, account_id)
        if row is None:
            raise NotFound("no deletion request is pending")
        if account["status"] == "deleting":
            await repository.set_account_status(conn, account_id, "active")
        await repository.add_event(conn, account_id, "deletion_cancelled", "self")
    return deletion_state(row)


async def get_deletion(stores: Stores, account_id: UUID) -> DeletionState:
    async with connection(stores.pool, stores.settings) as conn:
        return deletion_state(await repository.deletion_of(conn, account_id))


async def _forget_elsewhere(conn: asyncpg.Connection, account_id: UUID) -> dict[str, int]:
    """What the other capabilities keep per account, in the erasure's transaction: recently used apps and
    favourites, the inbox, ratings (they stay in the statistics, unlinked), one-code devices and links."""
    # Imported here: those capabilities import auth, and auth must not import them at load time.
    from miniapps import inbox
    from miniapps import repository as miniapps_repository
    from onecode import devices

    recent, favourites = await miniapps_repository.forget_account(conn, account_id)
    return {
        "recent_apps": recent,
        "favourites": favourites,
        "messages": await inbox.forget_account(conn, account_id),
        "ratings_unlinked": await miniapps_repository.unlink_ratings(conn, account_id),
        "onecode_authorisations_revoked": await devices.forget_account(conn, account_id),
    }


async def erase_account(stores: Stores, account_id: UUID, *, now: datetime | None = None) -> bool:
    """Erase the account if its deletion is pending and due (at `now`, default the clock). Idempotent:
    False and no change when there is no request, it was cancelled, is not yet due, or is done."""
    moment = now or clock.now()
    async with transaction(stores.pool, stores.settings) as conn:
        # Same lock order as request/cancel (account, then deletion): a racing cancel either wins or waits.
        account = await repository.account_by_id(conn, account_id, for_update=True)
        row = await repository.deletion_of(conn, account_id, for_update=True)
        if (
            account is None
            or row is None
            or row["cancelled_at"] is not None
            or row["completed_at"] is not None
        ):
            return False
        if row["due_at"] > moment:
            return False
        # Sessions end in this same transaction, so no session outlives the erasure; published below.
        revoked = await repository.revoke_account_sessions(conn, account_id, "account_deleted")
        scrubbed = await repository.scrub_sessions(conn, account_id)
        consents = await repository.revoke_all_consents(conn, account_id)
        forgotten = await _forget_elsewhere(conn, account_id)
        await repository.erase_account_pii(conn, account_id, secrets.token_bytes(32))
        await repository.complete_deletion(conn, account_id)
        await repository.add_event(
            conn,
            account_id,
            "erased",
            "system",
            {
                "sessions_revoked": len(revoked),
                "sessions": scrubbed,
                "consents_revoked": consents,
                **forgotten,
            },
        )
    await revocation.publish(stores, revoked)
    log.info("rights.account_erased", account=str(account_id), sessions_revoked=len(revoked))
    return True


@job(ERASE_JOB, max_tries=8)
async def erase_account_job(stores: Stores, payload: EraseAccount) -> None:
    await erase_account(stores, payload.account_id)


async def erase_due_accounts(stores: Stores, *, now: datetime | None = None, limit: int = 1000) -> int:
    """Erase every account whose grace period has ended. The deferred jobs do this; this is the backstop
    for a job lost with Redis (`tongban users erase-due`, safe to run from cron)."""
    moment = now or clock.now()
    async with connection(stores.pool, stores.settings) as conn:
        due = await repository.due_deletions(conn, moment, limit)
    erased = 0
    for account_id in due:
        erased += await erase_account(stores, account_id, now=moment)
    return erased


ERASE_DUE_JOB = "auth.erase_due"


@periodic(ERASE_DUE_JOB, every_seconds=3600)
async def erase_due_hourly(stores: Stores) -> None:
    """Hourly sweep behind the deferred erase jobs: a job lost with Redis still erases on time (within an
    hour), because account_deletions is the record."""
    await erase_due_accounts(stores)


# --- ops: look up, reveal, ban ------------------------------------------------------------------------


class SessionSummary(msgspec.Struct, kw_only=True):
    id: UUID
    device_id: str
    device_name: str
    created_at: datetime
    last_seen_at: datetime


class AccountSummary(msgspec.Struct, kw_only=True):
    id: UUID
    status: str
    level: int
    amr: list[str]
    phone: str
    name: str | None
    id_number: str | None
    revealed: bool
    banned_reason: str | None
    created_at: datetime
    updated_at: datetime
    sessions: list[SessionSummary]
    deletion: DeletionState


def check_reason(reason: str | None, field: str = "reason") -> str:
    text = (reason or "").strip()
    if not text or len(text) > MAX_REASON or not text.isprintable():
        raise InvalidInput(f"{field}: 1 to {MAX_REASON} printable characters", field=field)
    return text


def normalize_id_number_input(raw: str) -> str:
    """A GB 11643 citizen ID number, checked the same way as at real-name verification."""
    from auth.realname import check_id_number

    return check_id_number(raw)


async def find_account(
    stores: Stores,
    *,
    phone: str | None = None,
    id_number: str | None = None,
    account_id: UUID | None = None,
    reveal_as: str | None = None,
    reason: str | None = None,
) -> AccountSummary | None:
    """The account with this phone or ID number (by blind index) or id, masked; with `reveal_as` (an actor
    such as "ops:alice") and a reason, decrypted, each field logged in the PII access log."""
    if sum(key is not None for key in (phone, id_number, account_id)) != 1:
        raise InvalidInput("give exactly one of phone, id_number or account id", field="phone")
    why = check_reason(reason) if reveal_as is not None else ""
    vault = await stores.vault()
    async with transaction(stores.pool, stores.settings) as conn:
        if phone is not None:
            bidx = vault.blind_index(normalize_mobile(phone), purpose=PHONE_INDEX, normalize=normalize_phone)
            found = await repository.account_by_phone(conn, bidx)
            account_id = found["id"] if found is not None else None
        elif id_number is not None:
            bidx = vault.blind_index(
                normalize_id_number_input(id_number),
                purpose=ID_NUMBER_INDEX,
                normalize=normalize_id_number,
            )
            found = await repository.account_by_id_number(conn, bidx)
            account_id = found["id"] if found is not None else None
        if account_id is None:
            return None
        return await _summary(vault, conn, account_id, reveal_as, why)


async def _summary(
    vault: Vault, conn: asyncpg.Connection, account_id: UUID, reveal_as: str | None, reason: str
) -> AccountSummary | None:
    account = await repository.account_by_id(conn, account_id)
    if account is None:
        return None
    if reveal_as is not None:
        phone = await _decrypt(vault, conn, account, PHONE_COLUMN, reveal_as, reason) or ""
        name = await _decrypt(vault, conn, account, NAME_COLUMN, reveal_as, reason)
        id_number = await _decrypt(vault, conn, account, ID_NUMBER_COLUMN, reveal_as, reason)
    else:
        phone, name, id_number = account["phone_masked"], account["name_masked"], account["id_number_masked"]
    sessions = await repository.active_sessions(conn, account_id)
    return AccountSummary(
        id=account["id"],
        status=account["status"],
        level=account["level"],
        amr=list(account["amr"]),
        phone=phone,
        name=name,
        id_number=id_number,
        revealed=reveal_as is not None,
        banned_reason=account["banned_reason"],
        created_at=account["created_at"],
        updated_at=account["updated_at"],
        sessions=[
            SessionSummary(
                id=row["id"],
                device_id=row["device_id"],
                device_name=row["device_name"],
                created_at=row["created_at"],
                last_seen_at=row["last_seen_at"],
            )
            for row in sessions
        ],
        deletion=deletion_state(await repository.deletion_of(conn, account_id)),
    )


async def ban_account(stores: Stores, account_id: UUID, reason: str, actor: str) -> int:
    """Suspend the account and end every session at once (their access tokens fail on every API process).
    Returns how many sessions were ended."""
    why = check_reason(reason)
    async with transaction(stores.pool, stores.settings) as conn:
        account = await repository.account_by_id(conn, account_id, for_update=True)
        if account is None or account["status"] == "deleted":
            raise NotFound("no such account")
        await repository.set_account_status(conn, account_id, "banned", banned_reason=why)
        await repository.add_event(conn, account_id, "banned", actor)
    # Committed first: from here login and refresh refuse, so no new session can appear after this.
    return await service.revoke_all_sessions(stores, account_id, "banned", actor)


async def unban_account(stores: Stores, account_id: UUID, actor: str) -> str:
    """Lift a ban; the account goes back to 'deleting' if a deletion is pending, else 'active'."""
    async with transaction(stores.pool, stores.settings) as conn:
        account = await repository.account_by_id(conn, account_id, for_update=True)
        if account is None or account["status"] == "deleted":
            raise NotFound("no such account")
        if account["status"] != "banned":
            raise Conflict(f"the account is not banned (status {account['status']})", code="not_banned")
        pending = deletion_state(await repository.deletion_of(conn, account_id)).state == "pending"
        status = "deleting" if pending else "active"
        await repository.set_account_status(conn, account_id, status)
        await repository.add_event(conn, account_id, "unbanned", actor)
    return status


async def revoke_session_as(stores: Stores, session_id: UUID, actor: str) -> UUID:
    """End one session of any account (ops); returns its account. NotFound if none is active."""
    async with transaction(stores.pool, stores.settings) as conn:
        account_id = await repository.session_account(conn, session_id)
        if account_id is None or not await repository.revoke_session(conn, session_id, "revoked_by_ops"):
            raise NotFound("no such active session")
        await repository.add_event(conn, account_id, "session_revoked", actor, {"session": str(session_id)})
    await revocation.publish(stores, [str(session_id)])
    return account_id


async def revoke_account_sessions_as(stores: Stores, account_id: UUID, actor: str) -> int:
    """End every session of the account (ops); returns how many."""
    async with connection(stores.pool, stores.settings) as conn:
        if await repository.account_by_id(conn, account_id) is None:
            raise NotFound("no such account")
    return await service.revoke_all_sessions(stores, account_id, "revoked_by_ops", actor)


# --- disclosure to a recipient the holder consented to (mini-apps) -----------------------------------------

DisclosedField = Literal["phone", "name", "id_number", "id_number_masked"]


async def disclose(
    conn: asyncpg.Connection,
    vault: Vault,
    account_id: UUID,
    field: DisclosedField,
    *,
    actor: str,
    reason: str,
) -> str | None:
    """One field of an active account, for a recipient whose consent the caller checked in this same
    transaction: decrypted through the vault (one PII access-log row naming `actor`), or the stored masked
    form for id_number_masked. None when the account is not active or never had the value."""
    account = await repository.account_by_id(conn, account_id)
    if account is None or account["status"] != "active":
        return None
    if field == "id_number_masked":
        masked: str | None = account["id_number_masked"]
        return masked
    return await _decrypt(vault, conn, account, field, actor, reason)


async def identity_matches(
    conn: asyncpg.Connection,
    vault: Vault,
    account_id: UUID,
    name: str,
    id_number: str,
    *,
    actor: str,
    reason: str,
) -> bool | None:
    """Whether the account's verified identity is this name and ID number, revealing neither: the ID number
    is compared by blind index (nothing decrypted), the name is decrypted (and logged) only when that
    matched. None when the account is not active or has no verified identity."""
    from auth.realname import normalize_real_name

    account = await repository.identity_of(conn, account_id)
    if account is None or account["status"] != "active" or account["id_number_bidx"] is None:
        return None
    wanted = vault.blind_index(id_number, purpose=ID_NUMBER_INDEX, normalize=normalize_id_number)
    if bytes(account["id_number_bidx"]) != wanted:
        return False
    stored = await vault.decrypt(
        conn,
        account["name_enc"],
        table=TABLE,
        column=NAME_COLUMN,
        row_id=account_id,
        actor=actor,
        reason=reason,
    )
    return normalize_real_name(stored) == normalize_real_name(name)
