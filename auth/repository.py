"""SQL of the accounts capability (accounts, sessions, refresh tokens, events). Nothing else touches
these tables; other capabilities go through auth's service functions."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from asyncpg import Connection as Conn


async def account_by_phone(conn: Conn, phone_bidx: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, status, level, amr FROM accounts WHERE phone_bidx = $1", phone_bidx
    )


async def account_by_id(conn: Conn, account_id: UUID, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT * FROM accounts WHERE id = $1{lock}", account_id)  # noqa: S608


async def account_by_id_number(conn: Conn, id_number_bidx: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, status, level FROM accounts WHERE id_number_bidx = $1", id_number_bidx
    )


async def insert_account(
    conn: Conn, account_id: UUID, phone_enc: bytes, phone_bidx: bytes, phone_masked: str
) -> bool:
    """False when another request registered the same phone first."""
    inserted = await conn.fetchval(
        """INSERT INTO accounts (id, phone_enc, phone_bidx, phone_masked) VALUES ($1, $2, $3, $4)
           ON CONFLICT (phone_bidx) DO NOTHING RETURNING id""",
        account_id,
        phone_enc,
        phone_bidx,
        phone_masked,
    )
    return inserted is not None


async def insert_session(
    conn: Conn, session_id: UUID, account_id: UUID, device_id: str, device_name: str, expires_at: datetime
) -> None:
    await conn.execute(
        """INSERT INTO sessions (id, account_id, device_id, device_name, expires_at)
           VALUES ($1, $2, $3, $4, $5)""",
        session_id,
        account_id,
        device_id,
        device_name,
        expires_at,
    )


async def insert_refresh_token(conn: Conn, token_hash: bytes, session_id: UUID, expires_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)",
        token_hash,
        session_id,
        expires_at,
    )


async def refresh_token_for_update(conn: Conn, token_hash: bytes) -> asyncpg.Record | None:
    """The refresh token with its session and account, both rows locked: concurrent refreshes of one
    session queue up here, so exactly one of them rotates."""
    return await conn.fetchrow(
        """SELECT rt.rotated_at, rt.expires_at AS token_expires_at,
                  s.id AS session_id, s.account_id, s.revoked_at, s.expires_at AS session_expires_at,
                  s.acting_enterprise, a.status, a.level, a.amr
           FROM refresh_tokens rt
           JOIN sessions s ON s.id = rt.session_id
           JOIN accounts a ON a.id = s.account_id
           WHERE rt.token_hash = $1
           FOR UPDATE OF rt, s""",
        token_hash,
    )


async def mark_rotated(conn: Conn, token_hash: bytes) -> None:
    await conn.execute("UPDATE refresh_tokens SET rotated_at = now() WHERE token_hash = $1", token_hash)


async def touch_session(conn: Conn, session_id: UUID) -> None:
    await conn.execute("UPDATE sessions SET last_seen_at = now() WHERE id = $1", session_id)


async def revoke_session(conn: Conn, session_id: UUID, reason: str, account_id: UUID | None = None) -> bool:
    """Revoke one session (of `account_id` when given). False if there was none to revoke."""
    revoked = await conn.fetchval(
        """UPDATE sessions SET revoked_at = now(), revoked_reason = $2
           WHERE id = $1 AND revoked_at IS NULL AND ($3::uuid IS NULL OR account_id = $3)
           RETURNING id""",
        session_id,
        reason,
        account_id,
    )
    return revoked is not None


async def revoke_account_sessions(conn: Conn, account_id: UUID, reason: str) -> list[str]:
    rows = await conn.fetch(
        """UPDATE sessions SET revoked_at = now(), revoked_reason = $2
           WHERE account_id = $1 AND revoked_at IS NULL RETURNING id""",
        account_id,
        reason,
    )
    return [str(row["id"]) for row in rows]


async def active_sessions(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, device_id, device_name, created_at, last_seen_at, expires_at, acting_enterprise
           FROM sessions WHERE account_id = $1 AND revoked_at IS NULL AND expires_at > now()
           ORDER BY last_seen_at DESC""",
        account_id,
    )
    return rows


async def revoked_since(conn: Conn, since: datetime) -> list[asyncpg.Record]:
    """Sessions revoked after `since`, oldest first (for the processes' in-memory revocation sets)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, revoked_at FROM sessions WHERE revoked_at > $1 ORDER BY revoked_at", since
    )
    return rows


async def add_event(
    conn: Conn, account_id: UUID, kind: str, actor: str, detail: dict[str, Any] | None = None
) -> None:
    await conn.execute(
        "INSERT INTO account_events (account_id, kind, actor, detail) VALUES ($1, $2, $3, $4::jsonb)",
        account_id,
        kind,
        actor,
        msgspec.json.encode(detail or {}).decode(),
    )


# --- real-name identity (L2 / L3) --------------------------------------------------------------------


async def identity_of(conn: Conn, account_id: UUID, *, for_update: bool = False) -> asyncpg.Record | None:
    """The account's level and stored identity (ciphertexts and blind index only)."""
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"""SELECT id, status, level, amr, name_enc, id_number_enc, id_number_bidx
            FROM accounts WHERE id = $1{lock}""",  # noqa: S608 (the lock clause is one of two constants)
        account_id,
    )


async def id_number_holder(conn: Conn, id_number_bidx: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, phone_enc FROM accounts WHERE id_number_bidx = $1", id_number_bidx)


async def set_real_name(
    conn: Conn,
    account_id: UUID,
    *,
    name_enc: bytes,
    name_masked: str,
    id_number_enc: bytes,
    id_number_bidx: bytes,
    id_number_masked: str,
) -> asyncpg.Record:
    """Level 2 (never lowers a level), amr gains "idcard". Raises UniqueViolationError when another account
    holds the ID number (the unique index on id_number_bidx)."""
    row: asyncpg.Record = await conn.fetchrow(
        """UPDATE accounts
           SET name_enc = $2, name_masked = $3, id_number_enc = $4, id_number_bidx = $5,
               id_number_masked = $6, level = GREATEST(level, 2),
               amr = CASE WHEN 'idcard' = ANY (amr) THEN amr ELSE array_append(amr, 'idcard') END,
               real_name_at = now(), updated_at = now()
           WHERE id = $1 RETURNING level, amr""",
        account_id,
        name_enc,
        name_masked,
        id_number_enc,
        id_number_bidx,
        id_number_masked,
    )
    return row


async def set_face_verified(conn: Conn, account_id: UUID) -> asyncpg.Record:
    """Level 3, amr gains "face"."""
    row: asyncpg.Record = await conn.fetchrow(
        """UPDATE accounts
           SET level = 3, amr = CASE WHEN 'face' = ANY (amr) THEN amr ELSE array_append(amr, 'face') END,
               face_verified_at = now(), updated_at = now()
           WHERE id = $1 RETURNING level, amr""",
        account_id,
    )
    return row


async def account_overview(conn: Conn, account_id: UUID) -> asyncpg.Record | None:
    """What GET /v1/me shows: masked forms only."""
    return await conn.fetchrow(
        """SELECT id, phone_masked, level, amr, status, name_masked, id_number_masked, created_at
           FROM accounts WHERE id = $1""",
        account_id,
    )


# --- legal persons (enterprises, members, acting identity) --------------------------------------------


async def insert_enterprise(
    conn: Conn, enterprise_id: UUID, uscc: str, name: str, legal_rep_account: UUID
) -> asyncpg.Record | None:
    """The new row, or None when the credit code is registered already (by anyone)."""
    return await conn.fetchrow(
        """INSERT INTO enterprises (id, uscc, name, legal_rep_account) VALUES ($1, $2, $3, $4)
           ON CONFLICT (uscc) DO NOTHING RETURNING id, uscc, name, registered_at""",
        enterprise_id,
        uscc,
        name,
        legal_rep_account,
    )


async def member_role(conn: Conn, enterprise_id: UUID, account_id: UUID, *, lock: bool = False) -> str | None:
    """The account's role in the enterprise. `lock` holds the membership (FOR SHARE) until the transaction
    ends, so a concurrent revocation waits for whatever was decided on the strength of it."""
    share = " FOR SHARE" if lock else ""
    role: str | None = await conn.fetchval(
        f"SELECT role FROM enterprise_members WHERE enterprise_id = $1 AND account_id = $2{share}",  # noqa: S608
        enterprise_id,
        account_id,
    )
    return role


async def put_member(
    conn: Conn, enterprise_id: UUID, account_id: UUID, role: str, granted_by: UUID
) -> asyncpg.Record:
    """Grant `role` (replacing a previous role); the membership row with the member's masked identity."""
    row: asyncpg.Record = await conn.fetchrow(
        """WITH granted AS (
               INSERT INTO enterprise_members (enterprise_id, account_id, role, granted_by)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (enterprise_id, account_id)
               DO UPDATE SET role = EXCLUDED.role, granted_by = EXCLUDED.granted_by, granted_at = now()
               RETURNING account_id, role, granted_by, granted_at)
           SELECT g.account_id, g.role, g.granted_by, g.granted_at, a.phone_masked, a.name_masked
           FROM granted g JOIN accounts a ON a.id = g.account_id""",
        enterprise_id,
        account_id,
        role,
        granted_by,
    )
    return row


async def delete_member(conn: Conn, enterprise_id: UUID, account_id: UUID) -> None:
    await conn.execute(
        "DELETE FROM enterprise_members WHERE enterprise_id = $1 AND account_id = $2",
        enterprise_id,
        account_id,
    )


async def enterprise_members(conn: Conn, enterprise_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT m.account_id, m.role, m.granted_by, m.granted_at, a.phone_masked, a.name_masked
           FROM enterprise_members m JOIN accounts a ON a.id = m.account_id
           WHERE m.enterprise_id = $1
           ORDER BY m.role = 'legal_representative' DESC, m.role = 'admin' DESC, m.granted_at""",
        enterprise_id,
    )
    return rows


async def account_enterprises(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT e.id, e.uscc, e.name, e.registered_at, m.role, m.granted_at
           FROM enterprise_members m JOIN enterprises e ON e.id = m.enterprise_id
           WHERE m.account_id = $1 ORDER BY m.granted_at, e.id""",
        account_id,
    )
    return rows


async def switch_acting_enterprise(
    conn: Conn, session_id: UUID, account_id: UUID, enterprise_id: UUID | None
) -> asyncpg.Record | None:
    """Set the acting identity of a live session of `account_id`; its account's status, level and amr
    (for the new token), or None when the session is not live (revoked, expired, someone else's)."""
    return await conn.fetchrow(
        """UPDATE sessions s SET acting_enterprise = $3, last_seen_at = now()
           FROM accounts a
           WHERE s.id = $1 AND s.account_id = $2 AND a.id = s.account_id
             AND s.revoked_at IS NULL AND s.expires_at > now()
           RETURNING a.status, a.level, a.amr""",
        session_id,
        account_id,
        enterprise_id,
    )


async def stop_acting_for(conn: Conn, enterprise_id: UUID, account_id: UUID) -> int:
    """Sessions of `account_id` acting for the enterprise act as the person again (membership revoked)."""
    status: str = await conn.execute(
        "UPDATE sessions SET acting_enterprise = NULL WHERE account_id = $1 AND acting_enterprise = $2",
        account_id,
        enterprise_id,
    )
    return int(status.rsplit(" ", 1)[1])


# --- PIPL rights (export, deletion) and the consent ledger --------------------------------------------


async def sessions_of(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    """Every session of the account, ended ones too (the export shows all devices ever used)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, device_id, device_name, acting_enterprise, created_at, last_seen_at, expires_at,
                  revoked_at, revoked_reason
           FROM sessions WHERE account_id = $1 ORDER BY created_at""",
        account_id,
    )
    return rows


async def events_of(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT kind, actor, detail::text AS detail, at FROM account_events WHERE account_id = $1 ORDER BY id",
        account_id,
    )
    return rows


async def memberships_of(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT e.id AS enterprise_id, e.name, e.uscc, m.role, m.granted_at
           FROM enterprise_members m JOIN enterprises e ON e.id = m.enterprise_id
           WHERE m.account_id = $1 ORDER BY m.granted_at""",
        account_id,
    )
    return rows


async def session_account(conn: Conn, session_id: UUID) -> UUID | None:
    account_id: UUID | None = await conn.fetchval("SELECT account_id FROM sessions WHERE id = $1", session_id)
    return account_id


async def set_account_status(
    conn: Conn, account_id: UUID, status: str, *, banned_reason: str | None = None
) -> None:
    await conn.execute(
        "UPDATE accounts SET status = $2, banned_reason = $3, updated_at = now() WHERE id = $1",
        account_id,
        status,
        banned_reason,
    )


async def deletion_of(conn: Conn, account_id: UUID, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        "SELECT account_id, requested_at, due_at, cancelled_at, completed_at "  # noqa: S608
        f"FROM account_deletions WHERE account_id = $1{lock}",
        account_id,
    )


async def upsert_deletion(conn: Conn, account_id: UUID, due_at: datetime) -> asyncpg.Record:
    """A new deletion request (the one row per account starts over after a cancelled one)."""
    row: asyncpg.Record = await conn.fetchrow(
        """INSERT INTO account_deletions (account_id, requested_at, due_at) VALUES ($1, now(), $2)
           ON CONFLICT (account_id) DO UPDATE
               SET requested_at = now(), due_at = EXCLUDED.due_at, cancelled_at = NULL, completed_at = NULL
           RETURNING account_id, requested_at, due_at, cancelled_at, completed_at""",
        account_id,
        due_at,
    )
    return row


async def cancel_deletion(conn: Conn, account_id: UUID) -> asyncpg.Record | None:
    """Cancel the pending request; None when there is none."""
    return await conn.fetchrow(
        """UPDATE account_deletions SET cancelled_at = now()
           WHERE account_id = $1 AND cancelled_at IS NULL AND completed_at IS NULL
           RETURNING account_id, requested_at, due_at, cancelled_at, completed_at""",
        account_id,
    )


async def complete_deletion(conn: Conn, account_id: UUID) -> None:
    await conn.execute("UPDATE account_deletions SET completed_at = now() WHERE account_id = $1", account_id)


async def due_deletions(conn: Conn, now: datetime, limit: int) -> list[UUID]:
    rows = await conn.fetch(
        """SELECT account_id FROM account_deletions
           WHERE cancelled_at IS NULL AND completed_at IS NULL AND due_at <= $1
           ORDER BY due_at LIMIT $2""",
        now,
        limit,
    )
    return [row["account_id"] for row in rows]


async def erase_account_pii(conn: Conn, account_id: UUID, placeholder_phone_bidx: bytes) -> None:
    """Personal data gone; the id stays as a pseudonym. phone_bidx is NOT NULL and unique, so it gets a
    random value that no phone hashes to: the phone (and the ID number) can register again."""
    await conn.execute(
        """UPDATE accounts
           SET phone_enc = ''::bytea, phone_bidx = $2, phone_masked = '',
               name_enc = NULL, name_masked = NULL,
               id_number_enc = NULL, id_number_bidx = NULL, id_number_masked = NULL,
               banned_reason = NULL, status = 'deleted', updated_at = now()
           WHERE id = $1""",
        account_id,
        placeholder_phone_bidx,
    )


async def scrub_sessions(conn: Conn, account_id: UUID) -> int:
    """Device ids and names may identify the person: blank them; delete every refresh token."""
    await conn.execute(
        """DELETE FROM refresh_tokens
           WHERE session_id IN (SELECT id FROM sessions WHERE account_id = $1)""",
        account_id,
    )
    status: str = await conn.execute(
        "UPDATE sessions SET device_id = '', device_name = '' WHERE account_id = $1", account_id
    )
    return int(status.rsplit(" ", 1)[1])


async def insert_consent(
    conn: Conn, consent_id: UUID, subject_id: UUID, recipient: str, scopes: list[str], purpose: str
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """INSERT INTO consents (id, subject_id, recipient, scopes, purpose) VALUES ($1, $2, $3, $4, $5)
           RETURNING id, recipient, scopes, purpose, granted_at, revoked_at""",
        consent_id,
        subject_id,
        recipient,
        scopes,
        purpose,
    )
    return row


async def active_consent_like(
    conn: Conn, subject_id: UUID, recipient: str, scopes: list[str], purpose: str
) -> asyncpg.Record | None:
    """An active consent with exactly these scopes and purpose (a repeated grant returns it)."""
    return await conn.fetchrow(
        """SELECT id, recipient, scopes, purpose, granted_at, revoked_at FROM consents
           WHERE subject_id = $1 AND recipient = $2 AND revoked_at IS NULL
             AND scopes @> $3 AND scopes <@ $3 AND purpose = $4
           ORDER BY granted_at LIMIT 1""",
        subject_id,
        recipient,
        scopes,
        purpose,
    )


async def consents_of(conn: Conn, subject_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, recipient, scopes, purpose, granted_at, revoked_at FROM consents
           WHERE subject_id = $1 ORDER BY granted_at, id""",
        subject_id,
    )
    return rows


async def consent_for_update(conn: Conn, subject_id: UUID, consent_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT id, recipient, scopes, purpose, granted_at, revoked_at FROM consents
           WHERE id = $1 AND subject_id = $2 FOR UPDATE""",
        consent_id,
        subject_id,
    )


async def revoke_consent(conn: Conn, consent_id: UUID) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """UPDATE consents SET revoked_at = now() WHERE id = $1
           RETURNING id, recipient, scopes, purpose, granted_at, revoked_at""",
        consent_id,
    )
    return row


async def revoke_all_consents(conn: Conn, subject_id: UUID) -> int:
    status: str = await conn.execute(
        "UPDATE consents SET revoked_at = now() WHERE subject_id = $1 AND revoked_at IS NULL", subject_id
    )
    return int(status.rsplit(" ", 1)[1])


async def has_active_consent(conn: Conn, subject_id: UUID, recipient: str, scope: str) -> bool:
    # Served by the partial index consents_subject (subject_id, recipient) WHERE revoked_at IS NULL.
    found: bool = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM consents
                          WHERE subject_id = $1 AND recipient = $2 AND revoked_at IS NULL
                            AND $3 = ANY (scopes))""",
        subject_id,
        recipient,
        scope,
    )
    return found


# --- for other capabilities: bulk lookups (health imports) --------------------------------------------


async def account_ids_by_id_number_bidx(conn: Conn, indexes: list[bytes]) -> list[asyncpg.Record]:
    """(id_number_bidx, id) of the accounts holding any of these ID-number blind indexes (erased accounts
    hold none). One index probe per value through accounts_id_number."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id_number_bidx, id FROM accounts WHERE id_number_bidx = ANY($1::bytea[])", indexes
    )
    return rows
