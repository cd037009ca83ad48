"""好差评: citizens rate a mini-app's service transactions, and bad ratings become rectification cases.

- Five levels, stored as 5..1 and shown with their labels: 非常满意 (5), 满意, 基本满意, 不满意, 非常不满意 (1).
- One rating per service transaction: the transaction id comes from the mini-app (its own case or order
  number) and a second rating of the same one is refused (409 already_rated).
- The bottom two (不满意, 非常不满意, "差评") must say what went wrong, and open a rectification case that the
  app's organisation answers within 15 working days (国办发〔2019〕51号). The deadline is fixed when the case
  opens: the 15th working day after the rating's date in Asia/Shanghai, counting Monday to Friday, less the
  official holidays and plus the make-up working days (调休) of TONGBAN_MINIAPP_HOLIDAYS_FILE when set. A case
  still open after its due day is overdue. The answer reaches the citizen's inbox.
- Statistics per app: counts per level and the satisfaction rate, the share of ratings in the top three
  levels (everything but 差评).

The organisation sees a rating's transaction id, level and comment, never who gave it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

import asyncpg
import msgspec
import structlog
from msgspec import Meta

from core import clock, ids
from core.db import connection, transaction
from core.errors import Conflict, InvalidInput, NotFound
from core.ratelimit import Limiter, Window
from core.settings import Settings
from core.stores import Stores
from miniapps import inbox, registry, repository
from miniapps.models import READ, Actor

log = structlog.get_logger(__name__)

RatingLabel = Literal["非常满意", "满意", "基本满意", "不满意", "非常不满意"]
# score -> label, best first
LEVELS: dict[int, RatingLabel] = {5: "非常满意", 4: "满意", 3: "基本满意", 2: "不满意", 1: "非常不满意"}
SCORES: dict[str, int] = {label: score for score, label in LEVELS.items()}
# 差评: these open a rectification case.
CASE_SCORES = frozenset({1, 2})
SATISFIED_SCORES = frozenset({3, 4, 5})
CASE_WORKING_DAYS = 15
MAX_CASES = 1000

TransactionId = Annotated[
    str, Meta(pattern=r"^[0-9A-Za-z_.:-]{1,64}$", description="the mini-app's own transaction number")
]
CaseStatus = Literal["open", "answered"]


# --- working days ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkCalendar:
    """Monday to Friday are working days, except `holidays`; `workdays` are weekend days worked (调休)."""

    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()

    def is_working_day(self, day: date) -> bool:
        if day in self.workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def add_working_days(self, start: date, count: int) -> date:
        """The `count`-th working day after `start` (start itself is not counted: a case opened on a Friday
        has Monday as its first day)."""
        if count < 1:
            raise ValueError("count: at least 1")
        day, counted = start, 0
        while counted < count:
            day += timedelta(days=1)
            if self.is_working_day(day):
                counted += 1
        return day


WEEKDAYS_ONLY = WorkCalendar()


def parse_calendar(text: str, source: str = "holidays file") -> WorkCalendar:
    """Lines "YYYY-MM-DD holiday" or "YYYY-MM-DD workday"; blank lines and '#' comments are skipped."""
    holidays: set[date] = set()
    workdays: set[date] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2 or parts[1] not in ("holiday", "workday"):
                raise ValueError
            day = date.fromisoformat(parts[0])
        except ValueError:
            raise ValueError(f"{source}, line {number}: expected 'YYYY-MM-DD holiday|workday'") from None
        (holidays if parts[1] == "holiday" else workdays).add(day)
    both = holidays & workdays
    if both:
        raise ValueError(f"{source}: {min(both)} is both a holiday and a workday")
    return WorkCalendar(frozenset(holidays), frozenset(workdays))


@functools.lru_cache(maxsize=8)
def _calendar_file(path: str, _mtime_ns: int) -> WorkCalendar:
    with open(path, encoding="utf-8") as handle:
        return parse_calendar(handle.read(), path)


def calendar_of(settings: Settings) -> WorkCalendar:
    """The working-day calendar in force: the holidays file (re-read when it changes) or weekdays only.
    A file that cannot be read or parsed is logged as an error and weekdays are used: a citizen's rating
    is not refused for it."""
    path = settings.miniapp_holidays_file
    if path is None:
        return WEEKDAYS_ONLY
    try:
        return _calendar_file(path, os.stat(path).st_mtime_ns)
    except (OSError, ValueError) as exc:
        log.error(
            "miniapps.holidays_file_unusable",
            error=str(exc) if isinstance(exc, ValueError) else type(exc).__name__,
        )
        return WEEKDAYS_ONLY


def local_day(moment: datetime) -> date:
    return moment.astimezone(clock.SHANGHAI).date()


def case_due_on(opened_at: datetime, calendar: WorkCalendar) -> date:
    """The last day (Asia/Shanghai) to answer a case opened at `opened_at`."""
    return calendar.add_working_days(local_day(opened_at), CASE_WORKING_DAYS)


# --- what goes in and out ----------------------------------------------------------------------------------


class RateTransaction(msgspec.Struct, forbid_unknown_fields=True):
    transaction_id: TransactionId
    level: RatingLabel
    # Required for 不满意 and 非常不满意: the organisation answers it.
    comment: Annotated[str, Meta(max_length=500)] = ""


class RatingView(msgspec.Struct):
    id: UUID
    appid: str
    transaction_id: str
    level: RatingLabel
    score: int
    comment: str
    created_at: datetime
    # The rectification case a bad rating opened, and the day it must be answered by.
    case_id: UUID | None = None
    case_due_on: date | None = None


class AnswerCase(msgspec.Struct, forbid_unknown_fields=True):
    answer: Annotated[str, Meta(min_length=1, max_length=2000)]


class CaseView(msgspec.Struct):
    id: UUID
    appid: str
    app_name: str
    organisation_id: UUID
    organisation_name: str
    transaction_id: str
    level: RatingLabel
    comment: str
    status: CaseStatus
    opened_at: datetime
    due_on: date
    overdue: bool
    answer: str | None = None
    answered_at: datetime | None = None
    answered_late: bool | None = None


class LevelCount(msgspec.Struct):
    level: RatingLabel
    score: int
    count: int


class CaseCounts(msgspec.Struct):
    open: int
    overdue: int
    answered: int
    answered_late: int


class RatingStats(msgspec.Struct):
    appid: str
    total: int
    levels: list[LevelCount]  # best first, every level present
    # (非常满意 + 满意 + 基本满意) / total; null while there are no ratings.
    satisfaction_rate: float | None
    cases: CaseCounts


def _case_not_found() -> NotFound:
    return NotFound("no such case among your organisations' apps", code="case_not_found")


def case_view(row: asyncpg.Record, today: date) -> CaseView:
    answered_at: datetime | None = row["answered_at"]
    return CaseView(
        id=row["id"],
        appid=row["appid"],
        app_name=row["app_name"],
        organisation_id=row["organisation_id"],
        organisation_name=row["organisation_name"],
        transaction_id=row["transaction_id"],
        level=LEVELS[row["level"]],
        comment=row["comment"],
        status=row["status"],
        opened_at=row["opened_at"],
        due_on=row["due_on"],
        overdue=row["status"] == "open" and today > row["due_on"],
        answer=row["answer"],
        answered_at=answered_at,
        answered_late=local_day(answered_at) > row["due_on"] if answered_at is not None else None,
    )


# --- services ----------------------------------------------------------------------------------------------


async def rate(
    stores: Stores, account_id: UUID, appid: str, request: RateTransaction, *, now: datetime | None = None
) -> RatingView:
    """The citizen rates one transaction of the app. 404 app_not_found, 409 already_rated, 422
    comment_required for a bad rating without a comment, 429 past miniapp_ratings_per_hour."""
    score = SCORES[request.level]
    comment = request.comment.strip()
    if score in CASE_SCORES and not comment:
        raise InvalidInput(
            f"comment: say what went wrong ({request.level} opens a case the organisation answers)",
            field="comment",
            code="comment_required",
        )
    settings = stores.settings
    await Limiter(stores.redis, settings).hit(
        "miniapp-rating", account_id.hex, (Window("hour", settings.miniapp_ratings_per_hour, 3600),)
    )
    moment = now or clock.now()
    calendar = calendar_of(settings)
    rating_id = ids.new_id()
    async with transaction(stores.pool, settings) as conn:
        app = await repository.app_by_id(conn, appid)
        if app is None:
            raise NotFound("no such mini-app", code="app_not_found")
        row = await repository.insert_rating(
            conn,
            rating_id=rating_id,
            appid=appid,
            transaction_id=request.transaction_id,
            account_id=account_id,
            level=score,
            comment=comment,
            created_at=moment,
        )
        if row is None:
            raise Conflict(
                "this transaction has been rated already", field="transaction_id", code="already_rated"
            )
        case_id: UUID | None = None
        due_on: date | None = None
        if score in CASE_SCORES:
            case_id, due_on = ids.new_id(), case_due_on(moment, calendar)
            await repository.insert_case(
                conn,
                case_id=case_id,
                rating_id=rating_id,
                appid=appid,
                organisation_id=app["organisation_id"],
                opened_at=moment,
                due_on=due_on,
            )
    if case_id is not None:
        log.info("miniapps.case_opened", appid=appid, case=str(case_id), due_on=str(due_on))
    return RatingView(
        id=rating_id,
        appid=appid,
        transaction_id=request.transaction_id,
        level=request.level,
        score=score,
        comment=comment,
        created_at=row["created_at"],
        case_id=case_id,
        case_due_on=due_on,
    )


async def answer_case(
    stores: Stores, actor: Actor, case_id: UUID, request: AnswerCase, *, now: datetime | None = None
) -> CaseView:
    """A member of the app's organisation answers the case, once (409 case_answered); the answer goes to
    the citizen's inbox. Late answers are taken and marked late."""
    assert actor.account_id is not None
    answer = request.answer.strip()
    if not answer:
        raise InvalidInput("answer: must not be blank", field="answer")
    moment = now or clock.now()
    async with transaction(stores.pool, stores.settings) as conn:
        case = await repository.case_by_id(conn, case_id, for_update=True)
        if (
            case is None
            or await repository.member_role(conn, case["organisation_id"], actor.account_id) is None
        ):
            raise _case_not_found()
        if case["status"] == "answered":
            raise Conflict("the case has been answered already", code="case_answered")
        await repository.set_case_answer(conn, case_id, answer, actor.account_id, moment)
        await repository.add_audit(
            conn,
            action="case_answered",
            actor=actor,
            organisation_id=case["organisation_id"],
            appid=case["appid"],
            detail={"case": str(case_id), "late": local_day(moment) > case["due_on"]},
        )
        if case["account_id"] is not None:
            await inbox.deliver(
                conn,
                case["account_id"],
                title=f"您对「{case['app_name']}」的评价已收到答复",
                body=f"办件 {case['transaction_id']}：{answer}",
                source="miniapps.ratings",
            )
        answered = await repository.case_by_id(conn, case_id)
    assert answered is not None
    return case_view(answered, local_day(moment))


async def app_cases(
    stores: Stores, account_id: UUID, appid: str, *, status: CaseStatus | None = None, limit: int = 200
) -> list[CaseView]:
    """The app's cases, newest first (members of its organisation)."""
    if not 1 <= limit <= MAX_CASES:
        raise InvalidInput(f"limit: 1 to {MAX_CASES}", field="limit")
    async with connection(stores.pool, stores.settings) as conn:
        await registry.app_for_member(conn, appid, account_id, READ)
        rows = await repository.cases_of_app(conn, appid, status, limit)
    today = local_day(clock.now())
    return [case_view(row, today) for row in rows]


async def open_cases(
    stores: Stores, *, overdue_only: bool = False, now: datetime | None = None, limit: int = MAX_CASES
) -> list[CaseView]:
    """Open cases across the platform, most overdue first (for ops)."""
    today = local_day(now or clock.now())
    async with connection(stores.pool, stores.settings) as conn:
        rows = await repository.open_cases(conn, today if overdue_only else None, limit)
    return [case_view(row, today) for row in rows]


def stats_of(appid: str, level_counts: Iterable[tuple[int, int]], cases: CaseCounts) -> RatingStats:
    counts = dict.fromkeys(LEVELS, 0)
    for score, count in level_counts:
        counts[score] += count
    total = sum(counts.values())
    satisfied = sum(counts[score] for score in SATISFIED_SCORES)
    return RatingStats(
        appid=appid,
        total=total,
        levels=[LevelCount(level=label, score=score, count=counts[score]) for score, label in LEVELS.items()],
        satisfaction_rate=round(satisfied / total, 4) if total else None,
        cases=cases,
    )


async def app_stats(stores: Stores, appid: str, *, now: datetime | None = None) -> RatingStats:
    """The app's rating statistics (no membership check: ops, and members through member_stats)."""
    today = local_day(now or clock.now())
    async with connection(stores.pool, stores.settings) as conn:
        if await repository.app_by_id(conn, appid) is None:
            raise NotFound("no such mini-app", code="app_not_found")
        level_counts = await repository.rating_counts(conn, appid)
        case_row = await repository.case_counts(conn, appid, today)
    return stats_of(appid, level_counts, CaseCounts(**dict(case_row)))


async def member_stats(stores: Stores, account_id: UUID, appid: str) -> RatingStats:
    async with connection(stores.pool, stores.settings) as conn:
        await registry.app_for_member(conn, appid, account_id, READ)
    return await app_stats(stores, appid)


async def forget_account(stores: Stores, account_id: UUID) -> int:
    """For account erasure (PIPL art. 47): the account's ratings stay in the statistics, no longer tied to
    it. Returns how many were unlinked."""
    async with transaction(stores.pool, stores.settings) as conn:
        return await repository.unlink_ratings(conn, account_id)
