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


async def set_acting_enterprise(conn: Conn, session_id: UUID, enterprise_id: UUID | None) -> None:
    await conn.execute("UPDATE sessions SET acting_enterprise = $2 WHERE id = $1", session_id, enterprise_id)


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


# --- legal persons (enterprises, members, acting identity) --------------------------------------------


# --- PIPL rights (export, deletion) and the consent ledger --------------------------------------------
