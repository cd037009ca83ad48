"""SQL of the health capability (rule inputs, rule sets, statuses and history, imports). Nothing else
touches these tables; other capabilities and the API go through the service functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from uuid import UUID

import asyncpg
from asyncpg import Connection as Conn

# Advisory lock class of "recomputing this account's status" (with hashtext(account id) as the key).
STATUS_LOCK_CLASS = 4004
# Statements of an import move millions of rows: they get this long instead of the pool's command timeout.
IMPORT_TIMEOUT = 3600.0

# --- rule sets ----------------------------------------------------------------------------------------


async def latest_rule_set(conn: Conn) -> asyncpg.Record | None:
    """The rule set in force: the one activated last."""
    return await conn.fetchrow(
        "SELECT version, document::text AS document, sha256, activated_at, activated_by "
        "FROM health_rule_sets ORDER BY activated_at DESC LIMIT 1"
    )


async def rule_set(conn: Conn, version: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT version, sha256 FROM health_rule_sets WHERE version = $1", version)


async def activate_rule_set(conn: Conn, version: str, document_json: str, sha256: bytes, by: str) -> None:
    await conn.execute(
        """INSERT INTO health_rule_sets (version, document, sha256, activated_by, activated_at)
           VALUES ($1, $2::jsonb, $3, $4, clock_timestamp())
           ON CONFLICT (version) DO UPDATE
           SET activated_at = clock_timestamp(), activated_by = EXCLUDED.activated_by""",
        version,
        document_json,
        sha256,
        by,
    )


async def rule_sets(conn: Conn) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT version, sha256, activated_by, activated_at FROM health_rule_sets ORDER BY activated_at DESC"
    )
    return rows


# --- inputs ---------------------------------------------------------------------------------------------


async def insert_trip(
    conn: Conn, trip_id: UUID, account_id: UUID, region: str, venue_id: UUID | None, at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO health_trips (id, account_id, region_code, venue_id, at) VALUES ($1, $2, $3, $4, $5)",
        trip_id,
        account_id,
        region,
        venue_id,
        at,
    )


async def risk_area_covers(conn: Conn, region: str, at: datetime) -> bool:
    """Some risk area (any level) covered `region` at `at`: its province, prefecture or county code."""
    found: bool = await conn.fetchval(
        """SELECT EXISTS (
               SELECT 1 FROM health_risk_areas
               WHERE prefix IN (left($1, 2), left($1, 4), $1)
                 AND valid_from <= $2 AND (valid_to IS NULL OR $2 < valid_to))""",
        region,
        at,
    )
    return found


async def insert_test(conn: Conn, account_id: UUID, result: str, sampled_at: datetime) -> bool:
    """False when the same result was already recorded."""
    inserted = await conn.fetchval(
        """INSERT INTO health_tests (account_id, sampled_at, result) VALUES ($1, $2, $3)
           ON CONFLICT DO NOTHING RETURNING 1""",
        account_id,
        sampled_at,
        result,
    )
    return inserted is not None


async def upsert_vaccination(conn: Conn, account_id: UUID, dose: int, at: datetime) -> None:
    await conn.execute(
        """INSERT INTO health_vaccinations (account_id, dose, at) VALUES ($1, $2, $3)
           ON CONFLICT (account_id, dose) DO UPDATE SET at = EXCLUDED.at""",
        account_id,
        dose,
        at,
    )


async def insert_mark(
    conn: Conn, mark_id: UUID, account_id: UUID, colour: str, reason: str, by: str, at: datetime
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """INSERT INTO health_manual_marks (id, account_id, colour, reason, marked_by, at)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
        mark_id,
        account_id,
        colour,
        reason,
        by,
        at,
    )
    return row


async def clear_mark(conn: Conn, mark_id: UUID, by: str, at: datetime) -> asyncpg.Record | None:
    """The mark, cleared now unless it already was; None when there is no such mark."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """UPDATE health_manual_marks SET cleared_at = greatest($3, at), cleared_by = $2
           WHERE id = $1 AND cleared_at IS NULL RETURNING *""",
        mark_id,
        by,
        at,
    )
    if row is None:
        row = await conn.fetchrow("SELECT * FROM health_manual_marks WHERE id = $1", mark_id)
    return row


async def marks_of_account(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM health_manual_marks WHERE account_id = $1 ORDER BY at DESC, id DESC", account_id
    )
    return rows


async def insert_appeal_outcome(
    conn: Conn,
    appeal_id: UUID,
    account_id: UUID,
    decision: str,
    reason_code: str | None,
    by: str,
    at: datetime,
) -> asyncpg.Record | None:
    """The stored outcome; None when this appeal already has one (the first decision stands)."""
    return await conn.fetchrow(
        """INSERT INTO health_appeal_outcomes (appeal_id, account_id, decision, reason_code, decided_by, at)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (appeal_id) DO NOTHING RETURNING *""",
        appeal_id,
        account_id,
        decision,
        reason_code,
        by,
        at,
    )


# --- inputs of many accounts at once (recompute) ----------------------------------------------------


async def trips_of(conn: Conn, account_ids: Sequence[UUID], since: datetime) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT account_id, region_code, venue_id, at FROM health_trips
           WHERE account_id = ANY($1::uuid[]) AND at >= $2""",
        account_ids,
        since,
    )
    return rows


async def areas_for_trips(conn: Conn, account_ids: Sequence[UUID], since: datetime) -> list[asyncpg.Record]:
    """The risk areas covering the accounts' trips since `since`, once per account."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT DISTINCT t.account_id, a.region_code, a.level, a.valid_from, a.valid_to
           FROM health_trips t
           JOIN health_risk_areas a
             ON a.prefix IN (left(t.region_code, 2), left(t.region_code, 4), t.region_code)
            AND a.valid_from <= t.at AND (a.valid_to IS NULL OR t.at < a.valid_to)
           WHERE t.account_id = ANY($1::uuid[]) AND t.at >= $2""",
        account_ids,
        since,
    )
    return rows


async def tests_of(conn: Conn, account_ids: Sequence[UUID], since: datetime) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT account_id, result, sampled_at FROM health_tests
           WHERE account_id = ANY($1::uuid[]) AND sampled_at >= $2""",
        account_ids,
        since,
    )
    return rows


async def vaccinations_of(conn: Conn, account_ids: Sequence[UUID]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT account_id, dose, at FROM health_vaccinations WHERE account_id = ANY($1::uuid[])", account_ids
    )
    return rows


async def marks_of(conn: Conn, account_ids: Sequence[UUID], now: datetime) -> list[asyncpg.Record]:
    """Marks active now or later (a mark counts until cleared, however old)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT account_id, colour, at, cleared_at FROM health_manual_marks
           WHERE account_id = ANY($1::uuid[]) AND (cleared_at IS NULL OR cleared_at > $2)""",
        account_ids,
        now,
    )
    return rows


async def appeals_of(conn: Conn, account_ids: Sequence[UUID], since: datetime) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT account_id, decision, reason_code, at FROM health_appeal_outcomes
           WHERE account_id = ANY($1::uuid[]) AND decision = 'approved' AND at >= $2""",
        account_ids,
        since,
    )
    return rows


# --- statuses -------------------------------------------------------------------------------------------


async def lock_accounts(conn: Conn, account_ids: Sequence[UUID]) -> None:
    """Serialise recomputes of the same accounts until the transaction ends. Taken in key order, so two
    batches that share accounts never wait for each other in a circle."""
    await conn.execute(
        """SELECT pg_advisory_xact_lock($2, k)
           FROM (SELECT DISTINCT hashtext(id::text) AS k FROM unnest($1::uuid[]) AS id ORDER BY k) AS keys""",
        account_ids,
        STATUS_LOCK_CLASS,
    )


_STATUS_COLUMNS = (
    "account_id, colour, reasons, rule_id, since, rule_version, version, valid_until, computed_at, changed_at"
)


async def status_of(conn: Conn, account_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_STATUS_COLUMNS} FROM health_status WHERE account_id = $1",  # noqa: S608
        account_id,
    )


async def statuses_of(conn: Conn, account_ids: Sequence[UUID]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_STATUS_COLUMNS} FROM health_status WHERE account_id = ANY($1::uuid[])",  # noqa: S608
        account_ids,
    )
    return rows


async def write_changes(conn: Conn, rows: Iterable[tuple[object, ...]]) -> None:
    """Upsert statuses that changed and append their history rows. Each row: (account_id, colour, reasons,
    rule_id, since, rule_version, version, valid_until, now)."""
    rows = list(rows)
    if not rows:
        return
    await conn.executemany(
        """INSERT INTO health_status (account_id, colour, reasons, rule_id, since, rule_version, version,
                                      valid_until, computed_at, changed_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
           ON CONFLICT (account_id) DO UPDATE SET
               colour = EXCLUDED.colour, reasons = EXCLUDED.reasons, rule_id = EXCLUDED.rule_id,
               since = EXCLUDED.since, rule_version = EXCLUDED.rule_version, version = EXCLUDED.version,
               valid_until = EXCLUDED.valid_until, computed_at = EXCLUDED.computed_at,
               changed_at = EXCLUDED.changed_at""",
        rows,
    )
    await conn.executemany(
        """INSERT INTO health_status_history (account_id, colour, reasons, rule_id, since, rule_version,
                                              version, changed_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        [(*row[:7], row[8]) for row in rows],
    )


async def touch_statuses(conn: Conn, rows: Iterable[tuple[UUID, str, datetime | None, datetime]]) -> None:
    """Statuses recomputed without a change: (account_id, rule_version, valid_until, computed_at)."""
    rows = list(rows)
    if rows:
        await conn.executemany(
            """UPDATE health_status SET rule_version = $2, valid_until = $3, computed_at = $4
               WHERE account_id = $1""",
            rows,
        )


async def history_of(
    conn: Conn, account_id: UUID, *, limit: int, before_version: int | None = None
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT version, colour, reasons, rule_id, since, rule_version, changed_at
           FROM health_status_history
           WHERE account_id = $1 AND ($2::bigint IS NULL OR version < $2)
           ORDER BY version DESC LIMIT $3""",
        account_id,
        before_version,
        limit,
    )
    return rows


async def accounts_with_status(conn: Conn, *, after: UUID | None, limit: int) -> list[UUID]:
    rows = await conn.fetch(
        """SELECT account_id FROM health_status WHERE ($1::uuid IS NULL OR account_id > $1)
           ORDER BY account_id LIMIT $2""",
        after,
        limit,
    )
    return [row["account_id"] for row in rows]


# --- imports --------------------------------------------------------------------------------------------
# Each import copies its rows into a temporary staging table (dropped at commit), merges them with one
# INSERT ... SELECT and, in the same transaction, finds the accounts whose status may change.


async def create_area_staging(conn: Conn) -> None:
    await conn.execute(
        """CREATE TEMP TABLE health_stage_areas (
               line bigint NOT NULL, region_code text COLLATE "C" NOT NULL, level text NOT NULL,
               valid_from timestamptz NOT NULL, valid_to timestamptz
           ) ON COMMIT DROP"""
    )


async def copy_area_rows(conn: Conn, records: Iterable[tuple[object, ...]]) -> None:
    await conn.copy_records_to_table(
        "health_stage_areas",
        records=records,
        columns=["line", "region_code", "level", "valid_from", "valid_to"],
        timeout=IMPORT_TIMEOUT,
    )


async def merge_areas(conn: Conn, import_id: UUID, lookback_from: datetime) -> tuple[int, list[UUID]]:
    """(rows stored, accounts with a trip since lookback_from inside an imported window, old or new).

    A later line wins over an earlier one for the same area and start. Windows are taken per region prefix
    (their hull, first start to last end), and old ends over all areas of a prefix starting inside it:
    one index range per prefix however many rows, and a few accounts too many recomputed is harmless."""
    await conn.execute(
        """CREATE TEMP TABLE health_stage_windows ON COMMIT DROP AS
           SELECT p.prefix, min(r.starts) AS starts, max(r.last_start) AS last_start,
                  CASE WHEN bool_or(r.open) THEN NULL ELSE max(r.ends) END AS ends
           FROM (SELECT region_code, min(valid_from) AS starts, max(valid_from) AS last_start,
                        bool_or(valid_to IS NULL) AS open, max(valid_to) AS ends
                 FROM health_stage_areas GROUP BY region_code) r
           CROSS JOIN LATERAL (SELECT CASE WHEN right(r.region_code, 4) = '0000' THEN left(r.region_code, 2)
                                           WHEN right(r.region_code, 2) = '00' THEN left(r.region_code, 4)
                                           ELSE r.region_code END AS prefix) p
           GROUP BY p.prefix""",
        timeout=IMPORT_TIMEOUT,
    )
    # Before the merge: an area that ends earlier now still moved accounts inside its old window.
    await conn.execute(
        """UPDATE health_stage_windows w SET ends = old.ends
           FROM (SELECT w2.prefix, max(coalesce(a.valid_to, 'infinity')) AS ends
                 FROM health_stage_windows w2
                 JOIN health_risk_areas a
                   ON a.prefix = w2.prefix AND a.valid_from BETWEEN w2.starts AND w2.last_start
                 GROUP BY w2.prefix) old
           WHERE w.prefix = old.prefix AND w.ends IS NOT NULL AND old.ends > w.ends""",
        timeout=IMPORT_TIMEOUT,
    )
    status = await conn.execute(
        """INSERT INTO health_risk_areas (region_code, level, valid_from, valid_to, import_id)
           SELECT DISTINCT ON (region_code, level, valid_from) region_code, level, valid_from, valid_to, $1
           FROM health_stage_areas ORDER BY region_code, level, valid_from, line DESC
           ON CONFLICT (region_code, level, valid_from) DO UPDATE
           SET valid_to = EXCLUDED.valid_to, import_id = EXCLUDED.import_id, updated_at = now()
           WHERE health_risk_areas.valid_to IS DISTINCT FROM EXCLUDED.valid_to""",
        import_id,
        timeout=IMPORT_TIMEOUT,
    )
    rows = await conn.fetch(
        """SELECT DISTINCT t.account_id
           FROM health_stage_windows w
           JOIN health_trips t
             ON t.region_code >= w.prefix AND t.region_code < w.prefix || ':'
            AND t.at >= greatest(w.starts, $1) AND (w.ends IS NULL OR t.at < w.ends)
           ORDER BY t.account_id""",
        lookback_from,
        timeout=IMPORT_TIMEOUT,
    )
    return int(status.split()[-1]), [row["account_id"] for row in rows]


async def create_person_staging(conn: Conn, kind: str) -> None:
    """Rows of tests ('tests': result, at) or vaccinations ('vaccinations': dose, at), already mapped to
    accounts (the ID numbers never reach the database)."""
    value = "result text NOT NULL" if kind == "tests" else "dose smallint NOT NULL"
    await conn.execute(
        f"""CREATE TEMP TABLE health_stage_people (
               line bigint NOT NULL, account_id uuid NOT NULL, {value}, at timestamptz NOT NULL
           ) ON COMMIT DROP"""
    )


async def copy_person_rows(conn: Conn, kind: str, records: Iterable[tuple[object, ...]]) -> None:
    await conn.copy_records_to_table(
        "health_stage_people",
        records=records,
        columns=["line", "account_id", "result" if kind == "tests" else "dose", "at"],
        timeout=IMPORT_TIMEOUT,
    )


async def merge_tests(conn: Conn, import_id: UUID, lookback_from: datetime) -> tuple[int, list[UUID]]:
    """(rows stored, accounts to recompute). A positive test in the lookback may turn anyone red; a
    negative one only clears evidence, so it matters only to accounts a rule currently holds for."""
    status = await conn.execute(
        """INSERT INTO health_tests (account_id, sampled_at, result, import_id)
           SELECT account_id, at, result, $1 FROM health_stage_people
           ON CONFLICT DO NOTHING""",
        import_id,
        timeout=IMPORT_TIMEOUT,
    )
    rows = await conn.fetch(
        """SELECT DISTINCT s.account_id FROM health_stage_people s
           LEFT JOIN health_status h ON h.account_id = s.account_id
           WHERE s.at >= $1 AND (s.result = 'positive' OR h.rule_id IS NOT NULL)
           ORDER BY s.account_id""",
        lookback_from,
        timeout=IMPORT_TIMEOUT,
    )
    return int(status.split()[-1]), [row["account_id"] for row in rows]


async def merge_vaccinations(conn: Conn, import_id: UUID) -> tuple[int, list[UUID]]:
    """(rows stored, accounts to recompute). A dose only ever stops a rule from holding, so only accounts a
    rule currently holds for can change. A later line wins for the same person and dose."""
    status = await conn.execute(
        """INSERT INTO health_vaccinations (account_id, dose, at, import_id)
           SELECT DISTINCT ON (account_id, dose) account_id, dose, at, $1
           FROM health_stage_people ORDER BY account_id, dose, line DESC
           ON CONFLICT (account_id, dose) DO UPDATE SET at = EXCLUDED.at, import_id = EXCLUDED.import_id
           WHERE health_vaccinations.at IS DISTINCT FROM EXCLUDED.at""",
        import_id,
        timeout=IMPORT_TIMEOUT,
    )
    rows = await conn.fetch(
        """SELECT DISTINCT s.account_id FROM health_stage_people s
           JOIN health_status h ON h.account_id = s.account_id AND h.rule_id IS NOT NULL
           ORDER BY s.account_id""",
        timeout=IMPORT_TIMEOUT,
    )
    return int(status.split()[-1]), [row["account_id"] for row in rows]


async def record_import(
    conn: Conn,
    import_id: UUID,
    kind: str,
    file_sha256: bytes,
    *,
    rows_read: int,
    rows_stored: int,
    rows_unknown: int,
    accounts_scheduled: int,
    by: str,
    started_at: datetime,
) -> None:
    await conn.execute(
        """INSERT INTO health_imports (id, kind, file_sha256, rows_read, rows_stored, rows_unknown,
                                       accounts_scheduled, imported_by, started_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        import_id,
        kind,
        file_sha256,
        rows_read,
        rows_stored,
        rows_unknown,
        accounts_scheduled,
        by,
        started_at,
    )


# --- scans, venues, appeals (C2) ---------------------------------------------------------------------


async def insert_checkpoint(conn: Conn, checkpoint_id: UUID, name: str, secret_hash: bytes) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """INSERT INTO checkpoints (id, name, secret_hash, status) VALUES ($1, $2, $3, 'active')
           RETURNING id, name, status, created_at""",
        checkpoint_id,
        name,
        secret_hash,
    )
    return row


async def checkpoint_secret(conn: Conn, checkpoint_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, name, secret_hash, status FROM checkpoints WHERE id = $1", checkpoint_id
    )


async def list_checkpoints(conn: Conn) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT c.id, c.name, c.status, c.created_at,
                  (SELECT max(s.scanned_at) FROM scans s WHERE s.checkpoint_id = c.id) AS last_scan_at
           FROM checkpoints c ORDER BY c.created_at, c.id"""
    )
    return rows


async def set_checkpoint_status(conn: Conn, checkpoint_id: UUID, status: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE checkpoints SET status = $2 WHERE id = $1 RETURNING id, name, status, created_at",
        checkpoint_id,
        status,
    )


async def insert_scans(conn: Conn, rows: Sequence[tuple[object, ...]]) -> None:
    """One statement (so one commit) for a whole batch. Each row: (checkpoint_id, kid, rid, colour, valid,
    reason, scanned_at)."""
    columns = list(zip(*rows, strict=True))
    await conn.execute(
        """INSERT INTO scans (checkpoint_id, kid, rid, colour, valid, reason, scanned_at)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::text[],
                                $7::timestamptz[])""",
        *columns,
    )


async def scans_of_checkpoint(conn: Conn, checkpoint_id: UUID, *, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, checkpoint_id, kid, rid, colour, valid, reason, scanned_at, recorded_at FROM scans
           WHERE checkpoint_id = $1 ORDER BY scanned_at DESC, id DESC LIMIT $2""",
        checkpoint_id,
        limit,
    )
    return rows


_VENUE_COLUMNS = "id, owner_account, name, region, address, status, created_at"


async def insert_venue(
    conn: Conn, venue_id: UUID, owner: UUID, name: str, region: str, address: str
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        f"""INSERT INTO venues (id, owner_account, name, region, address, status)
            VALUES ($1, $2, $3, $4, $5, 'active') RETURNING {_VENUE_COLUMNS}""",  # noqa: S608
        venue_id,
        owner,
        name,
        region,
        address,
    )
    return row


async def venue(conn: Conn, venue_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_VENUE_COLUMNS} FROM venues WHERE id = $1", venue_id)  # noqa: S608


async def venues_of_owner(conn: Conn, owner: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_VENUE_COLUMNS} FROM venues WHERE owner_account = $1 ORDER BY created_at, id",  # noqa: S608
        owner,
    )
    return rows


async def set_venue_status(conn: Conn, venue_id: UUID, status: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"UPDATE venues SET status = $2 WHERE id = $1 RETURNING {_VENUE_COLUMNS}",  # noqa: S608
        venue_id,
        status,
    )


_APPEAL_COLUMNS = "id, account_id, reason, status, decided_by, decision_note, created_at, decided_at"
# Advisory lock class of "filing an appeal for this account" (with hashtext(account id) as the key).
APPEAL_LOCK_CLASS = 4007


async def lock_appeals_of(conn: Conn, account_id: UUID) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2::uuid::text))", APPEAL_LOCK_CLASS, account_id
    )


async def pending_appeal_of(conn: Conn, account_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_APPEAL_COLUMNS} FROM appeals WHERE account_id = $1 AND status = 'pending'",  # noqa: S608
        account_id,
    )


async def insert_appeal(conn: Conn, appeal_id: UUID, account_id: UUID, reason: str) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        f"""INSERT INTO appeals (id, account_id, reason, status) VALUES ($1, $2, $3, 'pending')
            RETURNING {_APPEAL_COLUMNS}""",  # noqa: S608
        appeal_id,
        account_id,
        reason,
    )
    return row


async def appeal_for_update(conn: Conn, appeal_id: UUID) -> asyncpg.Record | None:
    query = f"SELECT {_APPEAL_COLUMNS} FROM appeals WHERE id = $1 FOR UPDATE"  # noqa: S608
    return await conn.fetchrow(query, appeal_id)


async def decide_appeal(
    conn: Conn, appeal_id: UUID, status: str, decided_by: UUID | None, note: str | None
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        f"""UPDATE appeals SET status = $2, decided_by = $3, decision_note = $4, decided_at = now()
            WHERE id = $1 RETURNING {_APPEAL_COLUMNS}""",  # noqa: S608
        appeal_id,
        status,
        decided_by,
        note,
    )
    return row


async def appeals_by_status(conn: Conn, status: str | None, *, limit: int) -> list[asyncpg.Record]:
    """Oldest first: the queue order."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT {_APPEAL_COLUMNS} FROM appeals WHERE ($1::text IS NULL OR status = $1)
            ORDER BY created_at, id LIMIT $2""",  # noqa: S608
        status,
        limit,
    )
    return rows


async def appeals_of_account(conn: Conn, account_id: UUID, *, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT {_APPEAL_COLUMNS} FROM appeals WHERE account_id = $1
            ORDER BY created_at DESC, id DESC LIMIT $2""",  # noqa: S608
        account_id,
        limit,
    )
    return rows


# The venue signer's certificates (health_code.venues) live in app_meta under this prefix: the issuer's
# pass_certificates holds the pass signers it retires together, which must not include them.
TRUST_META_PREFIX = "health.trust."


async def put_trust_record(conn: Conn, key: str, value_json: str) -> str | None:
    """Store `value_json` under TRUST_META_PREFIX + key unless something is there already; returns the
    stored value (the first writer wins, so processes racing to issue one certificate agree on it), or
    None when another transaction stored one at the same moment (read it again)."""
    stored: str | None = await conn.fetchval(
        """WITH inserted AS (
               INSERT INTO app_meta (key, value) VALUES ($1, $2::jsonb)
               ON CONFLICT (key) DO NOTHING RETURNING value::text)
           SELECT value FROM inserted
           UNION ALL SELECT value::text FROM app_meta WHERE key = $1
           LIMIT 1""",
        TRUST_META_PREFIX + key,
        value_json,
    )
    return stored


async def trust_records(conn: Conn, kind: str) -> list[asyncpg.Record]:
    """(key without the prefix, value as text) of every record of one kind (e.g. 'venue-signer.')."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT substr(key, $2) AS key, value::text AS value FROM app_meta
           WHERE starts_with(key, $1) ORDER BY key""",
        TRUST_META_PREFIX + kind,
        len(TRUST_META_PREFIX) + 1,
    )
    return rows


# --- issuance (C1) ---------------------------------------------------------------------------------------
# Certificates of our root and signers, pass subjects, imported trust and published trust lists. Status
# changes (health_status.changed_at) are read here too: they are what revokes older passes.

_CERT_COLUMNS = (
    "kid8, role, key_kid, province, der, pass_types, not_before, not_after, status, trusted_until, "
    "created_at, retired_at"
)
# Advisory lock keys (pg_advisory_xact_lock(hashtextextended(name, 0))) of certificate issuance and of
# publishing a trust list: one process at a time, across the cluster.
ISSUANCE_LOCK = "tongban.pass_certificates"
TRUST_LIST_LOCK = "tongban.pass_trust_lists"


async def lock_named(conn: Conn, name: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", name)


async def insert_certificate(
    conn: Conn,
    *,
    kid8: bytes,
    role: str,
    key_kid: str,
    province: str,
    der: bytes,
    pass_types: Sequence[str],
    not_before: datetime,
    not_after: datetime,
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        f"""INSERT INTO pass_certificates (kid8, role, key_kid, province, der, pass_types, not_before,
                                           not_after, status)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active') RETURNING {_CERT_COLUMNS}""",  # noqa: S608
        kid8,
        role,
        key_kid,
        province,
        der,
        list(pass_types),
        not_before,
        not_after,
    )
    return row


async def live_certificate(conn: Conn, role: str, key_kid: str) -> asyncpg.Record | None:
    """The active certificate of the key store key `key_kid`."""
    return await conn.fetchrow(
        f"SELECT {_CERT_COLUMNS} FROM pass_certificates "  # noqa: S608
        "WHERE role = $1 AND key_kid = $2 AND status = 'active'",
        role,
        key_kid,
    )


async def retire_certificates(
    conn: Conn, role: str, *, keep_key_kid: str, trusted_for: float
) -> list[asyncpg.Record]:
    """Retire the role's active certificates of other keys than `keep_key_kid`; they stay trusted (in the
    published list) for `trusted_for` seconds more, but never past their notAfter."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""UPDATE pass_certificates
            SET status = 'retired', retired_at = now(),
                trusted_until = least(not_after, now() + make_interval(secs => $3))
            WHERE role = $1 AND status = 'active' AND key_kid <> $2
            RETURNING {_CERT_COLUMNS}""",  # noqa: S608
        role,
        keep_key_kid,
        trusted_for,
    )
    return rows


async def retire_certificate(conn: Conn, kid8: bytes) -> None:
    """Retire one certificate (renewed for the same key); it stays trusted until its notAfter."""
    await conn.execute(
        """UPDATE pass_certificates SET status = 'retired', retired_at = now(), trusted_until = not_after
           WHERE kid8 = $1 AND status = 'active'""",
        kid8,
    )


async def certificates(conn: Conn) -> list[asyncpg.Record]:
    """Every certificate we made, roots first, newest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_CERT_COLUMNS} FROM pass_certificates "  # noqa: S608
        "ORDER BY role = 'root' DESC, created_at DESC"
    )
    return rows


async def trusted_signers(conn: Conn) -> list[asyncpg.Record]:
    """Our signer certificates verifiers should trust now: active ones, and retired ones whose passes may
    still be valid."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT {_CERT_COLUMNS} FROM pass_certificates
            WHERE role = 'signer' AND not_after > now()
              AND (status = 'active' OR trusted_until > now())
            ORDER BY created_at""",  # noqa: S608
    )
    return rows


async def lock_status_shared(conn: Conn, account_id: UUID) -> None:
    """Wait for a recompute of the account in flight (it holds the exclusive STATUS_LOCK_CLASS lock) and
    keep it from starting until this transaction ends: a status read under this lock is the newest."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock_shared($2, hashtext($1::uuid::text))", account_id, STATUS_LOCK_CLASS
    )


async def subject_of(conn: Conn, account_id: UUID) -> str | None:
    sub: str | None = await conn.fetchval("SELECT sub FROM pass_subjects WHERE account_id = $1", account_id)
    return sub


async def insert_subject(conn: Conn, account_id: UUID, sub: str) -> str:
    """The account's subject: `sub` when it had none, else the one it has."""
    stored: str | None = await conn.fetchval(
        """INSERT INTO pass_subjects (account_id, sub) VALUES ($1, $2)
           ON CONFLICT (account_id) DO NOTHING RETURNING sub""",
        account_id,
        sub,
    )
    if stored is None:  # another request gave the account its subject first (a new statement sees it)
        stored = await subject_of(conn, account_id)
    assert stored is not None
    return stored


# Status changes read back per account to place a revocation time (passes.revocation_cutoff).
RECENT_CHANGES = 8


async def status_changes_since(conn: Conn, since: datetime) -> list[asyncpg.Record]:
    """(account_id, version, changed_at, sub, first_issued_at, recent_changes) of the statuses that changed
    after `since` and after the account's first pass (no pass is older than a change before that: such a
    change neither revokes nor makes a cached pass stale). recent_changes: the changed_at of the last
    RECENT_CHANGES versions, oldest first (from the history, through its primary key)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT h.account_id, h.version, h.changed_at, s.sub, s.first_issued_at,
                  ARRAY(SELECT r.changed_at FROM (
                            SELECT y.version, y.changed_at FROM health_status_history y
                            WHERE y.account_id = h.account_id AND y.version <= h.version
                            ORDER BY y.version DESC LIMIT $2) r
                        ORDER BY r.version) AS recent_changes
           FROM health_status h JOIN pass_subjects s ON s.account_id = h.account_id
           WHERE h.changed_at > $1 AND s.first_issued_at < h.changed_at""",
        since,
        RECENT_CHANGES,
    )
    return rows


# Imported trust


async def trust_source(conn: Conn, kind: str, issuer: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, kind, issuer, version, imported_at FROM pass_trust_sources WHERE kind = $1 AND issuer = $2",
        kind,
        issuer,
    )


async def replace_trust_source(
    conn: Conn,
    source_id: UUID,
    *,
    kind: str,
    issuer: str,
    version: int | None,
    root_der: bytes | None,
    file_sha256: bytes,
    signature_checked: bool,
    by: str,
) -> UUID:
    """Store a source (a new one, or the same kind and issuer again: its signers and revocations are
    dropped, the caller inserts the new ones). Returns the source's id."""
    stored: UUID = await conn.fetchval(
        """INSERT INTO pass_trust_sources (id, kind, issuer, version, root_der, file_sha256,
                                           signature_checked, imported_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (kind, issuer) DO UPDATE SET
               version = EXCLUDED.version, root_der = EXCLUDED.root_der, file_sha256 = EXCLUDED.file_sha256,
               signature_checked = EXCLUDED.signature_checked, imported_by = EXCLUDED.imported_by,
               imported_at = now()
           RETURNING id""",
        source_id,
        kind,
        issuer,
        version,
        root_der,
        file_sha256,
        signature_checked,
        by,
    )
    await conn.execute("DELETE FROM pass_trust_signers WHERE source_id = $1", stored)
    await conn.execute("DELETE FROM pass_trust_revocations WHERE source_id = $1", stored)
    return stored


async def insert_trust_signers(
    conn: Conn, source_id: UUID, signers: Iterable[tuple[bytes, str | None, bytes]]
) -> None:
    """(kid, region, der) rows."""
    await conn.executemany(
        "INSERT INTO pass_trust_signers (source_id, kid, region, der) VALUES ($1, $2, $3, $4)",
        [(source_id, kid, region, der) for kid, region, der in signers],
    )


async def insert_trust_revocations(conn: Conn, source_id: UUID, entries: Iterable[str]) -> None:
    await conn.executemany(
        "INSERT INTO pass_trust_revocations (source_id, entry) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [(source_id, entry) for entry in entries],
    )


async def bump_trust_generation(conn: Conn) -> int:
    generation: int = await conn.fetchval(
        "UPDATE pass_trust_state SET generation = generation + 1, updated_at = now() RETURNING generation"
    )
    return generation


async def trust_generation(conn: Conn) -> int:
    generation: int = await conn.fetchval("SELECT generation FROM pass_trust_state")
    return generation


async def imported_signers(conn: Conn) -> list[asyncpg.Record]:
    """(kind, issuer, kid, region, der) of every imported signer."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT s.kind, s.issuer, g.kid, g.region, g.der
           FROM pass_trust_signers g JOIN pass_trust_sources s ON s.id = g.source_id
           ORDER BY s.kind, s.issuer, g.id"""
    )
    return rows


async def imported_revocations(conn: Conn) -> list[str]:
    rows = await conn.fetch("SELECT DISTINCT entry FROM pass_trust_revocations")
    return [row["entry"] for row in rows]


# Published trust lists


async def latest_trust_list(conn: Conn) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT version, generated_at, document FROM pass_trust_lists ORDER BY version DESC LIMIT 1"
    )


async def insert_trust_list(conn: Conn, version: int, generated_at: datetime, document: bytes) -> None:
    await conn.execute(
        "INSERT INTO pass_trust_lists (version, generated_at, document) VALUES ($1, $2, $3)",
        version,
        generated_at,
        document,
    )


async def prune_trust_lists(conn: Conn, keep: int) -> None:
    """Keep the newest `keep` published lists."""
    await conn.execute(
        "DELETE FROM pass_trust_lists WHERE version <= (SELECT max(version) FROM pass_trust_lists) - $1", keep
    )
