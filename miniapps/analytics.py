"""Visit analytics: how often each mini-app is opened, and by how many people, per day.

Counting is on the hot path (every app open), so it is one Redis call: record_visit runs a script that
counts the visit (INCR) and adds the citizen to the day's HyperLogLog (PFADD: unique users within ~0.8%,
in at most 12 KiB per app and day). The keys of one app and day share a hash tag, so the script runs on
one Redis Cluster node. A citizen opening the same app again within VISIT_WINDOW_SECONDS is the same visit:
the app's open and its login-code request (or a quick re-open) count once.

Days are Asia/Shanghai calendar days: the day the operators report on. Redis keeps a day's keys for
KEEP_DAYS; the periodic job (miniapps.jobs) rolls today and yesterday up into PostgreSQL
(miniapp_daily_visits) every few minutes, overwriting the rows it wrote before, so a rollup can be re-run
at will (`tongban miniapps rollup --day`). Counts lost with Redis are lost: they are statistics, and a
rollup never lowers a row it wrote.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Annotated
from uuid import UUID

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from core import clock
from core import redis as redis_mod
from core.db import connection, transaction
from core.errors import InvalidInput, NotFound
from core.stores import Stores
from miniapps import registry, repository
from miniapps.models import READ

log = structlog.get_logger(__name__)

NAMESPACE = "miniapps:visits"
KEEP_DAYS = 8
VISIT_WINDOW_SECONDS = 30
MAX_DAYS = 366
# Apps per Redis pipeline in a rollup.
ROLLUP_BATCH = 500
_APPID = re.compile(r"^tb[0-9a-f]{16}$")

# KEYS: the day's visit counter, its unique-user HyperLogLog, this citizen's open marker (one hash tag).
# ARGV: account id, seconds to keep the day's keys, seconds an open lasts. Returns 1 when a visit was counted.
_RECORD = """
redis.call('PFADD', KEYS[2], ARGV[1])
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[3]) then
  return 0
end
if redis.call('INCR', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
"""


def visit_day(moment: datetime) -> date:
    return moment.astimezone(clock.SHANGHAI).date()


def _tag(appid: str, day: date) -> str:
    return f"{appid}:{day:%Y%m%d}"


def visits_key(appid: str, day: date) -> str:
    return redis_mod.key(NAMESPACE, _tag(appid, day), "count")


def users_key(appid: str, day: date) -> str:
    return redis_mod.key(NAMESPACE, _tag(appid, day), "users")


def _open_key(appid: str, day: date, account: str) -> str:
    return redis_mod.key(NAMESPACE, _tag(appid, day), "open", account)


async def record_visit(
    redis: aioredis.Redis,
    appid: str,
    account_id: UUID | str,
    *,
    at: datetime | None = None,
    window_seconds: int = VISIT_WINDOW_SECONDS,
) -> bool:
    """Count that the citizen opened the app: True when it counted as a new visit. Never raises for Redis
    trouble (a lost count is better than a failed app open): it logs and returns False."""
    if not _APPID.match(appid):
        raise ValueError("appid: tb + 16 hex digits")
    account = account_id.hex if isinstance(account_id, UUID) else str(account_id)
    day = visit_day(at or clock.now())
    keys = [visits_key(appid, day), users_key(appid, day), _open_key(appid, day, account)]
    try:
        counted = await redis.register_script(_RECORD)(
            keys=keys, args=[account, KEEP_DAYS * 86_400, window_seconds]
        )
    except (RedisError, OSError) as exc:
        log.warning("miniapps.visit_not_counted", appid=appid, exc_type=type(exc).__name__)
        return False
    return bool(counted)


# --- rollup ------------------------------------------------------------------------------------------------


async def live_counts(stores: Stores, appids: list[str], day: date) -> list[tuple[str, int, int]]:
    """(appid, visits, unique users) on `day` as Redis has them now, for the apps with any."""
    counts: list[tuple[str, int, int]] = []
    for start in range(0, len(appids), ROLLUP_BATCH):
        chunk = appids[start : start + ROLLUP_BATCH]
        async with redis_mod.guarded(stores.settings):
            pipe = stores.redis.pipeline(transaction=False)
            for appid in chunk:
                pipe.get(visits_key(appid, day))
                pipe.pfcount(users_key(appid, day))
            values = await pipe.execute()
        for appid, visits, users in zip(chunk, values[0::2], values[1::2], strict=True):
            if visits is not None or users:
                counts.append((appid, int(visits or 0), int(users)))
    return counts


async def rollup_day(stores: Stores, day: date) -> int:
    """Write the day's counts of every app with visits into PostgreSQL; returns the rows written."""
    async with connection(stores.pool, stores.settings) as conn:
        appids = await repository.all_appids(conn)
    counts = await live_counts(stores, appids, day)
    async with transaction(stores.pool, stores.settings) as conn:
        written = await repository.upsert_daily_visits(conn, day, counts)
    log.info("miniapps.visits_rolled_up", day=str(day), apps=written)
    return written


async def rollup_recent(stores: Stores, *, now: datetime | None = None) -> int:
    """Yesterday (its last minutes) and today so far: what the periodic job runs."""
    today = visit_day(now or clock.now())
    return await rollup_day(stores, today - timedelta(days=1)) + await rollup_day(stores, today)


# --- reading -----------------------------------------------------------------------------------------------


class DailyVisits(msgspec.Struct):
    day: date
    visits: int
    unique_users: int


class VisitStats(msgspec.Struct):
    appid: str
    # Newest first, one per day, days without visits included (zeros). Today's row lags the live count by
    # up to the rollup interval.
    days: list[DailyVisits]
    visits: int
    # The largest daily unique-user count in the range (unique users do not add up across days).
    peak_unique_users: int


Days = Annotated[int, msgspec.Meta(ge=1, le=MAX_DAYS)]


async def app_visits(
    stores: Stores, appid: str, days: int = 14, *, now: datetime | None = None
) -> VisitStats:
    """The app's rolled-up visits for the last `days` days including today (no membership check)."""
    if not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"days: 1 to {MAX_DAYS}", field="days")
    last = visit_day(now or clock.now())
    first = last - timedelta(days=days - 1)
    async with connection(stores.pool, stores.settings) as conn:
        if await repository.app_by_id(conn, appid) is None:
            raise NotFound("no such mini-app", code="app_not_found")
        rows = {row["day"]: row for row in await repository.daily_visits(conn, appid, first, last)}
    series = []
    for offset in range(days):
        day = last - timedelta(days=offset)
        row = rows.get(day)
        series.append(
            DailyVisits(
                day=day,
                visits=row["visits"] if row else 0,
                unique_users=row["unique_users"] if row else 0,
            )
        )
    return VisitStats(
        appid=appid,
        days=series,
        visits=sum(item.visits for item in series),
        peak_unique_users=max(item.unique_users for item in series),
    )


async def member_visits(stores: Stores, account_id: UUID, appid: str, days: int = 14) -> VisitStats:
    async with connection(stores.pool, stores.settings) as conn:
        await registry.app_for_member(conn, appid, account_id, READ)
    return await app_visits(stores, appid, days)
