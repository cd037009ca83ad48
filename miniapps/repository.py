"""SQL of the mini-apps capability. Nothing else touches these tables; other capabilities (and the SDK
endpoints' own modules) go through miniapps' service functions. Add new SQL under the section comment named
for its part."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from asyncpg import Connection as Conn

from miniapps.models import Actor

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# --- staff (platform roles) --------------------------------------------------------------------------------


async def staff_roles_of(conn: Conn, account_id: UUID) -> list[str]:
    rows = await conn.fetch("SELECT role FROM staff_roles WHERE account_id = $1 ORDER BY role", account_id)
    return [row["role"] for row in rows]


async def insert_staff_role(conn: Conn, account_id: UUID, role: str, granted_by: str) -> bool:
    """False when the account holds the role already. ForeignKeyViolationError for an unknown account."""
    inserted = await conn.fetchval(
        """INSERT INTO staff_roles (account_id, role, granted_by) VALUES ($1, $2, $3)
           ON CONFLICT DO NOTHING RETURNING account_id""",
        account_id,
        role,
        granted_by,
    )
    return inserted is not None


async def delete_staff_role(conn: Conn, account_id: UUID, role: str) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM staff_roles WHERE account_id = $1 AND role = $2 RETURNING account_id", account_id, role
    )
    return deleted is not None


async def list_staff(conn: Conn) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT account_id, role, granted_by, granted_at FROM staff_roles ORDER BY granted_at, role"
    )
    return rows


# --- audit -------------------------------------------------------------------------------------------------


async def add_audit(
    conn: Conn,
    *,
    action: str,
    actor: Actor,
    organisation_id: UUID | None = None,
    appid: str | None = None,
    version_id: UUID | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO miniapp_audit (organisation_id, appid, version_id, action, from_state, to_state, actor,
                                      actor_account, detail)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)""",
        organisation_id,
        appid,
        version_id,
        action,
        from_state,
        to_state,
        actor.label,
        actor.account_id,
        _json(detail or {}),
    )


async def audit_of_app(conn: Conn, appid: str, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM miniapp_audit WHERE appid = $1 ORDER BY id DESC LIMIT $2", appid, limit
    )
    return rows


async def audit_of_version(conn: Conn, version_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM miniapp_audit WHERE version_id = $1 ORDER BY id", version_id
    )
    return rows


# --- organisations and members -----------------------------------------------------------------------------


async def insert_organisation(
    conn: Conn, organisation_id: UUID, name: str, kind: str, region_code: str, created_by: str
) -> asyncpg.Record | None:
    """None when an organisation of that name exists."""
    return await conn.fetchrow(
        """INSERT INTO organisations (id, name, kind, region_code, created_by) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (name) DO NOTHING RETURNING *""",
        organisation_id,
        name,
        kind,
        region_code,
        created_by,
    )


async def list_organisations(conn: Conn) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM organisations ORDER BY created_at")
    return rows


async def organisations_of_account(conn: Conn, account_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT o.*, m.role FROM organisation_members m JOIN organisations o ON o.id = m.organisation_id
           WHERE m.account_id = $1 ORDER BY o.name""",
        account_id,
    )
    return rows


async def member_role(
    conn: Conn, organisation_id: UUID, account_id: UUID, *, lock: bool = False
) -> str | None:
    query = "SELECT role FROM organisation_members WHERE organisation_id = $1 AND account_id = $2"
    role: str | None = await conn.fetchval(
        query + " FOR UPDATE" if lock else query, organisation_id, account_id
    )
    return role


async def put_member(
    conn: Conn, organisation_id: UUID, account_id: UUID, role: str, granted_by: str
) -> asyncpg.Record:
    """Add the member, or change the role of an existing one."""
    row: asyncpg.Record = await conn.fetchrow(
        """INSERT INTO organisation_members (organisation_id, account_id, role, granted_by)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (organisation_id, account_id)
           DO UPDATE SET role = EXCLUDED.role, granted_by = EXCLUDED.granted_by, granted_at = now()
           RETURNING *""",
        organisation_id,
        account_id,
        role,
        granted_by,
    )
    return row


async def delete_member(conn: Conn, organisation_id: UUID, account_id: UUID) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM organisation_members WHERE organisation_id = $1 AND account_id = $2 RETURNING role",
        organisation_id,
        account_id,
    )
    return deleted is not None


async def members_of(conn: Conn, organisation_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM organisation_members WHERE organisation_id = $1 ORDER BY granted_at", organisation_id
    )
    return rows


async def lock_admins(conn: Conn, organisation_id: UUID) -> list[UUID]:
    """The organisation's admins, rows locked: two admins removing each other queue up here."""
    rows = await conn.fetch(
        """SELECT account_id FROM organisation_members WHERE organisation_id = $1 AND role = 'admin'
           ORDER BY account_id FOR UPDATE""",
        organisation_id,
    )
    return [row["account_id"] for row in rows]


# --- apps --------------------------------------------------------------------------------------------------


async def insert_app(
    conn: Conn,
    *,
    appid: str,
    organisation_id: UUID,
    name: str,
    description: str,
    category: str,
    region_code: str,
    service_item_code: str | None,
    icon_url: str | None,
    secret_hash: bytes,
    ip_allowlist: Sequence[Network],
    created_by: UUID | None,
) -> asyncpg.Record | None:
    """None when an app of that name exists (names are unique in the catalog)."""
    return await conn.fetchrow(
        """INSERT INTO miniapps (appid, organisation_id, name, description, category, region_code,
                                 service_item_code, icon_url, secret_hash, ip_allowlist, created_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           ON CONFLICT (name) DO NOTHING RETURNING *""",
        appid,
        organisation_id,
        name,
        description,
        category,
        region_code,
        service_item_code,
        icon_url,
        secret_hash,
        list(ip_allowlist),
        created_by,
    )


async def app_by_id(conn: Conn, appid: str, *, for_update: bool = False) -> asyncpg.Record | None:
    query = "SELECT * FROM miniapps WHERE appid = $1"
    return await conn.fetchrow(query + " FOR UPDATE" if for_update else query, appid)


async def apps_of_organisation(conn: Conn, organisation_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM miniapps WHERE organisation_id = $1 ORDER BY created_at", organisation_id
    )
    return rows


_APP_EDITABLE = frozenset({"name", "description", "category", "region_code", "service_item_code", "icon_url"})


async def update_app(conn: Conn, appid: str, changes: dict[str, Any]) -> asyncpg.Record | None:
    """Set the given editable columns. asyncpg.UniqueViolationError when the new name is taken."""
    unknown = set(changes) - _APP_EDITABLE
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)}")
    columns = sorted(changes)
    assignments = ", ".join(f"{column} = ${index}" for index, column in enumerate(columns, start=2))
    return await conn.fetchrow(
        f"UPDATE miniapps SET {assignments}, updated_at = now() WHERE appid = $1 RETURNING *",  # noqa: S608
        appid,
        *(changes[column] for column in columns),
    )


async def set_app_secret(conn: Conn, appid: str, secret_hash: bytes) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """UPDATE miniapps SET secret_hash = $2, secret_reset_at = now(), updated_at = now()
           WHERE appid = $1 RETURNING *""",
        appid,
        secret_hash,
    )
    return row


async def set_app_allowlist(conn: Conn, appid: str, networks: Sequence[Network]) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        "UPDATE miniapps SET ip_allowlist = $2, updated_at = now() WHERE appid = $1 RETURNING *",
        appid,
        list(networks),
    )
    return row


async def set_app_status(
    conn: Conn, appid: str, status: str, frozen_by: str | None, reason: str | None
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """UPDATE miniapps SET status = $2, frozen_by = $3, frozen_reason = $4, updated_at = now()
           WHERE appid = $1 RETURNING *""",
        appid,
        status,
        frozen_by,
        reason,
    )
    return row


async def sdk_app(conn: Conn, appid: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT a.appid, a.organisation_id, o.name AS organisation_name, a.status, a.secret_hash,
                  a.secret_reset_at, a.ip_allowlist
           FROM miniapps a JOIN organisations o ON o.id = a.organisation_id WHERE a.appid = $1""",
        appid,
    )


# --- versions ----------------------------------------------------------------------------------------------


async def insert_version(
    conn: Conn,
    *,
    version_id: UUID,
    appid: str,
    version: str,
    manifest: dict[str, Any],
    package_sha256: str,
    package_size: int,
    package_key: str,
    uploaded_by: UUID,
) -> asyncpg.Record | None:
    """None when the app has this version number already."""
    return await conn.fetchrow(
        """INSERT INTO miniapp_versions (id, appid, version, manifest, package_sha256, package_size,
                                         package_key, uploaded_by)
           VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8)
           ON CONFLICT (appid, version) DO NOTHING RETURNING *""",
        version_id,
        appid,
        version,
        _json(manifest),
        package_sha256,
        package_size,
        package_key,
        uploaded_by,
    )


async def version_exists(conn: Conn, appid: str, version: str) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM miniapp_versions WHERE appid = $1 AND version = $2", appid, version
    )
    return found is not None


async def version_by_id(conn: Conn, version_id: UUID, *, for_update: bool = False) -> asyncpg.Record | None:
    query = "SELECT * FROM miniapp_versions WHERE id = $1"
    return await conn.fetchrow(query + " FOR UPDATE" if for_update else query, version_id)


async def versions_of_app(conn: Conn, appid: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM miniapp_versions WHERE appid = $1 ORDER BY created_at DESC, id DESC", appid
    )
    return rows


async def version_in_state(conn: Conn, appid: str, state: str) -> asyncpg.Record | None:
    """The app's version in a state there is at most one of (released, grey)."""
    return await conn.fetchrow(
        "SELECT * FROM miniapp_versions WHERE appid = $1 AND state = $2 FOR UPDATE", appid, state
    )


async def latest_superseded(conn: Conn, appid: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT * FROM miniapp_versions WHERE appid = $1 AND state = 'superseded'
           ORDER BY superseded_at DESC, id DESC LIMIT 1 FOR UPDATE""",
        appid,
    )


_VERSION_SETTABLE = frozenset(
    {
        "trial_accounts",
        "reject_reason",
        "grey_percent",
        "grey_accounts",
        "grey_regions",
        "submitted_at",
        "reviewed_at",
        "reviewed_by",
        "released_at",
        "superseded_at",
    }
)


async def set_version_state(conn: Conn, version_id: UUID, state: str, **columns: Any) -> asyncpg.Record:
    """Move the version to `state`, setting the named columns too (from a fixed list)."""
    unknown = set(columns) - _VERSION_SETTABLE
    if unknown:
        raise ValueError(f"not settable: {sorted(unknown)}")
    names = sorted(columns)
    assignments = "".join(f", {name} = ${index}" for index, name in enumerate(names, start=3))
    row: asyncpg.Record = await conn.fetchrow(
        f"UPDATE miniapp_versions SET state = $2, updated_at = now(){assignments} WHERE id = $1 RETURNING *",  # noqa: S608
        version_id,
        state,
        *(columns[name] for name in names),
    )
    return row


async def review_queue(conn: Conn, limit: int) -> list[asyncpg.Record]:
    """Submitted versions, oldest first, with their app and organisation."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT v.*, a.name AS app_name, a.organisation_id, o.name AS organisation_name
           FROM miniapp_versions v
           JOIN miniapps a ON a.appid = v.appid
           JOIN organisations o ON o.id = a.organisation_id
           WHERE v.state = 'submitted' ORDER BY v.submitted_at, v.id LIMIT $1""",
        limit,
    )
    return rows


# --- catalog -----------------------------------------------------------------------------------------------


async def bump_catalog_generation(conn: Conn) -> int:
    """In the transaction that changes what the catalog shows: processes reload when they see it move."""
    generation: int = await conn.fetchval(
        "UPDATE miniapp_catalog_state SET generation = generation + 1 RETURNING generation"
    )
    return generation


async def catalog_generation(conn: Conn) -> int:
    generation: int = await conn.fetchval("SELECT generation FROM miniapp_catalog_state")
    return generation


async def catalog_rows(conn: Conn) -> list[asyncpg.Record]:
    """Every released or grey version of an active app, with its app and organisation. Read in the same
    snapshot as catalog_generation (the caller's REPEATABLE READ transaction)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT a.appid, a.name, a.description, a.category, a.region_code, a.service_item_code, a.icon_url,
                  a.organisation_id, o.name AS organisation_name,
                  v.state, v.version, v.manifest->'min_level' AS min_level, v.package_sha256, v.package_size,
                  v.grey_percent, v.grey_accounts, v.grey_regions
           FROM miniapps a
           JOIN organisations o ON o.id = a.organisation_id
           JOIN miniapp_versions v ON v.appid = a.appid AND v.state IN ('released', 'grey')
           WHERE a.status = 'active'"""
    )
    return rows


async def touch_recent(conn: Conn, account_id: UUID, appid: str, keep: int) -> None:
    """Record a use now and forget all but the `keep` most recent apps of the account."""
    await conn.execute(
        """INSERT INTO miniapp_recent (account_id, appid, used_at) VALUES ($1, $2, now())
           ON CONFLICT (account_id, appid) DO UPDATE SET used_at = now()""",
        account_id,
        appid,
    )
    await conn.execute(
        """DELETE FROM miniapp_recent WHERE account_id = $1 AND appid NOT IN (
               SELECT appid FROM miniapp_recent WHERE account_id = $1 ORDER BY used_at DESC LIMIT $2)""",
        account_id,
        keep,
    )


async def recent_of(conn: Conn, account_id: UUID, limit: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT appid FROM miniapp_recent WHERE account_id = $1 ORDER BY used_at DESC LIMIT $2",
        account_id,
        limit,
    )
    return [row["appid"] for row in rows]


async def add_favourite(conn: Conn, account_id: UUID, appid: str) -> bool:
    """False when it was a favourite already."""
    added = await conn.fetchval(
        """INSERT INTO miniapp_favourites (account_id, appid) VALUES ($1, $2)
           ON CONFLICT DO NOTHING RETURNING appid""",
        account_id,
        appid,
    )
    return added is not None


async def count_favourites(conn: Conn, account_id: UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM miniapp_favourites WHERE account_id = $1", account_id
    )
    return count


async def remove_favourite(conn: Conn, account_id: UUID, appid: str) -> bool:
    removed = await conn.fetchval(
        "DELETE FROM miniapp_favourites WHERE account_id = $1 AND appid = $2 RETURNING appid",
        account_id,
        appid,
    )
    return removed is not None


async def favourites_of(conn: Conn, account_id: UUID, limit: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT appid FROM miniapp_favourites WHERE account_id = $1 ORDER BY created_at DESC LIMIT $2",
        account_id,
        limit,
    )
    return [row["appid"] for row in rows]


async def forget_account(conn: Conn, account_id: UUID) -> tuple[int, int]:
    """Delete the account's recently used apps and favourites; (recent, favourites) deleted."""
    recent = await conn.fetch("DELETE FROM miniapp_recent WHERE account_id = $1 RETURNING 1", account_id)
    favourites = await conn.fetch(
        "DELETE FROM miniapp_favourites WHERE account_id = $1 RETURNING 1", account_id
    )
    return len(recent), len(favourites)


# --- bulk seeding (bench and demo data) --------------------------------------------------------------------


async def copy_apps(conn: Conn, rows: Iterable[tuple[Any, ...]]) -> None:
    """(appid, organisation_id, name, description, category, region_code, service_item_code, icon_url,
    secret_hash) rows, by COPY."""
    await conn.copy_records_to_table(
        "miniapps",
        records=rows,
        columns=[
            "appid",
            "organisation_id",
            "name",
            "description",
            "category",
            "region_code",
            "service_item_code",
            "icon_url",
            "secret_hash",
        ],
    )


async def copy_versions(conn: Conn, rows: Iterable[tuple[Any, ...]]) -> None:
    """(id, appid, version, manifest json text, package_sha256, package_size, package_key, state,
    grey_percent, uploaded_by, released_at) rows, by COPY."""
    await conn.copy_records_to_table(
        "miniapp_versions",
        records=rows,
        columns=[
            "id",
            "appid",
            "version",
            "manifest",
            "package_sha256",
            "package_size",
            "package_key",
            "state",
            "grey_percent",
            "uploaded_by",
            "released_at",
        ],
    )


async def organisation_by_name(conn: Conn, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM organisations WHERE name = $1", name)


async def count_apps_of(conn: Conn, organisation_id: UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM miniapps WHERE organisation_id = $1", organisation_id
    )
    return count


# --- ratings and analytics (F) -----------------------------------------------------------------------------


async def insert_rating(
    conn: Conn,
    *,
    rating_id: UUID,
    appid: str,
    transaction_id: str,
    account_id: UUID,
    level: int,
    comment: str,
    created_at: datetime,
) -> asyncpg.Record | None:
    """None when the app's transaction has a rating already."""
    return await conn.fetchrow(
        """INSERT INTO miniapp_ratings (id, appid, transaction_id, account_id, level, comment, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (appid, transaction_id) DO NOTHING RETURNING *""",
        rating_id,
        appid,
        transaction_id,
        account_id,
        level,
        comment,
        created_at,
    )


async def insert_case(
    conn: Conn,
    *,
    case_id: UUID,
    rating_id: UUID,
    appid: str,
    organisation_id: UUID,
    opened_at: datetime,
    due_on: date,
) -> None:
    await conn.execute(
        """INSERT INTO miniapp_cases (id, rating_id, appid, organisation_id, opened_at, due_on)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        case_id,
        rating_id,
        appid,
        organisation_id,
        opened_at,
        due_on,
    )


_CASES = """
SELECT c.id, c.appid, c.organisation_id, c.status, c.opened_at, c.due_on, c.answer, c.answered_at,
       r.transaction_id, r.level, r.comment, r.account_id, a.name AS app_name, o.name AS organisation_name
FROM miniapp_cases c
JOIN miniapp_ratings r ON r.id = c.rating_id
JOIN miniapps a ON a.appid = c.appid
JOIN organisations o ON o.id = c.organisation_id
"""


async def case_by_id(conn: Conn, case_id: UUID, *, for_update: bool = False) -> asyncpg.Record | None:
    """The case with its rating (account_id included: for the answer's inbox message only)."""
    query = _CASES + " WHERE c.id = $1"
    return await conn.fetchrow(query + " FOR UPDATE OF c" if for_update else query, case_id)


async def set_case_answer(
    conn: Conn, case_id: UUID, answer: str, answered_by: UUID, answered_at: datetime
) -> None:
    await conn.execute(
        """UPDATE miniapp_cases SET status = 'answered', answer = $2, answered_by = $3, answered_at = $4
           WHERE id = $1""",
        case_id,
        answer,
        answered_by,
        answered_at,
    )


async def cases_of_app(conn: Conn, appid: str, status: str | None, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        _CASES
        + " WHERE c.appid = $1 AND ($2::text IS NULL OR c.status = $2) ORDER BY c.opened_at DESC LIMIT $3",
        appid,
        status,
        limit,
    )
    return rows


async def open_cases(conn: Conn, due_before: date | None, limit: int) -> list[asyncpg.Record]:
    """Open cases, earliest due first; with due_before, only those due before that day (overdue)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        _CASES
        + """ WHERE c.status = 'open' AND ($1::date IS NULL OR c.due_on < $1)
              ORDER BY c.due_on, c.opened_at LIMIT $2""",
        due_before,
        limit,
    )
    return rows


async def rating_counts(conn: Conn, appid: str) -> list[tuple[int, int]]:
    rows = await conn.fetch(
        "SELECT level, count(*) AS count FROM miniapp_ratings WHERE appid = $1 GROUP BY level", appid
    )
    return [(row["level"], row["count"]) for row in rows]


async def case_counts(conn: Conn, appid: str, today: date) -> asyncpg.Record:
    """open, overdue (open and due before `today`), answered, answered_late (after the due day, Shanghai)."""
    row: asyncpg.Record = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE status = 'open') AS open,
                  count(*) FILTER (WHERE status = 'open' AND due_on < $2) AS overdue,
                  count(*) FILTER (WHERE status = 'answered') AS answered,
                  count(*) FILTER (WHERE status = 'answered'
                                   AND (answered_at AT TIME ZONE 'Asia/Shanghai')::date > due_on)
                      AS answered_late
           FROM miniapp_cases WHERE appid = $1""",
        appid,
        today,
    )
    return row


async def unlink_ratings(conn: Conn, account_id: UUID) -> int:
    rows = await conn.fetch(
        "UPDATE miniapp_ratings SET account_id = NULL WHERE account_id = $1 RETURNING 1", account_id
    )
    return len(rows)


async def all_appids(conn: Conn) -> list[str]:
    rows = await conn.fetch("SELECT appid FROM miniapps ORDER BY appid")
    return [row["appid"] for row in rows]


async def upsert_daily_visits(conn: Conn, day: date, rows: Sequence[tuple[str, int, int]]) -> int:
    """Write (appid, visits, unique_users) for the day, overwriting what an earlier rollup wrote, but never
    lowering it (Redis may have lost part of the day). Apps gone meanwhile are skipped; returns rows written."""
    if not rows:
        return 0
    written = await conn.fetch(
        """INSERT INTO miniapp_daily_visits AS d (appid, day, visits, unique_users, rolled_up_at)
           SELECT v.appid, $1, v.visits, v.unique_users, now()
           FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS v (appid, visits, unique_users)
           JOIN miniapps a ON a.appid = v.appid
           ON CONFLICT (appid, day) DO UPDATE
           SET visits = GREATEST(d.visits, EXCLUDED.visits),
               unique_users = GREATEST(d.unique_users, EXCLUDED.unique_users),
               rolled_up_at = now()
           RETURNING 1""",
        day,
        [row[0] for row in rows],
        [row[1] for row in rows],
        [row[2] for row in rows],
    )
    return len(written)


async def daily_visits(conn: Conn, appid: str, first: date, last: date) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT day, visits, unique_users, rolled_up_at FROM miniapp_daily_visits
           WHERE appid = $1 AND day BETWEEN $2 AND $3 ORDER BY day DESC""",
        appid,
        first,
        last,
    )
    return rows


# --- SDK (E) -----------------------------------------------------------------------------------------------


async def openid_salt(conn: Conn, appid: str, new_salt: bytes) -> bytes:
    """The app's openid salt; `new_salt` becomes it on first use (when two race, the first commit wins)."""
    await conn.execute(
        "INSERT INTO miniapp_openid_salts (appid, salt) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        appid,
        new_salt,
    )
    salt: bytes = await conn.fetchval("SELECT salt FROM miniapp_openid_salts WHERE appid = $1", appid)
    return bytes(salt)


async def unionid_salt(conn: Conn, organisation_id: UUID, new_salt: bytes) -> bytes:
    """The organisation's unionid salt, made like openid_salt."""
    await conn.execute(
        "INSERT INTO miniapp_unionid_salts (organisation_id, salt) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        organisation_id,
        new_salt,
    )
    salt: bytes = await conn.fetchval(
        "SELECT salt FROM miniapp_unionid_salts WHERE organisation_id = $1", organisation_id
    )
    return bytes(salt)


async def put_openid(conn: Conn, appid: str, openid: str, account_id: UUID) -> None:
    await conn.execute(
        """INSERT INTO miniapp_openids (appid, openid, account_id) VALUES ($1, $2, $3)
           ON CONFLICT DO NOTHING""",
        appid,
        openid,
        account_id,
    )


async def account_of_openid(conn: Conn, appid: str, openid: str) -> UUID | None:
    """The account behind an openid of this app; another app's openid finds nothing."""
    account_id: UUID | None = await conn.fetchval(
        "SELECT account_id FROM miniapp_openids WHERE appid = $1 AND openid = $2", appid, openid
    )
    return account_id


async def insert_template(
    conn: Conn, template_id: str, appid: str, title: str, keywords: list[dict[str, str]], created_by: str
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """INSERT INTO miniapp_templates (template_id, appid, title, keywords, created_by)
           VALUES ($1, $2, $3, $4::jsonb, $5)
           RETURNING template_id, appid, title, keywords, created_by, created_at""",
        template_id,
        appid,
        title,
        _json(keywords),
        created_by,
    )
    return row


async def count_templates(conn: Conn, appid: str) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM miniapp_templates WHERE appid = $1", appid)
    return count


async def templates_of(conn: Conn, appid: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT template_id, appid, title, keywords, created_by, created_at FROM miniapp_templates
           WHERE appid = $1 ORDER BY created_at, template_id""",
        appid,
    )
    return rows


async def template_by_id(conn: Conn, template_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT template_id, appid, title, keywords, created_by, created_at FROM miniapp_templates
           WHERE template_id = $1""",
        template_id,
    )


async def delete_template(conn: Conn, appid: str, template_id: str) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM miniapp_templates WHERE appid = $1 AND template_id = $2 RETURNING 1", appid, template_id
    )
    return deleted is not None


async def app_template_ids(conn: Conn, appid: str, template_ids: Sequence[str]) -> set[str]:
    """Those of `template_ids` that are templates of this app."""
    rows = await conn.fetch(
        "SELECT template_id FROM miniapp_templates WHERE appid = $1 AND template_id = ANY($2::text[])",
        appid,
        list(template_ids),
    )
    return {row["template_id"] for row in rows}


async def add_subscriptions(conn: Conn, account_id: UUID, template_ids: Sequence[str], cap: int) -> None:
    """One more send allowed per template (distinct ids), at most `cap` pending per template."""
    await conn.execute(
        """INSERT INTO miniapp_subscriptions (account_id, template_id, remaining)
           SELECT $1, t, 1 FROM unnest($2::text[]) AS t
           ON CONFLICT (account_id, template_id)
           DO UPDATE SET remaining = LEAST(miniapp_subscriptions.remaining + 1, $3), updated_at = now()""",
        account_id,
        list(dict.fromkeys(template_ids)),
        cap,
    )


async def subscriptions_of(conn: Conn, account_id: UUID, appid: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT s.template_id, t.title, s.remaining, s.updated_at
           FROM miniapp_subscriptions s JOIN miniapp_templates t USING (template_id)
           WHERE s.account_id = $1 AND t.appid = $2 AND s.remaining > 0
           ORDER BY t.created_at, s.template_id""",
        account_id,
        appid,
    )
    return rows


async def take_subscription(conn: Conn, account_id: UUID, template_id: str) -> bool:
    """Use up one pending send (row-locked, so two racing sends cannot both use the last one)."""
    taken = await conn.fetchval(
        """UPDATE miniapp_subscriptions SET remaining = remaining - 1, updated_at = now()
           WHERE account_id = $1 AND template_id = $2 AND remaining > 0 RETURNING 1""",
        account_id,
        template_id,
    )
    return taken is not None


async def insert_message(
    conn: Conn,
    message_id: UUID,
    *,
    appid: str,
    template_id: str,
    account_id: UUID,
    title: str,
    body: str,
    page: str | None,
) -> None:
    await conn.execute(
        """INSERT INTO miniapp_messages (id, appid, template_id, account_id, title, body, page)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        message_id,
        appid,
        template_id,
        account_id,
        title,
        body,
        page,
    )


async def message_for_delivery(conn: Conn, message_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT id, appid, account_id, title, body, delivered_at FROM miniapp_messages
           WHERE id = $1 FOR UPDATE""",
        message_id,
    )


async def mark_delivered(conn: Conn, message_id: UUID, inbox_message_id: UUID) -> None:
    await conn.execute(
        "UPDATE miniapp_messages SET delivered_at = now(), inbox_message_id = $2 WHERE id = $1",
        message_id,
        inbox_message_id,
    )
