"""Health status: each account's colour from the rules in force, its history, and the inputs that change it.

The public service functions (the pass API calls these):

- current_status(conn, account_id): the stored status, computed first when there is none yet, when the
  rules in force changed, or when a window in it has ended (valid_until passed).
- status_history(conn, account_id): every change, newest first.
- record_trip / record_test_result / record_vaccination / add_manual_mark / clear_manual_mark /
  apply_appeal_outcome: store an input and, in the same transaction, enqueue `health.recompute` through
  the outbox, so the status follows once the input is committed.
- recompute(stores, account_ids): evaluate and write what changed; each change bumps the status version,
  appends a history row, puts a message in the citizen's inbox and, after commit, publishes the account on
  the Redis channel "health:status" (best effort) so API processes drop cached passes.

A change is a new colour, new reasons or a new deciding rule. `since` is when the colour began: the
deciding evidence's time when the colour changes (a red from a test sampled three days ago is red since
then), kept as it is while the colour stays. When a status has a window that ends (valid_until), a deferred
recompute is enqueued for that moment.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec
import structlog
from redis.asyncio import Redis

from core import clock, ids
from core import redis as redis_mod
from core.db import transaction
from core.errors import Conflict, InvalidInput, NotFound
from core.jobs import enqueue_in_tx
from core.stores import Stores
from health_code import repository
from health_code.jobs import RECOMPUTE_BATCH, RECOMPUTE_JOB, Recompute
from health_code.rules import (
    AppealDecision,
    Colour,
    Inputs,
    LabResult,
    Mark,
    RiskArea,
    RuleSet,
    Trip,
    Vaccination,
    default_rules,
    evaluate,
    rules_from_document,
    valid_region,
)
from miniapps import inbox

log = structlog.get_logger(__name__)

STATUS_CHANNEL = "health:status"
INBOX_SOURCE = "health"
INBOX_TITLE = "健康码状态更新"
COLOUR_NAMES = {"green": "绿码", "yellow": "黄码", "red": "红码"}
# How long a process keeps the rules in force before asking the database again (an activation reaches
# every process within this; statuses computed under older rules are recomputed when next read).
RULES_CACHE_SECONDS = 30.0
# Inputs dated this far in the future are refused (clock skew allowance of the sources).
FUTURE_SKEW = timedelta(minutes=5)
# A deferred recompute runs this long after the window it waits for has ended.
DEFER_SLACK = timedelta(seconds=1)
MAX_TEXT = 500
REASON_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class HealthStatus(msgspec.Struct, kw_only=True):
    account_id: UUID
    colour: Colour
    # Reason codes of every rule that holds; the first decided the colour.
    reasons: list[str]
    rule_id: str | None
    since: datetime
    rule_version: str
    # Counts changes: 1 at first computation, +1 on every change.
    version: int
    # The next moment the rules may give another answer without new inputs; None when nothing is pending.
    valid_until: datetime | None
    # When the status row was last written; changed_at: when it last changed.
    computed_at: datetime
    changed_at: datetime


class StatusChange(msgspec.Struct, kw_only=True):
    """One row of an account's history."""

    version: int
    colour: Colour
    reasons: list[str]
    rule_id: str | None
    since: datetime
    rule_version: str
    changed_at: datetime


class Changed(msgspec.Struct, frozen=True, kw_only=True):
    """What recompute reports per changed account (and publishes on STATUS_CHANNEL)."""

    account_id: UUID
    version: int
    colour: Colour
    previous_colour: Colour | None


class ManualMark(msgspec.Struct, kw_only=True):
    id: UUID
    account_id: UUID
    colour: Colour
    reason: str
    marked_by: str
    at: datetime
    cleared_at: datetime | None
    cleared_by: str | None


# --- the rules in force -----------------------------------------------------------------------------------

_rules_cache: tuple[float, RuleSet] | None = None


def forget_rules() -> None:
    """Drop this process's cached rules (tests; after an activation in this process)."""
    global _rules_cache
    _rules_cache = None


def document_sha256(rules: RuleSet) -> bytes:
    canonical = json.dumps(rules.document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


async def active_rules(conn: asyncpg.Connection) -> RuleSet:
    """The rule set activated last (`tongban health rules activate`), or the shipped default.json."""
    global _rules_cache
    if _rules_cache is not None and _rules_cache[0] > time.monotonic():
        return _rules_cache[1]
    row = await repository.latest_rule_set(conn)
    if row is None:
        rules = default_rules()
    elif _rules_cache is not None and _rules_cache[1].version == row["version"]:
        rules = _rules_cache[1]
    else:
        rules = rules_from_document(json.loads(row["document"]))
    _rules_cache = (time.monotonic() + RULES_CACHE_SECONDS, rules)
    return rules


async def activate_rules(
    conn: asyncpg.Connection, rules: RuleSet, *, by: str, recompute_all: bool = True
) -> int:
    """Put a checked rule set in force (in the caller's transaction); returns the recompute jobs enqueued.

    A version names one content: activating a known version again (a roll-back) is fine, the same version
    with other content is a Conflict. With recompute_all every account that has a status is recomputed
    by jobs; without it, statuses follow when next read (they name the version they were computed under)."""
    sha256 = document_sha256(rules)
    known = await repository.rule_set(conn, rules.version)
    if known is not None and bytes(known["sha256"]) != sha256:
        raise Conflict(
            f"rule version {rules.version} was activated before with other content: give the file a new version"
        )
    await repository.activate_rule_set(
        conn, rules.version, json.dumps(rules.document, ensure_ascii=False), sha256, _text(by, "by")
    )
    forget_rules()
    if not recompute_all:
        return 0
    key = f"health.rules:{rules.version}:{time.time_ns() // 1_000_000}"
    jobs, after, batch = 0, None, 0
    while True:
        accounts = await repository.accounts_with_status(conn, after=after, limit=RECOMPUTE_BATCH)
        if not accounts:
            return jobs
        await enqueue_in_tx(conn, RECOMPUTE_JOB, Recompute(account_ids=accounts), job_id=f"{key}:{batch}")
        jobs, after, batch = jobs + 1, accounts[-1], batch + 1


# --- recomputing -----------------------------------------------------------------------------------------


def _dedupe(account_ids: Iterable[UUID]) -> list[UUID]:
    return sorted(set(account_ids))


async def load_inputs(
    conn: asyncpg.Connection, account_ids: Sequence[UUID], *, since: datetime, now: datetime
) -> dict[UUID, Inputs]:
    """What the rules look at, for each account: everything that can matter at `now` for rules looking
    back to `since` (older tests, trips and appeals cannot)."""
    parts: dict[UUID, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for row in await repository.trips_of(conn, account_ids, since):
        parts[row["account_id"]]["trips"].append(
            Trip(region=row["region_code"], at=row["at"], venue_id=row["venue_id"])
        )
    for row in await repository.areas_for_trips(conn, account_ids, since):
        parts[row["account_id"]]["risk_areas"].append(
            RiskArea(
                region=row["region_code"],
                level=row["level"],
                valid_from=row["valid_from"],
                valid_to=row["valid_to"],
            )
        )
    for row in await repository.tests_of(conn, account_ids, since):
        parts[row["account_id"]]["tests"].append(
            LabResult(result=row["result"], sampled_at=row["sampled_at"])
        )
    for row in await repository.vaccinations_of(conn, account_ids):
        parts[row["account_id"]]["vaccinations"].append(Vaccination(dose=row["dose"], at=row["at"]))
    for row in await repository.marks_of(conn, account_ids, now):
        parts[row["account_id"]]["marks"].append(
            Mark(colour=row["colour"], at=row["at"], cleared_at=row["cleared_at"])
        )
    for row in await repository.appeals_of(conn, account_ids, since):
        parts[row["account_id"]]["appeals"].append(
            AppealDecision(decision=row["decision"], at=row["at"], reason_code=row["reason_code"])
        )
    return {account_id: Inputs(**kinds) for account_id, kinds in parts.items()}


def _message(rules: RuleSet, colour: str, reasons: Sequence[str]) -> str:
    notice = rules.notice_for(reasons[0]) if reasons else ""
    return f"您的健康码现为{COLOUR_NAMES[colour]}。{notice}".strip()


async def recompute_in_tx(
    conn: asyncpg.Connection,
    account_ids: Iterable[UUID],
    *,
    rules: RuleSet | None = None,
    now: datetime | None = None,
) -> list[Changed]:
    """Evaluate the accounts and write what changed, inside the caller's transaction (which must be open).

    The caller publishes the returned changes after commit (publish_changes). Accounts are locked for the
    transaction, so two recomputes of one account never interleave."""
    if not conn.is_in_transaction():
        raise RuntimeError("recompute_in_tx needs the caller's open transaction")
    accounts = _dedupe(account_ids)
    if not accounts:
        return []
    rules = rules or await active_rules(conn)
    now = now or clock.now()
    await repository.lock_accounts(conn, accounts)
    stored = {row["account_id"]: row for row in await repository.statuses_of(conn, accounts)}
    all_inputs = await load_inputs(conn, accounts, since=now - rules.lookback, now=now)
    empty = Inputs()
    writes: list[tuple[object, ...]] = []
    touches: list[tuple[UUID, str, datetime | None, datetime]] = []
    deferred: list[tuple[UUID, datetime]] = []
    changed: list[Changed] = []
    notices: list[tuple[UUID, str]] = []
    for account_id in accounts:
        result = evaluate(rules, all_inputs.get(account_id, empty), now)
        reasons = list(result.reasons)
        old = stored.get(account_id)
        if old is None or (old["colour"], list(old["reasons"]), old["rule_id"]) != (
            result.colour,
            reasons,
            result.rule_id,
        ):
            colour_changed = old is None or old["colour"] != result.colour
            since = (result.since or now) if old is None or colour_changed else old["since"]
            version = 1 if old is None else old["version"] + 1
            writes.append(
                (
                    account_id,
                    result.colour,
                    reasons,
                    result.rule_id,
                    since,
                    rules.version,
                    version,
                    result.until,
                    now,
                )
            )
            changed.append(
                Changed(
                    account_id=account_id,
                    version=version,
                    colour=result.colour,
                    previous_colour=None if old is None else old["colour"],
                )
            )
            # A first status that is the default tells the citizen nothing new.
            if old is not None or result.colour != rules.default_colour or result.rule_id is not None:
                notices.append((account_id, _message(rules, result.colour, reasons)))
        elif old["rule_version"] != rules.version or old["valid_until"] != result.until:
            touches.append((account_id, rules.version, result.until, now))
        if result.until is not None and (old is None or old["valid_until"] != result.until):
            deferred.append((account_id, result.until))
    try:
        await repository.write_changes(conn, writes)
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("no such account", field="account_id") from None
    await repository.touch_statuses(conn, touches)
    for account_id, body in notices:
        await inbox.deliver(conn, account_id, title=INBOX_TITLE, body=body, source=INBOX_SOURCE)
    for account_id, until in deferred:
        await enqueue_in_tx(
            conn,
            RECOMPUTE_JOB,
            Recompute(account_ids=[account_id]),
            job_id=f"health.recompute:{account_id}:at:{int(until.timestamp())}",
            defer_until=until + DEFER_SLACK,
        )
    return changed


async def publish_changes(redis: Redis, changes: Sequence[Changed]) -> None:
    """Tell API processes which statuses changed (Redis pub/sub, best effort: a lost message only means a
    cached pass lives until its own expiry)."""
    if not changes:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for change in changes:
                pipe.publish(STATUS_CHANNEL, msgspec.json.encode(change))
            await pipe.execute()
    except redis_mod.OUTAGE_ERRORS as exc:
        log.warning("health.publish_failed", changes=len(changes), exc_type=type(exc).__name__)


async def recompute(
    stores: Stores, account_ids: Iterable[UUID], *, rules: RuleSet | None = None, now: datetime | None = None
) -> list[Changed]:
    """Recompute the accounts' statuses (in batches of RECOMPUTE_BATCH, one transaction each), write the
    changes with their history and inbox messages, and publish them once committed."""
    accounts = _dedupe(account_ids)
    changed: list[Changed] = []
    for start in range(0, len(accounts), RECOMPUTE_BATCH):
        async with transaction(stores.pool, stores.settings) as conn:
            batch = await recompute_in_tx(
                conn, accounts[start : start + RECOMPUTE_BATCH], rules=rules, now=now
            )
        await publish_changes(stores.redis, batch)
        changed += batch
    return changed


async def schedule_recompute(conn: asyncpg.Connection, account_ids: Iterable[UUID], *, key: str) -> int:
    """Enqueue recompute jobs for the accounts in the caller's transaction; returns the number of jobs.

    Job ids are key:0, key:1, ... over the sorted accounts: derive key from the event (an import, an
    input row) so doing the same thing twice enqueues nothing new."""
    accounts = _dedupe(account_ids)
    jobs = 0
    for start in range(0, len(accounts), RECOMPUTE_BATCH):
        await enqueue_in_tx(
            conn,
            RECOMPUTE_JOB,
            Recompute(account_ids=accounts[start : start + RECOMPUTE_BATCH]),
            job_id=f"{key}:{jobs}",
        )
        jobs += 1
    return jobs


# --- reading ---------------------------------------------------------------------------------------------


def _status(row: asyncpg.Record) -> HealthStatus:
    return HealthStatus(**{**dict(row), "reasons": list(row["reasons"])})


async def current_status(
    conn: asyncpg.Connection, account_id: UUID, *, redis: Redis | None = None, now: datetime | None = None
) -> HealthStatus:
    """The account's status, computed (and stored) first when there is none, when it was computed under
    other rules than those in force, or when its valid_until has passed. With `redis`, a change written
    here is published like recompute's (once committed: not when the caller's own transaction is open).
    NotFound for an unknown account."""
    now = now or clock.now()
    rules = await active_rules(conn)
    row = await repository.status_of(conn, account_id)
    if (
        row is not None
        and row["rule_version"] == rules.version
        and (row["valid_until"] is None or row["valid_until"] > now)
    ):
        return _status(row)
    outer = conn.is_in_transaction()
    async with conn.transaction():
        changes = await recompute_in_tx(conn, [account_id], rules=rules, now=now)
        row = await repository.status_of(conn, account_id)
    if redis is not None and not outer:
        await publish_changes(redis, changes)
    if row is None:
        raise NotFound("no such account", field="account_id")
    return _status(row)


async def status_history(
    conn: asyncpg.Connection, account_id: UUID, *, limit: int = 50, before_version: int | None = None
) -> list[StatusChange]:
    """The account's status changes, newest first (page with before_version = the last version seen)."""
    if not 1 <= limit <= 500:
        raise InvalidInput("limit: 1 to 500", field="limit")
    rows = await repository.history_of(conn, account_id, limit=limit, before_version=before_version)
    return [StatusChange(**{**dict(row), "reasons": list(row["reasons"])}) for row in rows]


# --- inputs ----------------------------------------------------------------------------------------------


def _when(at: datetime | None, what: str) -> datetime:
    now = clock.now()
    if at is None:
        return now
    if at.tzinfo is None:
        raise InvalidInput(f"{what}: a timezone-aware time is required", field=what)
    if at > now + FUTURE_SKEW:
        raise InvalidInput(f"{what}: must not be in the future", field=what)
    return at


def _text(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_TEXT:
        raise InvalidInput(f"{what}: 1 to {MAX_TEXT} characters", field=what)
    return value


async def _stored(coro: Any) -> Any:
    try:
        return await coro
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("no such account", field="account_id") from None


async def record_trip(
    conn: asyncpg.Connection, account_id: UUID, region: str, venue_id: UUID | None, at: datetime | None = None
) -> UUID:
    """Record that the account was in `region` (GB/T 2260 code; at a venue when scanned there) at `at`.

    A recompute is enqueued only when a risk area covers the region at that time: a trip elsewhere cannot
    change the colour now, and a risk-area import covering it later schedules the recompute itself."""
    if not valid_region(region):
        raise InvalidInput("region: a 6-digit GB/T 2260 region code", field="region")
    moment = _when(at, "at")
    trip_id = ids.new_id()
    async with conn.transaction():
        await _stored(repository.insert_trip(conn, trip_id, account_id, region, venue_id, moment))
        if await repository.risk_area_covers(conn, region, moment):
            await schedule_recompute(conn, [account_id], key=f"health.recompute:trip:{trip_id}")
    return trip_id


async def record_test_result(
    conn: asyncpg.Connection,
    account_id: UUID,
    result: Literal["positive", "negative"],
    sampled_at: datetime,
) -> bool:
    """Record one test result (bulk ones come through `tongban health import tests`); False when it was
    already recorded."""
    if result not in ("positive", "negative"):
        raise InvalidInput("result: positive or negative", field="result")
    moment = _when(sampled_at, "sampled_at")
    async with conn.transaction():
        stored: bool = await _stored(repository.insert_test(conn, account_id, result, moment))
        if stored:
            key = f"health.recompute:test:{account_id}:{result}:{int(moment.timestamp() * 1000)}"
            await schedule_recompute(conn, [account_id], key=key)
    return stored


async def record_vaccination(conn: asyncpg.Connection, account_id: UUID, dose: int, at: datetime) -> None:
    """Record a vaccination dose (the same dose again moves its date)."""
    if not 1 <= dose <= 10:
        raise InvalidInput("dose: 1 to 10", field="dose")
    moment = _when(at, "at")
    async with conn.transaction():
        await _stored(repository.upsert_vaccination(conn, account_id, dose, moment))
        key = f"health.recompute:vaccination:{account_id}:{dose}:{int(moment.timestamp() * 1000)}"
        await schedule_recompute(conn, [account_id], key=key)


def _mark(row: asyncpg.Record) -> ManualMark:
    return ManualMark(**dict(row))


async def add_manual_mark(
    conn: asyncpg.Connection,
    account_id: UUID,
    *,
    colour: Colour,
    reason: str,
    by: str,
    at: datetime | None = None,
) -> ManualMark:
    """A mark by health-authority staff (`by` names them). Red and yellow marks turn the status that colour
    under the default rules; a green mark clears what was held against the account before it."""
    if colour not in ("green", "yellow", "red"):
        raise InvalidInput("colour: green, yellow or red", field="colour")
    moment = _when(at, "at")
    mark_id = ids.new_id()
    async with conn.transaction():
        row = await _stored(
            repository.insert_mark(
                conn, mark_id, account_id, colour, _text(reason, "reason"), _text(by, "by"), moment
            )
        )
        await schedule_recompute(conn, [account_id], key=f"health.recompute:mark:{mark_id}")
    return _mark(row)


async def clear_manual_mark(
    conn: asyncpg.Connection, mark_id: UUID, *, by: str, at: datetime | None = None
) -> ManualMark:
    """Lift a mark (clearing it twice keeps the first clearing). NotFound for an unknown mark."""
    moment = _when(at, "at")
    async with conn.transaction():
        row = await repository.clear_mark(conn, mark_id, _text(by, "by"), moment)
        if row is None:
            raise NotFound("no such mark", field="mark_id")
        await schedule_recompute(conn, [row["account_id"]], key=f"health.recompute:unmark:{mark_id}")
    return _mark(row)


async def manual_marks(conn: asyncpg.Connection, account_id: UUID) -> list[ManualMark]:
    """The account's marks, newest first, cleared ones included."""
    return [_mark(row) for row in await repository.marks_of_account(conn, account_id)]


async def apply_appeal_outcome(
    conn: asyncpg.Connection,
    account_id: UUID,
    *,
    appeal_id: UUID,
    decision: Literal["approved", "rejected"],
    decided_by: str,
    reason_code: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Record the decision on an appeal; False when this appeal already has one (the first one stands).

    An approved appeal clears what the rules hold against the account up to `at`, for the appealed reason
    (reason_code) or for every reason (None), in rules that list "appeal" in cleared_by; a recompute is
    enqueued. A rejected one changes nothing but is kept."""
    if decision not in ("approved", "rejected"):
        raise InvalidInput("decision: approved or rejected", field="decision")
    if reason_code is not None and not REASON_CODE.match(reason_code):
        raise InvalidInput("reason_code: a reason code such as high_risk_trip", field="reason_code")
    moment = _when(at, "at")
    async with conn.transaction():
        row = await _stored(
            repository.insert_appeal_outcome(
                conn, appeal_id, account_id, decision, reason_code, _text(decided_by, "decided_by"), moment
            )
        )
        if row is None:
            return False
        if decision == "approved":
            await schedule_recompute(conn, [account_id], key=f"health.recompute:appeal:{appeal_id}")
    return True
