"""好差评 rules without stores: the five levels and their labels, the working-day deadline of a rectification
case (weekends, holidays and make-up working days, days counted in Asia/Shanghai), the holidays file, the
statistics arithmetic, and the schedule of periodic jobs."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.jobs import _schedule, periodic
from core.settings import load_settings
from miniapps.ratings import (
    CASE_SCORES,
    CASE_WORKING_DAYS,
    LEVELS,
    SCORES,
    WEEKDAYS_ONLY,
    CaseCounts,
    RateTransaction,
    WorkCalendar,
    calendar_of,
    case_due_on,
    parse_calendar,
    stats_of,
)

NO_CASES = CaseCounts(open=0, overdue=0, answered=0, answered_late=0)
dates = st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31))


# --- levels ------------------------------------------------------------------------------------------------


def test_five_levels_stored_as_five_to_one_with_their_labels() -> None:
    assert list(LEVELS.items()) == [
        (5, "非常满意"),
        (4, "满意"),
        (3, "基本满意"),
        (2, "不满意"),
        (1, "非常不满意"),
    ]
    assert SCORES == {"非常满意": 5, "满意": 4, "基本满意": 3, "不满意": 2, "非常不满意": 1}
    # The bottom two, and only they, open a case.
    assert {LEVELS[score] for score in CASE_SCORES} == {"不满意", "非常不满意"}


def test_the_api_takes_labels_not_numbers() -> None:
    body = b'{"transaction_id": "BJ-2026-0001", "level": "\xe5\x9f\xba\xe6\x9c\xac\xe6\xbb\xa1\xe6\x84\x8f"}'
    rating = msgspec.json.decode(body, type=RateTransaction)
    assert rating.level == "基本满意" and rating.comment == ""
    for level in ("5", '"5"', '"good"', '"非常 满意"'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(
                f'{{"transaction_id": "T1", "level": {level}}}'.encode(), type=RateTransaction
            )
    for transaction_id in ('""', '"has space"', '"' + "x" * 65 + '"', '"办件1"'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(
                f'{{"transaction_id": {transaction_id}, "level": "满意"}}'.encode(), type=RateTransaction
            )
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"transaction_id": "T1", "level": "\xe6\xbb\xa1\xe6\x84\x8f", "x": 1}', type=RateTransaction
        )


# --- working days ------------------------------------------------------------------------------------------


def weekdays_between(start: date, end: date) -> int:
    """Weekdays in (start, end]."""
    return sum(1 for n in range(1, (end - start).days + 1) if (start + timedelta(days=n)).weekday() < 5)


@given(start=dates, count=st.integers(min_value=1, max_value=60))
def test_deadline_is_a_weekday_exactly_count_weekdays_later(start: date, count: int) -> None:
    due = WEEKDAYS_ONLY.add_working_days(start, count)
    assert due.weekday() < 5
    assert weekdays_between(start, due) == count
    # ... and the earliest such day: the day before has one weekday fewer.
    assert weekdays_between(start, due - timedelta(days=1)) == count - 1


@given(start=dates)
def test_fifteen_working_days_is_three_weeks_without_holidays(start: date) -> None:
    due = WEEKDAYS_ONLY.add_working_days(start, CASE_WORKING_DAYS)
    assert due.weekday() < 5 and weekdays_between(start, due) == CASE_WORKING_DAYS
    # Opened on a weekday: the same weekday three weeks on; on a weekend: the Friday of the third week.
    expected = (
        start + timedelta(days=21) if start.weekday() < 5 else start + timedelta(days=25 - start.weekday())
    )
    assert due == expected


@given(
    start=dates,
    count=st.integers(min_value=1, max_value=30),
    offsets=st.sets(st.integers(min_value=0, max_value=80), max_size=30),
    flips=st.sets(st.integers(min_value=0, max_value=80), max_size=10),
)
def test_deadline_with_holidays_and_make_up_days(
    start: date, count: int, offsets: set[int], flips: set[int]
) -> None:
    holidays = {start + timedelta(days=n) for n in offsets}
    workdays = {start + timedelta(days=n) for n in flips - offsets}
    calendar = WorkCalendar(frozenset(holidays), frozenset(workdays))
    due = calendar.add_working_days(start, count)
    assert calendar.is_working_day(due)
    counted = sum(
        1 for n in range(1, (due - start).days + 1) if calendar.is_working_day(start + timedelta(days=n))
    )
    assert counted == count
    for day in holidays - workdays:
        assert not calendar.is_working_day(day)
    for day in workdays:
        assert calendar.is_working_day(day)


def test_deadline_examples() -> None:
    friday = date(2026, 11, 20)
    assert WEEKDAYS_ONLY.add_working_days(friday, 1) == date(2026, 11, 23)  # Monday
    assert WEEKDAYS_ONLY.add_working_days(friday, 15) == date(2026, 12, 11)
    assert WEEKDAYS_ONLY.add_working_days(date(2026, 11, 21), 15) == date(2026, 12, 11)  # from a Saturday
    with pytest.raises(ValueError):
        WEEKDAYS_ONLY.add_working_days(friday, 0)
    # A National Day week: 1-7 October off, Saturday 10 October worked (调休).
    golden_week = parse_calendar(
        "\n".join([f"2026-10-0{d} holiday" for d in range(1, 8)] + ["2026-10-10 workday"])
    )
    # From Wednesday 30 September: 8, 9, 10 (Sat), 12 ... counted.
    assert golden_week.add_working_days(date(2026, 9, 30), 1) == date(2026, 10, 8)
    assert golden_week.add_working_days(date(2026, 9, 30), 3) == date(2026, 10, 10)
    assert golden_week.add_working_days(date(2026, 9, 30), 15) == date(2026, 10, 27)


def test_the_day_a_case_opens_is_the_day_in_shanghai() -> None:
    # Sunday 16:30 UTC is Monday 00:30 in Shanghai: Monday is day 0, so three weeks on is a Monday.
    late_sunday_utc = datetime(2026, 11, 22, 16, 30, tzinfo=UTC)
    assert case_due_on(late_sunday_utc, WEEKDAYS_ONLY) == date(2026, 12, 14)
    # Sunday 15:30 UTC is still Sunday in Shanghai (23:30).
    assert case_due_on(datetime(2026, 11, 22, 15, 30, tzinfo=UTC), WEEKDAYS_ONLY) == date(2026, 12, 11)


def test_holidays_file(tmp_path: Path) -> None:
    calendar = parse_calendar(
        "# 2027 Spring Festival (example)\n\n2027-02-08 holiday  # 除夕\n2027-02-09 holiday\n2027-02-06 workday\n"
    )
    assert calendar.holidays == {date(2027, 2, 8), date(2027, 2, 9)}
    assert calendar.workdays == {date(2027, 2, 6)}
    with pytest.raises(ValueError, match="line 2"):
        parse_calendar("2027-02-08 holiday\n2027-02-30 holiday\n")
    with pytest.raises(ValueError, match="line 1"):
        parse_calendar("2027-02-08 day-off\n")
    with pytest.raises(ValueError, match="both a holiday and a workday"):
        parse_calendar("2027-02-08 holiday\n2027-02-08 workday\n")

    path = tmp_path / "holidays.txt"
    path.write_text("2027-02-08 holiday\n", encoding="utf-8")
    settings = load_settings({"TONGBAN_MINIAPP_HOLIDAYS_FILE": str(path)})
    assert calendar_of(settings).holidays == {date(2027, 2, 8)}
    # An edited file is read again.
    path.write_text("2027-02-09 holiday\n", encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert calendar_of(settings).holidays == {date(2027, 2, 9)}
    assert calendar_of(load_settings({})) is WEEKDAYS_ONLY
    # A broken or missing file does not stop ratings: weekdays only, and an error in the log.
    path.write_text("2027-02-09 holyday\n", encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000))
    assert calendar_of(settings) is WEEKDAYS_ONLY
    missing = load_settings({"TONGBAN_MINIAPP_HOLIDAYS_FILE": str(tmp_path / "missing.txt")})
    assert calendar_of(missing) is WEEKDAYS_ONLY


# --- statistics --------------------------------------------------------------------------------------------


def test_satisfaction_rate_is_the_share_of_the_top_three() -> None:
    stats = stats_of("tb0123456789abcdef", [(5, 6), (4, 2), (3, 1), (2, 3), (1, 4)], NO_CASES)
    assert stats.total == 16
    assert [(level.level, level.score, level.count) for level in stats.levels] == [
        ("非常满意", 5, 6),
        ("满意", 4, 2),
        ("基本满意", 3, 1),
        ("不满意", 2, 3),
        ("非常不满意", 1, 4),
    ]
    assert stats.satisfaction_rate == 0.5625
    empty = stats_of("tb0123456789abcdef", [], NO_CASES)
    assert empty.total == 0 and empty.satisfaction_rate is None
    assert [level.count for level in empty.levels] == [0, 0, 0, 0, 0]
    assert stats_of("tb0123456789abcdef", [(1, 3)], NO_CASES).satisfaction_rate == 0.0


# --- periodic jobs -----------------------------------------------------------------------------------------


def test_periodic_schedules() -> None:
    assert _schedule(300) == {"minute": {0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55}, "second": 0}
    assert _schedule(3600) == {"minute": {0}, "second": 0}
    assert _schedule(1) == {"second": set(range(60))}
    assert _schedule(15) == {"second": {0, 15, 30, 45}}
    for bad in (0, 7, 90, 420, 7200):
        with pytest.raises(ValueError):
            _schedule(bad)
    with pytest.raises(ValueError):
        periodic("NoDots", every_seconds=60)
    with pytest.raises(ValueError):
        periodic("tests.bad_period", every_seconds=45 * 60)
