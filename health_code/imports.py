"""Bulk imports of rule inputs from CSV files (millions of rows): risk areas, test results, vaccinations.

Each import is one transaction: rows are checked and converted in Python (a bad row stops everything with
its line number), copied into a temporary staging table with binary COPY (risk areas streamed in one COPY,
people in chunks between account lookups), merged with one INSERT ... SELECT, and the accounts whose status
may change get recompute jobs through the outbox, with job ids derived from the file's SHA-256 (importing
the same file again schedules nothing twice). Each import is recorded in health_imports.

Files (UTF-8, a header line naming the columns, in any order):
- risk areas:   region_code,level,valid_from,valid_to   (valid_to may be empty: until lifted)
- tests:        id_number,result,sampled_at              (result: positive / negative)
- vaccinations: id_number,dose,at                        (dose: 1-10)
Times are ISO 8601 ("2026-11-20T08:00:00+08:00"); without an offset they are China Standard Time, and a
date alone is its midnight there.

People are identified by ID number: each is hashed into the accounts blind index in memory and matched
through auth's lookup; the number itself never reaches the database or any message. Rows of people
without an account are counted and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Iterator
from datetime import datetime, time
from pathlib import Path
from typing import IO, Literal
from uuid import UUID

import msgspec
from stdnum.cn import ric

from auth.lookup import account_ids_by_id_number_index, id_number_index
from core import clock, ids
from core.clock import SHANGHAI
from core.db import transaction
from core.errors import InvalidInput
from core.stores import Stores
from health_code import repository
from health_code.rules import valid_region
from health_code.status import FUTURE_SKEW, active_rules, schedule_recompute

Kind = Literal["risk-areas", "tests", "vaccinations"]
COLUMNS: dict[str, tuple[str, ...]] = {
    "risk-areas": ("region_code", "level", "valid_from", "valid_to"),
    "tests": ("id_number", "result", "sampled_at"),
    "vaccinations": ("id_number", "dose", "at"),
}
# Rows of people per account lookup and COPY, and rows between progress reports: bounded memory.
CHUNK_ROWS = 20_000
LEVELS = frozenset({"low", "medium", "high"})
RESULTS = frozenset({"positive", "negative"})
_DIGITS = frozenset("0123456789")


class ImportFileError(InvalidInput):
    """A file that cannot be imported; the message names the line (never an ID number)."""

    code = "invalid_import_file"

    def __init__(self, line: int, detail: str) -> None:
        super().__init__(f"line {line}: {detail}")
        self.line = line


class ImportResult(msgspec.Struct, kw_only=True):
    import_id: UUID
    kind: Kind
    rows_read: int
    # Rows new or changed in the database (a row already there as it is does not count).
    rows_stored: int
    # Rows skipped because no account holds their ID number.
    rows_unknown: int
    accounts_scheduled: int
    jobs: int
    file_sha256: str


Progress = Callable[[int], None]


class _Reader:
    """CSV rows of a file with their line numbers, its SHA-256 and how far it has been read."""

    def __init__(self, file: IO[bytes], progress: Progress | None) -> None:
        self.sha256 = hashlib.file_digest(file, "sha256")  # type: ignore[arg-type]
        file.seek(0)
        self._file = file
        self._progress = progress
        # utf-8-sig: a byte-order mark some spreadsheet exports put first is not part of the header.
        self.rows = csv.reader(io.TextIOWrapper(file, encoding="utf-8-sig", newline=""))

    @property
    def line(self) -> int:
        return self.rows.line_num

    def report(self) -> None:
        if self._progress is not None:
            self._progress(self._file.tell())

    def bad_text_line(self) -> int:
        """The first line that is not UTF-8 (decoding runs ahead of the CSV reader, so look again)."""
        self._file.seek(0)
        for number, raw in enumerate(self._file, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
        return self.line + 1


def _header(reader: _Reader, kind: Kind) -> tuple[int, ...]:
    """Positions of the kind's columns in the header line."""
    expected = COLUMNS[kind]
    try:
        names = [name.strip().lower() for name in next(reader.rows)]
    except StopIteration:
        raise ImportFileError(1, f"empty file: expected the header {','.join(expected)}") from None
    except csv.Error as exc:
        raise ImportFileError(reader.line, f"not CSV ({exc})") from None
    except UnicodeDecodeError:
        raise ImportFileError(reader.bad_text_line(), "not UTF-8 text") from None
    missing = [name for name in expected if name not in names]
    unknown = [name for name in names if name not in expected]
    if missing or unknown or len(names) != len(expected):
        raise ImportFileError(
            1, f"expected the header {','.join(expected)} (in any order), found {','.join(names)}"
        )
    return tuple(names.index(name) for name in expected)


def parse_time(text: str) -> datetime:
    """ISO 8601; no offset means China Standard Time, a date alone its midnight. ValueError otherwise."""
    text = text.strip()
    if len(text) == 10:
        day = datetime.fromisoformat(text)
        return datetime.combine(day.date(), time(), SHANGHAI)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=SHANGHAI)


def _fields(reader: _Reader, positions: tuple[int, ...]) -> Iterator[tuple[int, list[str]]]:
    """(line, the kind's fields in COLUMNS order) per row; blank lines are skipped."""
    width = len(positions)
    rows = reader.rows
    try:
        for row in rows:
            if len(row) != width:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                raise ImportFileError(rows.line_num, f"expected {width} fields, found {len(row)}")
            yield rows.line_num, [row[p] for p in positions]
    except csv.Error as exc:
        raise ImportFileError(rows.line_num, f"not CSV ({exc})") from None
    except UnicodeDecodeError:
        raise ImportFileError(reader.bad_text_line(), "not UTF-8 text") from None


# --- risk areas ------------------------------------------------------------------------------------------


def _area_rows(
    reader: _Reader, positions: tuple[int, ...], counted: list[int]
) -> Iterator[tuple[object, ...]]:
    """Checked rows for the staging COPY, streamed: the database stores one while the next is parsed."""
    for line, (region, level, valid_from_text, valid_to_text) in _fields(reader, positions):
        region, level = region.strip(), level.strip().lower()
        if not valid_region(region):
            raise ImportFileError(line, f"region_code: {region!r} is not a 6-digit GB/T 2260 code")
        if level not in LEVELS:
            raise ImportFileError(line, f"level: {level!r} is not low, medium or high")
        try:
            valid_from = parse_time(valid_from_text)
        except ValueError:
            raise ImportFileError(line, f"valid_from: {valid_from_text!r} is not an ISO 8601 time") from None
        valid_to = None
        if valid_to_text.strip():
            try:
                valid_to = parse_time(valid_to_text)
            except ValueError:
                raise ImportFileError(line, f"valid_to: {valid_to_text!r} is not an ISO 8601 time") from None
            if valid_to <= valid_from:
                raise ImportFileError(line, "valid_to: must be after valid_from")
        counted[0] += 1
        if counted[0] % CHUNK_ROWS == 0:
            reader.report()
        yield (line, region, level, valid_from, valid_to)


async def import_risk_areas(
    stores: Stores, path: str | Path, *, by: str, progress: Progress | None = None
) -> ImportResult:
    """Import risk areas; an area already known (same code, level and start) takes the file's end.
    Accounts with a trip inside an imported window (old or new) within the rules' lookback get recomputed."""
    return await _import(stores, Path(path), "risk-areas", by=by, progress=progress)


# --- people: tests and vaccinations ---------------------------------------------------------------------


def _id_number_ok(text: str) -> bool:
    return len(text) == 18 and set(text[:17]) <= _DIGITS and ric.calc_check_digit(text) == text[17]


def _person_rows(
    reader: _Reader, positions: tuple[int, ...], kind: Kind, index: Callable[[str], bytes], now: datetime
) -> Iterator[list[tuple[int, bytes, object, datetime]]]:
    """Chunks of (line, blind index, result or dose, time). Messages never quote a value of these files:
    a shifted column could put an ID number anywhere."""
    chunk: list[tuple[int, bytes, object, datetime]] = []
    time_column = COLUMNS[kind][2]
    latest = now + FUTURE_SKEW
    for line, (id_text, value_text, time_text) in _fields(reader, positions):
        number = id_text.strip().upper()
        if not _id_number_ok(number):
            raise ImportFileError(line, "id_number: not an 18-character resident ID number (GB 11643)")
        value: str | int
        if kind == "tests":
            value = value_text.strip().lower()
            if value not in RESULTS:
                raise ImportFileError(line, "result: must be positive or negative")
        else:
            dose = value_text.strip()
            value = int(dose) if dose.isascii() and dose.isdigit() else 0
            if not 1 <= value <= 10:
                raise ImportFileError(line, "dose: must be a whole number from 1 to 10")
        try:
            at = parse_time(time_text)
        except ValueError:
            raise ImportFileError(line, f"{time_column}: not an ISO 8601 time") from None
        if at > latest:
            raise ImportFileError(line, f"{time_column}: in the future")
        chunk.append((line, index(number), value, at))
        if len(chunk) == CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def import_tests(
    stores: Stores, path: str | Path, *, by: str, progress: Progress | None = None
) -> ImportResult:
    """Import test results. Accounts with a positive result within the rules' lookback get recomputed, and
    those with a negative one whose status a rule currently holds (it may clear it)."""
    return await _import(stores, Path(path), "tests", by=by, progress=progress)


async def import_vaccinations(
    stores: Stores, path: str | Path, *, by: str, progress: Progress | None = None
) -> ImportResult:
    """Import vaccination doses (the same dose again moves its date). Only accounts whose status a rule
    currently holds can change, so only those get recomputed."""
    return await _import(stores, Path(path), "vaccinations", by=by, progress=progress)


# --- the shared path ---------------------------------------------------------------------------------------


async def _import(
    stores: Stores, path: Path, kind: Kind, *, by: str, progress: Progress | None
) -> ImportResult:
    by = by.strip()
    if not by:
        raise InvalidInput("by: who imports (for the import record)", field="by")
    started = clock.now()
    import_id = ids.new_id()
    vault = await stores.vault() if kind != "risk-areas" else None
    rows_read = rows_unknown = 0
    try:
        file = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"{path.name}: cannot read ({exc.strerror})") from None
    with file:
        reader = _Reader(file, progress)
        positions = _header(reader, kind)
        async with transaction(stores.pool, stores.settings) as conn:
            rules = await active_rules(conn)
            lookback_from = started - rules.lookback
            if kind == "risk-areas":
                counted = [0]
                await repository.create_area_staging(conn)
                await repository.copy_area_rows(conn, _area_rows(reader, positions, counted))
                rows_read = counted[0]
            else:
                assert vault is not None
                await repository.create_person_staging(conn, kind)

                def index(number: str) -> bytes:
                    return id_number_index(vault, number)

                for people in _person_rows(reader, positions, kind, index, started):
                    accounts = await account_ids_by_id_number_index(conn, [row[1] for row in people])
                    known = [
                        (line, accounts[bidx], value, at)
                        for line, bidx, value, at in people
                        if bidx in accounts
                    ]
                    await repository.copy_person_rows(conn, kind, known)
                    rows_read += len(people)
                    rows_unknown += len(people) - len(known)
                    reader.report()
            reader.report()
            if kind == "risk-areas":
                stored, affected = await repository.merge_areas(conn, import_id, lookback_from)
            elif kind == "tests":
                stored, affected = await repository.merge_tests(conn, import_id, lookback_from)
            else:
                stored, affected = await repository.merge_vaccinations(conn, import_id)
            sha256 = reader.sha256.digest()
            jobs = await schedule_recompute(conn, affected, key=f"health.import:{kind}:{sha256.hex()[:32]}")
            await repository.record_import(
                conn,
                import_id,
                kind,
                sha256,
                rows_read=rows_read,
                rows_stored=stored,
                rows_unknown=rows_unknown,
                accounts_scheduled=len(affected),
                by=by,
                started_at=started,
            )
    return ImportResult(
        import_id=import_id,
        kind=kind,
        rows_read=rows_read,
        rows_stored=stored,
        rows_unknown=rows_unknown,
        accounts_scheduled=len(affected),
        jobs=jobs,
        file_sha256=sha256.hex(),
    )


IMPORTERS = {"risk-areas": import_risk_areas, "tests": import_tests, "vaccinations": import_vaccinations}
