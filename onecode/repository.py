"""SQL of the one-code capability. Nothing else touches these tables; other capabilities (and the API) go
through the onecode service modules."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from uuid import UUID

import asyncpg
from asyncpg import Connection as Conn

# =========================================================================================================
# citizen side: links, device keys, authorisations, ledger, reconciliation
# =========================================================================================================


async def lock_account(conn: Conn, account_id: UUID) -> None:
    """Serialise one account's link, device and authorisation changes until the transaction ends."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"tongban.onecode:{account_id}"
    )


# --- links -----------------------------------------------------------------------------------------------

_LINK_COLUMNS = (
    "id, account_id, kind, provider_ref, provider_ref_enc, ref_masked, status, linked_at, unlinked_at"
)


async def insert_link(
    conn: Conn,
    *,
    link_id: UUID,
    account_id: UUID,
    kind: str,
    provider_ref: str | None,
    provider_ref_enc: bytes | None,
    ref_masked: str,
) -> asyncpg.Record:
    """UniqueViolationError when the account already has an active link of this kind."""
    row: asyncpg.Record = await conn.fetchrow(
        f"""INSERT INTO onecode_links (id, account_id, kind, provider_ref, provider_ref_enc, ref_masked, status)
            VALUES ($1, $2, $3, $4, $5, $6, 'active') RETURNING {_LINK_COLUMNS}""",  # noqa: S608 (constant)
        link_id,
        account_id,
        kind,
        provider_ref,
        provider_ref_enc,
        ref_masked,
    )
    return row


async def active_link(conn: Conn, account_id: UUID, kind: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_LINK_COLUMNS} FROM onecode_links WHERE account_id = $1 AND kind = $2 AND status = 'active'",  # noqa: S608
        account_id,
        kind,
    )


async def active_links(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT {_LINK_COLUMNS} FROM onecode_links WHERE account_id = $1 AND status = 'active'
            ORDER BY kind""",  # noqa: S608
        account_id,
    )
    return rows


async def link_by_id(conn: Conn, link_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_LINK_COLUMNS} FROM onecode_links WHERE id = $1", link_id)  # noqa: S608


async def unlink(conn: Conn, link_id: UUID) -> None:
    """The link ends; a medical link's personal reference goes with it."""
    await conn.execute(
        """UPDATE onecode_links
           SET status = 'unlinked', unlinked_at = now(), provider_ref_enc = NULL
           WHERE id = $1 AND status = 'active'""",
        link_id,
    )


async def links_of(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    """Every link of the account, active and past, newest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_LINK_COLUMNS} FROM onecode_links WHERE account_id = $1 ORDER BY linked_at DESC, id",  # noqa: S608
        account_id,
    )
    return rows


# --- device keys -----------------------------------------------------------------------------------------

_DEVICE_COLUMNS = "id, account_id, public_key, status, registered_at, revoked_at, revoked_reason"


async def count_active_devices(conn: Conn, account_id: UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM onecode_devices WHERE account_id = $1 AND status = 'active'", account_id
    )
    return count


async def active_device_by_key(conn: Conn, public_key: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_DEVICE_COLUMNS} FROM onecode_devices WHERE public_key = $1 AND status = 'active'",  # noqa: S608
        public_key,
    )


async def key_was_revoked(conn: Conn, public_key: bytes) -> bool:
    revoked: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM onecode_devices WHERE public_key = $1 AND status = 'revoked')",
        public_key,
    )
    return revoked


async def insert_device(conn: Conn, device_id: UUID, account_id: UUID, public_key: bytes) -> asyncpg.Record:
    """UniqueViolationError when the key is active on some account."""
    row: asyncpg.Record = await conn.fetchrow(
        f"""INSERT INTO onecode_devices (id, account_id, public_key, status) VALUES ($1, $2, $3, 'active')
            RETURNING {_DEVICE_COLUMNS}""",  # noqa: S608
        device_id,
        account_id,
        public_key,
    )
    return row


async def device_of(conn: Conn, account_id: UUID, device_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_DEVICE_COLUMNS} FROM onecode_devices WHERE id = $1 AND account_id = $2",  # noqa: S608
        device_id,
        account_id,
    )


async def devices_of(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    """The account's active device keys, oldest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT {_DEVICE_COLUMNS} FROM onecode_devices WHERE account_id = $1 AND status = 'active'
            ORDER BY registered_at, id""",  # noqa: S608
        account_id,
    )
    return rows


async def revoke_devices(
    conn: Conn, account_id: UUID, device_ids: Sequence[UUID] | None, reason: str
) -> list[UUID]:
    """Revoke the account's active devices (those of `device_ids`, or all); their ids."""
    rows = await conn.fetch(
        """UPDATE onecode_devices SET status = 'revoked', revoked_at = now(), revoked_reason = $3
           WHERE account_id = $1 AND status = 'active' AND ($2::uuid[] IS NULL OR id = ANY ($2::uuid[]))
           RETURNING id""",
        account_id,
        None if device_ids is None else list(device_ids),
        reason,
    )
    return [row["id"] for row in rows]


# --- authorisations --------------------------------------------------------------------------------------

_AUTHORISATION_COLUMNS = """a.code_id, a.account_id, a.device_id, d.public_key AS device_key, a.issuer_kid,
    a.issued_at, a.expires_at, a.scenes, a.ride_cap_fen, a.transit_link_id, a.medical_handle,
    a.medical_link_id, a.payment_handle, a.payment_link_id, a.signed, a.status, a.revoked_at, a.revoked_reason"""


async def insert_authorisation(
    conn: Conn,
    *,
    code_id: bytes,
    account_id: UUID,
    device_id: UUID,
    issuer_kid: bytes,
    issued_at: datetime,
    expires_at: datetime,
    scenes: int,
    ride_cap_fen: int,
    transit_link_id: UUID | None,
    medical_handle: bytes | None,
    medical_link_id: UUID | None,
    payment_handle: bytes | None,
    payment_link_id: UUID | None,
    signed: bytes,
) -> None:
    await conn.execute(
        """INSERT INTO onecode_authorisations (code_id, account_id, device_id, issuer_kid, issued_at, expires_at,
               scenes, ride_cap_fen, transit_link_id, medical_handle, medical_link_id, payment_handle,
               payment_link_id, signed, status)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'active')""",
        code_id,
        account_id,
        device_id,
        issuer_kid,
        issued_at,
        expires_at,
        scenes,
        ride_cap_fen,
        transit_link_id,
        medical_handle,
        medical_link_id,
        payment_handle,
        payment_link_id,
        signed,
    )


async def authorisation_by_code_id(conn: Conn, code_id: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""SELECT {_AUTHORISATION_COLUMNS} FROM onecode_authorisations a
            JOIN onecode_devices d ON d.id = a.device_id WHERE a.code_id = $1""",  # noqa: S608
        code_id,
    )


async def live_authorisations(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    """Active, unexpired authorisations of the account, newest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT {_AUTHORISATION_COLUMNS} FROM onecode_authorisations a
            JOIN onecode_devices d ON d.id = a.device_id
            WHERE a.account_id = $1 AND a.status = 'active' AND a.expires_at > now()
            ORDER BY a.created_at DESC""",  # noqa: S608
        account_id,
    )
    return rows


async def revoke_device_authorisations(conn: Conn, device_ids: Sequence[UUID], reason: str) -> list[bytes]:
    """Revoke every active authorisation made for these devices (expired ones too: a code made from one
    must never come back); their code ids."""
    rows = await conn.fetch(
        """UPDATE onecode_authorisations SET status = 'revoked', revoked_at = now(), revoked_reason = $2
           WHERE device_id = ANY ($1::uuid[]) AND status = 'active' RETURNING code_id""",
        list(device_ids),
        reason,
    )
    return [bytes(row["code_id"]) for row in rows]


async def revoke_authorisation(conn: Conn, code_id: bytes, reason: str) -> bool:
    status: str = await conn.execute(
        """UPDATE onecode_authorisations SET status = 'revoked', revoked_at = now(), revoked_reason = $2
           WHERE code_id = $1 AND status = 'active'""",
        code_id,
        reason,
    )
    return status.endswith(" 1")


async def handle_target(conn: Conn, handle: bytes, kind: str) -> asyncpg.Record | None:
    """The authorisation holding `handle` for `kind` (medical or payment), with the link it maps to."""
    handle_column, link_column = (
        ("medical_handle", "medical_link_id") if kind == "medical" else ("payment_handle", "payment_link_id")
    )
    return await conn.fetchrow(
        f"""SELECT a.code_id, a.account_id, a.status AS authorisation_status, a.expires_at,
                   l.id AS link_id, l.kind, l.provider_ref, l.provider_ref_enc, l.status AS link_status
            FROM onecode_authorisations a JOIN onecode_links l ON l.id = a.{link_column}
            WHERE a.{handle_column} = $1""",  # noqa: S608 (the columns are one of two constant pairs)
        handle,
    )


async def transit_target(conn: Conn, code_id: bytes) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT a.code_id, a.account_id, a.status AS authorisation_status, a.expires_at,
                  l.id AS link_id, l.kind, l.provider_ref, l.provider_ref_enc, l.status AS link_status
           FROM onecode_authorisations a JOIN onecode_links l ON l.id = a.transit_link_id
           WHERE a.code_id = $1""",
        code_id,
    )


async def revoked_code_ids(conn: Conn, margin_seconds: float) -> list[bytes]:
    """Revoked authorisations that a validator could still accept: expired less than `margin_seconds` ago
    or not at all."""
    rows = await conn.fetch(
        """SELECT code_id FROM onecode_authorisations
           WHERE status = 'revoked' AND expires_at > now() - make_interval(secs => $1)
           ORDER BY code_id""",
        margin_seconds,
    )
    return [bytes(row["code_id"]) for row in rows]


# --- ledger ----------------------------------------------------------------------------------------------


async def insert_posting(
    conn: Conn,
    *,
    posting_id: UUID,
    kind: str,
    reference: str,
    provider: str | None,
    amount_fen: int | None,
    occurred_at: datetime,
) -> bool:
    """False when (kind, reference) is already posted."""
    inserted = await conn.fetchval(
        """INSERT INTO onecode_postings (id, kind, reference, provider, amount_fen, occurred_at)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (kind, reference) DO NOTHING RETURNING true""",
        posting_id,
        kind,
        reference,
        provider,
        amount_fen,
        occurred_at,
    )
    return bool(inserted)


async def insert_entries(conn: Conn, posting_id: UUID, entries: Sequence[tuple[str, int, int]]) -> None:
    await conn.execute(
        """INSERT INTO onecode_ledger_entries (posting_id, account, debit_fen, credit_fen)
           SELECT $1, account, debit, credit
           FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS e (account, debit, credit)""",
        posting_id,
        [entry[0] for entry in entries],
        [entry[1] for entry in entries],
        [entry[2] for entry in entries],
    )


async def balances(conn: Conn, account_prefix: str | None) -> list[asyncpg.Record]:
    """Debits, credits and entry count per ledger account (those starting with `account_prefix`, or all)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT account, sum(debit_fen)::bigint AS debit_fen, sum(credit_fen)::bigint AS credit_fen,
                  count(*) AS entries
           FROM onecode_ledger_entries
           WHERE $1::text IS NULL OR starts_with(account, $1::text)
           GROUP BY account ORDER BY account""",
        account_prefix,
    )
    return rows


async def totals(conn: Conn) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """SELECT coalesce(sum(debit_fen), 0)::bigint AS debit_fen,
                  coalesce(sum(credit_fen), 0)::bigint AS credit_fen,
                  (SELECT count(*) FROM onecode_postings) AS postings
           FROM onecode_ledger_entries"""
    )
    return row


async def account_history(
    conn: Conn, account: str, *, limit: int, before: datetime | None
) -> list[asyncpg.Record]:
    """Postings touching `account`, newest first: the account's net debit in each."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT p.id, p.kind, p.reference, p.occurred_at, p.posted_at,
                  sum(e.debit_fen)::bigint - sum(e.credit_fen)::bigint AS net_debit_fen
           FROM onecode_ledger_entries e JOIN onecode_postings p ON p.id = e.posting_id
           WHERE e.account = $1 AND ($3::timestamptz IS NULL OR p.occurred_at < $3)
           GROUP BY p.id ORDER BY p.occurred_at DESC, p.id DESC LIMIT $2""",
        account,
        limit,
        before,
    )
    return rows


async def posting_entries(conn: Conn, kind: str, reference: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT p.id AS posting_id, p.kind, p.reference, p.provider, p.amount_fen, p.occurred_at,
                  e.account, e.debit_fen, e.credit_fen
           FROM onecode_postings p JOIN onecode_ledger_entries e ON e.posting_id = p.id
           WHERE p.kind = $1 AND p.reference = $2 ORDER BY e.id""",
        kind,
        reference,
    )
    return rows


async def recent_entries(conn: Conn, account: str | None, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT p.kind, p.reference, p.occurred_at, e.account, e.debit_fen, e.credit_fen
           FROM onecode_ledger_entries e JOIN onecode_postings p ON p.id = e.posting_id
           WHERE $1::text IS NULL OR e.account = $1
           ORDER BY e.id DESC LIMIT $2""",
        account,
        limit,
    )
    return rows


async def provider_postings_between(
    conn: Conn, provider: str, start: datetime, end: datetime
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT reference, amount_fen FROM onecode_postings
           WHERE provider = $1 AND occurred_at >= $2 AND occurred_at < $3""",
        provider,
        start,
        end,
    )
    return rows


async def provider_postings_by_reference(
    conn: Conn, provider: str, references: Sequence[str]
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT reference, amount_fen FROM onecode_postings WHERE provider = $1 AND reference = ANY ($2::text[])",
        provider,
        list(references),
    )
    return rows


# --- reconciliation --------------------------------------------------------------------------------------


async def insert_reconciliation(
    conn: Conn,
    *,
    run_id: UUID,
    provider: str,
    day: date,
    status: str,
    statement_lines: int,
    ledger_postings: int,
    mismatches: Sequence[tuple[str, str, int | None, int | None]],
    error: str | None,
    started_at: datetime,
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """INSERT INTO onecode_reconciliations (id, provider, day, status, statement_lines, ledger_postings,
               mismatches, error, started_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           RETURNING id, provider, day, status, statement_lines, ledger_postings, mismatches, error,
                     started_at, finished_at""",
        run_id,
        provider,
        day,
        status,
        statement_lines,
        ledger_postings,
        len(mismatches),
        error,
        started_at,
    )
    if mismatches:
        await conn.execute(
            """INSERT INTO onecode_reconciliation_mismatches (run_id, reference, problem, ledger_fen, statement_fen)
               SELECT $1, reference, problem, ledger_fen, statement_fen
               FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[])
                    AS m (reference, problem, ledger_fen, statement_fen)""",
            run_id,
            [m[0] for m in mismatches],
            [m[1] for m in mismatches],
            [m[2] for m in mismatches],
            [m[3] for m in mismatches],
        )
    return row


async def reconciled_days(conn: Conn, provider: str, days: Sequence[date]) -> set[date]:
    """Of `days`, those with a finished (not failed) reconciliation run for the provider."""
    rows = await conn.fetch(
        """SELECT DISTINCT day FROM onecode_reconciliations
           WHERE provider = $1 AND day = ANY ($2::date[]) AND status <> 'failed'""",
        provider,
        list(days),
    )
    return {row["day"] for row in rows}


async def latest_reconciliation(conn: Conn, provider: str, day: date) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT id, provider, day, status, statement_lines, ledger_postings, mismatches, error, started_at,
                  finished_at
           FROM onecode_reconciliations WHERE provider = $1 AND day = $2
           ORDER BY finished_at DESC LIMIT 1""",
        provider,
        day,
    )


async def reconciliation_mismatches(conn: Conn, run_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT reference, problem, ledger_fen, statement_fen FROM onecode_reconciliation_mismatches
           WHERE run_id = $1 ORDER BY id""",
        run_id,
    )
    return rows


# =========================================================================================================
# terminal side: terminals, rides, resolves (onecode.terminals, terminal_auth, rides, resolve, jobs)
# =========================================================================================================

# --- terminals -------------------------------------------------------------------------------------------

_TERMINAL_COLUMNS = "id, kind, name, owner, org_code, status, created_at, secret_changed_at"


async def insert_terminal(
    conn: Conn,
    terminal_id: UUID,
    *,
    kind: str,
    name: str,
    owner: str,
    org_code: str | None,
    secret_enc: bytes,
    master_key_id: str,
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        f"""INSERT INTO onecode_terminals (id, kind, name, owner, org_code, secret_enc, master_key_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_TERMINAL_COLUMNS}""",  # noqa: S608 (constant)
        terminal_id,
        kind,
        name,
        owner,
        org_code,
        secret_enc,
        master_key_id,
    )
    return row


async def list_terminals(conn: Conn, kind: str | None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT {_TERMINAL_COLUMNS} FROM onecode_terminals WHERE $1::text IS NULL OR kind = $1
            ORDER BY created_at, id""",  # noqa: S608
        kind,
    )
    return rows


async def set_terminal_status(conn: Conn, terminal_id: UUID, status: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"UPDATE onecode_terminals SET status = $2 WHERE id = $1 RETURNING {_TERMINAL_COLUMNS}",  # noqa: S608
        terminal_id,
        status,
    )


async def set_terminal_secret(
    conn: Conn, terminal_id: UUID, secret_enc: bytes, master_key_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""UPDATE onecode_terminals SET secret_enc = $2, master_key_id = $3, secret_changed_at = now()
            WHERE id = $1 RETURNING {_TERMINAL_COLUMNS}""",  # noqa: S608
        terminal_id,
        secret_enc,
        master_key_id,
    )


async def terminal_secrets_not_under(conn: Conn, master_key_id: str) -> list[asyncpg.Record]:
    """The terminals whose secret is wrapped under another master key, locked for a rewrap."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, secret_enc, master_key_id FROM onecode_terminals
           WHERE master_key_id <> $1 ORDER BY id FOR UPDATE""",
        master_key_id,
    )
    return rows


async def rewrap_terminal_secret(
    conn: Conn, terminal_id: UUID, secret_enc: bytes, master_key_id: str
) -> None:
    """The same secret under another master key (secret_changed_at stays: the terminal notices nothing)."""
    await conn.execute(
        "UPDATE onecode_terminals SET secret_enc = $2, master_key_id = $3 WHERE id = $1",
        terminal_id,
        secret_enc,
        master_key_id,
    )


async def terminal_credentials(conn: Conn, terminal_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT id, kind, name, owner, org_code, status, secret_enc, master_key_id
           FROM onecode_terminals WHERE id = $1""",
        terminal_id,
    )


# --- rides -----------------------------------------------------------------------------------------------

RIDE_STAGE_COLUMNS = ["ride_id", "code_id", "counter", "generated_at", "ridden_at", "fare_fen"]


async def stage_rides(conn: Conn, records: Sequence[tuple[object, ...]]) -> None:
    """Binary COPY of one upload into a temporary table that goes with the transaction."""
    await conn.execute(
        """CREATE TEMP TABLE onecode_stage_rides (
               ride_id text NOT NULL, code_id bytea NOT NULL, counter bigint NOT NULL,
               generated_at timestamptz NOT NULL, ridden_at timestamptz NOT NULL, fare_fen integer NOT NULL
           ) ON COMMIT DROP"""
    )
    await conn.copy_records_to_table("onecode_stage_rides", records=records, columns=RIDE_STAGE_COLUMNS)


async def merge_staged_rides(conn: Conn, terminal_id: UUID) -> list[int]:
    """Insert the staged rides this terminal has not uploaded before; the new rows' ids."""
    rows = await conn.fetch(
        """INSERT INTO onecode_rides (terminal_id, ride_id, code_id, counter, generated_at, ridden_at, fare_fen)
           SELECT $1, ride_id, code_id, counter, generated_at, ridden_at, fare_fen FROM onecode_stage_rides
           ON CONFLICT (terminal_id, ride_id) DO NOTHING
           RETURNING id""",
        terminal_id,
    )
    return [row["id"] for row in rows]


async def staged_codes_used_elsewhere(conn: Conn, terminal_id: UUID) -> list[bytes]:
    """Code ids of staged rides whose (code id, counter) another terminal reported too (a copied code)."""
    rows = await conn.fetch(
        """SELECT DISTINCT s.code_id FROM onecode_stage_rides s
           JOIN onecode_rides r ON r.code_id = s.code_id AND r.counter = s.counter AND r.terminal_id <> $1""",
        terminal_id,
    )
    return [bytes(row["code_id"]) for row in rows]


async def insert_rides(
    conn: Conn, rows: Sequence[tuple[UUID, str, bytes, int, datetime, datetime, int]]
) -> list[asyncpg.Record]:
    """Rides of online validators, (terminal id, ride id, code id, counter, generated at, ridden at, fare)
    each; (id, terminal_id, ride_id) of those not recorded before."""
    recorded: list[asyncpg.Record] = await conn.fetch(
        """INSERT INTO onecode_rides (terminal_id, ride_id, code_id, counter, generated_at, ridden_at, fare_fen)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bigint[], $5::timestamptz[],
                                $6::timestamptz[], $7::integer[])
           ON CONFLICT (terminal_id, ride_id) DO NOTHING
           RETURNING id, terminal_id, ride_id""",
        *(list(column) for column in zip(*rows, strict=True)),
    )
    return recorded


async def rides_to_settle(conn: Conn, ride_ids: Sequence[int]) -> list[asyncpg.Record]:
    """The pending rides among `ride_ids`, each with the id of the first ride of its (code id, counter)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT r.id, r.terminal_id, r.ride_id, r.code_id, r.counter, r.fare_fen, r.ridden_at,
                  (SELECT min(f.id) FROM onecode_rides f
                   WHERE f.code_id = r.code_id AND f.counter = r.counter) AS first_id
           FROM onecode_rides r
           WHERE r.id = ANY ($1::bigint[]) AND r.status = 'pending'
           ORDER BY r.id""",
        list(ride_ids),
    )
    return rows


async def pending_ride_ids(conn: Conn, uploaded_before: datetime, limit: int) -> list[int]:
    rows = await conn.fetch(
        """SELECT id FROM onecode_rides WHERE status = 'pending' AND uploaded_at < $1 ORDER BY id LIMIT $2""",
        uploaded_before,
        limit,
    )
    return [row["id"] for row in rows]


async def mark_ride_settled(conn: Conn, ride: int, provider_ref: str) -> bool:
    status = await conn.execute(
        """UPDATE onecode_rides SET status = 'settled', provider_ref = $2, settled_at = now()
           WHERE id = $1 AND status = 'pending'""",
        ride,
        provider_ref,
    )
    return str(status).endswith(" 1")


async def mark_ride_failed(conn: Conn, ride: int, failure: str) -> None:
    await conn.execute(
        "UPDATE onecode_rides SET status = 'failed', failure = $2 WHERE id = $1 AND status = 'pending'",
        ride,
        failure,
    )


async def rides_of_terminal(conn: Conn, terminal_id: UUID, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, terminal_id, ride_id, code_id, counter, generated_at, ridden_at, fare_fen, status,
                  provider_ref, failure, uploaded_at, settled_at
           FROM onecode_rides WHERE terminal_id = $1 ORDER BY id DESC LIMIT $2""",
        terminal_id,
        limit,
    )
    return rows


# --- resolves --------------------------------------------------------------------------------------------


async def insert_resolve(
    conn: Conn,
    *,
    terminal_id: UUID,
    scene: str,
    code_id: bytes | None,
    counter: int | None,
    amount_fen: int | None,
    result: str,
    reason: str,
    provider_ref: str | None,
    idempotency_key: str | None,
) -> bool:
    """False when a resolve with this idempotency key is recorded already."""
    inserted = await conn.fetchval(
        """INSERT INTO onecode_resolves (terminal_id, scene, code_id, counter, amount_fen, result, reason,
               provider_ref, idempotency_key)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (idempotency_key) DO NOTHING RETURNING true""",
        terminal_id,
        scene,
        code_id,
        counter,
        amount_fen,
        result,
        reason,
        provider_ref,
        idempotency_key,
    )
    return bool(inserted)


async def resolve_by_idempotency_key(conn: Conn, idempotency_key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT id, terminal_id, scene, code_id, counter, amount_fen, result, reason, provider_ref, created_at
           FROM onecode_resolves WHERE idempotency_key = $1""",
        idempotency_key,
    )
