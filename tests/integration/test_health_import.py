"""`tongban health import` against the real stores: a risk-area import turns a citizen who travelled there
yellow through the outbox and the worker; tests and vaccinations are matched to accounts by the ID-number
blind index (the number itself is stored nowhere) and unknown people are counted and skipped; bad files
stop with the line number and store nothing."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from click.testing import Result
from typer.testing import CliRunner

from auth import repository as auth_repository
from auth.realname import store_identity
from core import clock, ids
from core.jobs import Queue, close_queue, create_worker, decode_payload, open_queue, relay_once
from core.pii.masking import mask_phone, normalize_phone
from core.settings import Settings
from core.stores import Stores
from health_code import imports, status
from health_code.imports import ImportFileError
from health_code.jobs import RECOMPUTE_JOB, Recompute, recompute_job
from scripts.cli import app


def days(n: float) -> timedelta:
    return timedelta(days=n)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def id_number() -> str:
    from stdnum.cn import ric

    stem = f"110105{1960 + secrets.randbelow(40)}0{1 + secrets.randbelow(9)}1{secrets.randbelow(10)}"
    stem += f"{secrets.randbelow(1000):03d}"
    return next(stem + c for c in "0123456789X" if ric.is_valid(stem + c))


async def new_account(stores: Stores, with_id_number: str | None = None) -> UUID:
    vault = await stores.vault()
    account_id = ids.new_id()
    phone = "139" + f"{secrets.randbelow(10**8):08d}"
    async with stores.pool.acquire() as conn:
        sealed = await vault.encrypt(conn, phone, table="accounts", column="phone", row_id=account_id)
        bidx = vault.blind_index(phone, purpose="accounts.phone", normalize=normalize_phone)
        assert await auth_repository.insert_account(conn, account_id, sealed, bidx, mask_phone(phone))
        if with_id_number is not None:
            await store_identity(conn, vault, account_id, "张三", with_id_number)
    return account_id


def write(tmp_path: Path, header: str, *lines: str) -> Path:
    file = tmp_path / f"import-{secrets.token_hex(4)}.csv"
    file.write_text(header + "\n" + "\n".join(lines) + "\n")
    return file


AREAS = "region_code,level,valid_from,valid_to"
TESTS = "id_number,result,sampled_at"
DOSES = "id_number,dose,at"


async def cli(*args: str) -> Result:
    # The command runs its own event loop (asyncio.run), so it goes to a thread off this test's loop.
    runner = CliRunner(env={"COLUMNS": "200"})
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def run_due_jobs(stores: Stores) -> int:
    """The relay and worker's part for due recompute jobs, run in this process."""
    rows = await stores.pool.fetch(
        """UPDATE outbox SET enqueued_at = now()
           WHERE job_name = $1 AND enqueued_at IS NULL AND (defer_until IS NULL OR defer_until <= now())
           RETURNING id, payload""",
        RECOMPUTE_JOB,
    )
    for row in sorted(rows, key=lambda r: r["id"]):
        payload = decode_payload(row["payload"], Recompute)
        assert isinstance(payload, Recompute)
        await recompute_job(stores, payload)
    return len(rows)


async def colour(stores: Stores, account_id: UUID) -> str:
    async with stores.pool.acquire() as conn:
        return (await status.current_status(conn, account_id)).colour


async def import_jobs(stores: Stores, sha256: str) -> int:
    return int(
        await stores.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE job_id LIKE $1", f"health.import:%:{sha256[:32]}:%"
        )
    )


@pytest.fixture()
async def queue(settings: Settings) -> AsyncIterator[Queue]:
    opened = open_queue(settings)
    yield opened
    await close_queue(opened)


@pytest.fixture(autouse=True)
def fresh_rules() -> None:
    status.forget_rules()


# --- risk areas ------------------------------------------------------------------------------------------


async def test_a_risk_area_import_turns_a_traveller_yellow_through_the_outbox_and_worker(
    stores: Stores, settings: Settings, queue: Queue, tmp_path: Path
) -> None:
    now = clock.now()
    traveller, stay_at_home = await new_account(stores), await new_account(stores)
    async with stores.pool.acquire() as conn:
        await status.record_trip(conn, traveller, "370102", ids.new_id(), now - days(3))
        await status.record_trip(conn, stay_at_home, "370102", None, now - days(20))  # before the lookback
    assert await colour(stores, traveller) == "green"

    file = write(
        tmp_path, AREAS, f"370100,high,{iso(now - days(5))},", f"370200,medium,{iso(now - days(5))},"
    )
    result = await cli("health", "import", "risk-areas", str(file))
    assert result.exit_code == 0, result.output
    assert "rows read" in result.output and "1 in 1 jobs" in result.output

    # the import's outbox row goes through the relay into the queue, and the worker runs it (rows other
    # tests left pending, deferred ones among them, are set aside: a burst worker would wait for those)
    sha256 = await stores.pool.fetchval(
        "SELECT encode(file_sha256, 'hex') FROM health_imports ORDER BY finished_at DESC LIMIT 1"
    )
    await stores.pool.execute(
        "UPDATE outbox SET enqueued_at = now() WHERE enqueued_at IS NULL AND job_id NOT LIKE $1",
        f"health.import:risk-areas:{sha256[:32]}:%",
    )
    assert await relay_once(stores, queue) == 1
    worker = create_worker(settings, stores=stores, relay=False, burst=True, handle_signals=False)
    worker.poll_delay_s = 0.05
    try:
        await asyncio.wait_for(worker.async_run(), timeout=30)
    finally:
        await worker.close()
    assert worker.jobs_complete >= 1 and worker.jobs_failed == 0
    async with stores.pool.acquire() as conn:
        current = await status.current_status(conn, traveller)
    assert (current.colour, current.reasons, current.version) == ("yellow", ["high_risk_trip"], 2)
    assert await colour(stores, stay_at_home) == "green"

    # the same file again: nothing stored, nothing scheduled twice
    again = await imports.import_risk_areas(stores, file, by="test")
    assert (again.rows_read, again.rows_stored) == (2, 0)
    assert await import_jobs(stores, again.file_sha256) == 1


async def test_lifting_an_area_recomputes_who_was_inside_its_old_window(
    stores: Stores, tmp_path: Path
) -> None:
    now = clock.now()
    start = iso(now - days(6))
    await imports.import_risk_areas(stores, write(tmp_path, AREAS, f"360100,high,{start},"), by="test")
    account = await new_account(stores)
    async with stores.pool.acquire() as conn:
        await status.record_trip(conn, account, "360111", None, now - days(2))
    await run_due_jobs(stores)
    assert await colour(stores, account) == "yellow"
    # the area was lifted before the trip: a later line for the same area and start wins
    lifted = write(
        tmp_path,
        AREAS,
        f"360100,high,{start},{iso(now - days(1))}",
        f"360100,high,{start},{iso(now - days(4))}",
    )
    result = await imports.import_risk_areas(stores, lifted, by="test")
    assert (result.rows_stored, result.accounts_scheduled) == (1, 1)
    await run_due_jobs(stores)
    assert await colour(stores, account) == "green"


# --- people ----------------------------------------------------------------------------------------------


async def test_tests_are_matched_by_blind_index_and_unknown_people_skipped(
    stores: Stores, tmp_path: Path
) -> None:
    positive_number, negative_number, stranger_number = id_number(), id_number(), id_number()
    positive, negative = (
        await new_account(stores, positive_number),
        await new_account(stores, negative_number),
    )
    sampled = clock.now() - days(1)
    file = write(
        tmp_path,
        TESTS,
        f"{positive_number.lower()},positive,{iso(sampled)}",
        f"{negative_number},NEGATIVE,{iso(sampled)}",
        f"{stranger_number},positive,{iso(sampled)}",
    )
    result = await imports.import_tests(stores, file, by="test")
    assert (result.rows_read, result.rows_stored, result.rows_unknown) == (3, 2, 1)
    # a positive result may turn anyone red; a negative one only matters where a rule holds
    assert (result.accounts_scheduled, result.jobs) == (1, 1)
    rows = await stores.pool.fetch(
        "SELECT account_id, result, sampled_at FROM health_tests WHERE import_id = $1 ORDER BY result",
        result.import_id,
    )
    assert [(r["account_id"], r["result"], r["sampled_at"]) for r in rows] == [
        (negative, "negative", sampled),
        (positive, "positive", sampled),
    ]
    # the ID numbers are nowhere: not in the rows, the import record or the job payloads
    stored = await stores.pool.fetch(
        """SELECT row_to_json(t)::text AS text FROM health_tests t WHERE import_id = $1
           UNION ALL SELECT row_to_json(i)::text FROM health_imports i WHERE id = $1""",
        result.import_id,
    )
    payloads = await stores.pool.fetch("SELECT payload FROM outbox WHERE job_name = $1", RECOMPUTE_JOB)
    for number in (positive_number, negative_number, stranger_number):
        assert not any(number in row["text"] or number.lower() in row["text"] for row in stored)
        assert not any(number.encode() in bytes(row["payload"]) for row in payloads)
    await run_due_jobs(stores)
    assert (await colour(stores, positive), await colour(stores, negative)) == ("red", "green")


async def test_a_negative_test_import_clears_a_traveller(stores: Stores, tmp_path: Path) -> None:
    now = clock.now()
    await imports.import_risk_areas(
        stores, write(tmp_path, AREAS, f"340100,high,{iso(now - days(6))},"), by="t"
    )
    number, idle_number = id_number(), id_number()
    traveller, idle = await new_account(stores, number), await new_account(stores, idle_number)
    async with stores.pool.acquire() as conn:
        await status.record_trip(conn, traveller, "340104", None, now - days(3))
    await run_due_jobs(stores)
    assert (await colour(stores, traveller), await colour(stores, idle)) == ("yellow", "green")
    file = write(
        tmp_path,
        TESTS,
        f"{number},negative,{iso(now - days(1))}",
        f"{idle_number},negative,{iso(now - days(1))}",
    )
    result = await imports.import_tests(stores, file, by="test")
    # the traveller's trip rule may be cleared; the idle citizen's green cannot change
    assert (result.rows_stored, result.accounts_scheduled) == (2, 1)
    await run_due_jobs(stores)
    assert await colour(stores, traveller) == "green"


async def test_the_tests_command_reports_unknown_people(stores: Stores, tmp_path: Path) -> None:
    number = id_number()
    await new_account(stores, number)
    file = write(
        tmp_path,
        "sampled_at,id_number,result",
        f"2026-11-20 08:00,{number},negative",
        f"2026-11-20,{id_number()},negative",
    )
    result = await cli("health", "import", "tests", str(file))
    assert result.exit_code == 0, result.output
    assert re.search(r"rows read\W+2\b", result.output), result.output
    assert re.search(r"no such person\W+1\b", result.output), result.output
    assert number not in result.output


async def test_a_second_dose_clears_a_medium_risk_traveller(stores: Stores, tmp_path: Path) -> None:
    now = clock.now()
    await imports.import_risk_areas(
        stores, write(tmp_path, AREAS, f"350200,medium,{iso(now - days(5))},"), by="test"
    )
    number, other_number = id_number(), id_number()
    traveller, other = await new_account(stores, number), await new_account(stores, other_number)
    async with stores.pool.acquire() as conn:
        await status.record_vaccination(conn, traveller, 1, now - days(200))
        await status.record_trip(conn, traveller, "350203", None, now - days(2))
    await run_due_jobs(stores)
    assert await colour(stores, traveller) == "yellow"
    assert await colour(stores, other) == "green"
    file = write(
        tmp_path, DOSES, f"{number},2,{iso(now - days(30))}", f"{other_number},1,{iso(now - days(30))}"
    )
    result = await imports.import_vaccinations(stores, file, by="test")
    # only the account a rule holds for can change
    assert (result.rows_stored, result.rows_unknown, result.accounts_scheduled) == (2, 0, 1)
    await run_due_jobs(stores)
    assert await colour(stores, traveller) == "green"


# --- bad files -------------------------------------------------------------------------------------------


async def area_count(stores: Stores) -> int:
    return int(await stores.pool.fetchval("SELECT count(*) FROM health_risk_areas"))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ["310100,high,2026-11-01,", "310100,extreme,2026-11-01,"],
            "line 4: level: 'extreme' is not low, medium or high",
        ),
        (["31010,high,2026-11-01,"], "line 3: region_code: '31010' is not a 6-digit GB/T 2260 code"),
        (
            ["310100,high,2026-11-01,", "", "310100,high,2026-11-05,2026-11-02"],
            "line 5: valid_to: must be after valid_from",
        ),
        (["310100,high,2026-11-01"], "line 3: expected 4 fields, found 3"),
        (["310100,high,yesterday,"], "line 3: valid_from: 'yesterday' is not an ISO 8601 time"),
    ],
)
async def test_bad_risk_area_files_fail_with_the_line_and_store_nothing(
    stores: Stores, tmp_path: Path, lines: list[str], message: str
) -> None:
    before = await area_count(stores)
    # good rows first: the import is all or nothing
    file = write(tmp_path, AREAS, "310200,low,2026-11-01,", *lines)
    with pytest.raises(ImportFileError) as caught:
        await imports.import_risk_areas(stores, file, by="test")
    assert str(caught.value) == message
    assert await area_count(stores) == before


async def test_a_bad_header_and_bad_bytes_name_their_line(stores: Stores, tmp_path: Path) -> None:
    with pytest.raises(
        ImportFileError, match=r"^line 1: expected the header region_code,level,valid_from,valid_to"
    ):
        await imports.import_risk_areas(
            stores, write(tmp_path, "region,level,from,to", "310100,high,2026-11-01,"), by="t"
        )
    binary = tmp_path / "binary.csv"
    binary.write_bytes(AREAS.encode() + b"\n310100,high,2026-11-01,\n\xff\xfe,high,2026-11-01,\n")
    with pytest.raises(ImportFileError, match=r"^line 3: not UTF-8 text$"):
        await imports.import_risk_areas(stores, binary, by="t")


async def test_bad_rows_of_people_never_quote_the_id_number(stores: Stores, tmp_path: Path) -> None:
    good = id_number()
    bad_check = good[:17] + ("0" if good[17] != "0" else "1")
    cases = [
        ([f"{good},positive,2026-11-20", f"{bad_check},positive,2026-11-20"], "line 3: id_number:"),
        ([f"{good},maybe,2026-11-20"], "line 2: result: must be positive or negative"),
        ([f"positive,{good},2026-11-20"], "line 2: id_number:"),
        ([f"{good},positive,{iso(clock.now() + days(2))}"], "line 2: sampled_at: in the future"),
        ([f"{good},positive,20/11/2026"], "line 2: sampled_at: not an ISO 8601 time"),
    ]
    for lines, start in cases:
        with pytest.raises(ImportFileError) as caught:
            await imports.import_tests(stores, write(tmp_path, TESTS, *lines), by="test")
        assert str(caught.value).startswith(start)
        assert good not in str(caught.value) and bad_check not in str(caught.value)
    with pytest.raises(ImportFileError, match=r"^line 2: dose: must be a whole number from 1 to 10$"):
        await imports.import_vaccinations(stores, write(tmp_path, DOSES, f"{good},11,2026-11-20"), by="test")


async def test_the_command_prints_the_line_of_a_bad_file(tmp_path: Path) -> None:
    file = write(tmp_path, AREAS, "310100,high,2026-11-01,", "310100,extreme,2026-11-01,")
    result = await cli("health", "import", "risk-areas", str(file))
    assert result.exit_code == 1
    assert "line 3: level: 'extreme' is not low, medium or high" in result.output
    missing = await cli("health", "import", "tests", str(tmp_path / "nope.csv"))
    assert missing.exit_code == 1 and "no such file" in missing.output
