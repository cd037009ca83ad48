"""The one-code settlement ledger against the real PostgreSQL: balanced double-entry postings, idempotent by
(kind, reference), unbalanced or malformed ones refused (by post() and by the database itself); and the daily
reconciliation against the sandbox transit operator and payment acquirer running as a real process: zero
mismatches for a day whose charges are all posted, then each injected mismatch found (also by `tongban
onecode reconcile`), a provider that is away stored as a failed run and caught up the next time."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, time, timedelta

import asyncpg
import httpx
import msgspec
import pytest
from click.testing import Result
from stdnum import luhn
from typer.testing import CliRunner

from core.clock import SHANGHAI
from core.db import connection, transaction
from core.errors import InvalidInput, ProviderUnavailable
from core.settings import Settings
from core.stores import Stores
from onecode import ledger, providers, reconcile, repository
from onecode.ledger import Entry, UnbalancedPosting
from scripts.cli import app as cli_app
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.server import free_port


def ref(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def card_number() -> str:
    body = "6222" + "".join(secrets.choice("0123456789") for _ in range(11))
    return body + luhn.calc_check_digit(body)


_QUIET_DAYS = itertools.count(date(1990, 1, 1).toordinal() + secrets.randbelow(3000), 10)


def quiet_day() -> date:
    """A settlement day of the 1990s that no other test posts on (each test its own, ten days apart):
    reconciliations of it and of the days before it see only what the test put there."""
    return date.fromordinal(next(_QUIET_DAYS))


def noon(day: date) -> datetime:
    return datetime.combine(day, time(12), SHANGHAI).astimezone(UTC)


# --- postings ------------------------------------------------------------------------------------------------


async def test_a_balanced_posting_is_recorded_with_its_entries(stores: Stores) -> None:
    citizen = uuid.uuid4()
    reference = ref("trn")
    async with transaction(stores.pool, stores.settings) as conn:
        before = await ledger.totals(conn)
        assert await ledger.post(
            conn, reference=reference, kind=ledger.FARE, entries=ledger.fare_entries(citizen, 200)
        )
    async with connection(stores.pool, stores.settings) as conn:
        lines = await ledger.posting(conn, ledger.FARE, reference)
        after = await ledger.totals(conn)
        mine = await ledger.balances(conn, f"citizen:{citizen}:")
        page = await ledger.citizen_history(conn, citizen, "transit")
    assert [(line.account, line.debit_fen, line.credit_fen) for line in lines] == [
        (f"citizen:{citizen}:transit", 200, 0),
        ("provider:transit", 0, 200),
    ]
    assert after.balanced and after.postings == before.postings + 1
    assert after.debit_fen - before.debit_fen == 200 == after.credit_fen - before.credit_fen
    assert [(b.account, b.debit_fen, b.credit_fen, b.entries) for b in mine] == [
        (f"citizen:{citizen}:transit", 200, 0, 1)
    ]
    assert [(item.reference, item.amount_fen, item.kind) for item in page.items] == [
        (reference, 200, ledger.FARE)
    ]


async def test_a_posting_is_idempotent_by_kind_and_reference(stores: Stores) -> None:
    citizen = uuid.uuid4()
    reference = ref("pay")
    entries = ledger.payment_entries(citizen, "pos-1", 1234)
    async with transaction(stores.pool, stores.settings) as conn:
        assert await ledger.post(conn, reference=reference, kind=ledger.PAYMENT, entries=entries)
    async with transaction(stores.pool, stores.settings) as conn:
        # Again, and again with other amounts: nothing changes.
        assert not await ledger.post(conn, reference=reference, kind=ledger.PAYMENT, entries=entries)
        other = ledger.payment_entries(citizen, "pos-1", 99)
        assert not await ledger.post(conn, reference=reference, kind=ledger.PAYMENT, entries=other)
    # Concurrent duplicates: exactly one wins.
    racing = ref("pay")

    async def attempt() -> bool:
        async with transaction(stores.pool, stores.settings) as conn:
            return await ledger.post(conn, reference=racing, kind=ledger.PAYMENT, entries=entries)

    assert sorted(await asyncio.gather(*(attempt() for _ in range(5)))) == [False] * 4 + [True]
    async with connection(stores.pool, stores.settings) as conn:
        lines = await ledger.posting(conn, ledger.PAYMENT, reference)
        history = await ledger.citizen_history(conn, citizen, "payment")
        # The same reference under another kind (a refund of it) is another posting.
        refund = [
            Entry(f"citizen:{citizen}:payment", credit_fen=1234),
            Entry("provider:acquirer", debit_fen=1234),
        ]
        assert await ledger.post(conn, reference=reference, kind=ledger.REFUND, entries=refund)
        payments = await ledger.citizen_history(conn, citizen, "payment")
    assert (
        len(lines) == 4
        and sum(line.debit_fen for line in lines) == sum(line.credit_fen for line in lines) == 2468
    )
    assert [item.amount_fen for item in history.items] == [1234, 1234]
    assert sorted(item.amount_fen for item in payments.items) == [-1234, 1234, 1234]


async def test_an_unbalanced_posting_is_refused_and_leaves_nothing(stores: Stores) -> None:
    reference = ref("bad")
    unbalanced = [Entry("citizen:x:transit", debit_fen=200), Entry("provider:transit", credit_fen=199)]
    async with transaction(stores.pool, stores.settings) as conn:
        with pytest.raises(UnbalancedPosting) as refused:
            await ledger.post(conn, reference=reference, kind=ledger.FARE, entries=unbalanced)
    assert refused.value.field == "entries" and refused.value.status == 422
    # The database refuses it too, whatever writes it (checked at commit).
    with pytest.raises(asyncpg.CheckViolationError):
        async with transaction(stores.pool, stores.settings) as conn:
            posting_id = uuid.uuid4()
            await repository.insert_posting(
                conn,
                posting_id=posting_id,
                kind=ledger.FARE,
                reference=reference,
                provider=None,
                amount_fen=None,
                occurred_at=datetime.now(UTC),
            )
            await repository.insert_entries(conn, posting_id, [("a:b", 200, 0), ("c:d", 0, 199)])
    async with connection(stores.pool, stores.settings) as conn:
        assert await ledger.posting(conn, ledger.FARE, reference) == []
        assert (await ledger.totals(conn)).balanced


@pytest.mark.parametrize(
    ("kind", "reference", "entries", "field"),
    [
        ("Fare!", "r", [Entry("a:b", 1, 0), Entry("c:d", 0, 1)], "kind"),
        ("fare", "", [Entry("a:b", 1, 0), Entry("c:d", 0, 1)], "reference"),
        ("fare", "x" * 201, [Entry("a:b", 1, 0), Entry("c:d", 0, 1)], "reference"),
        ("fare", "r", [Entry("a:b", 1, 0)], "entries"),  # one entry cannot balance
        ("fare", "r", [Entry("a:b", -1, 0), Entry("c:d", 0, -1)], "entries"),  # negative
        ("fare", "r", [Entry("a:b", 1, 1), Entry("c:d", 0, 0)], "entries"),  # both sides / neither
        ("fare", "r", [Entry("no account", 1, 0), Entry("c:d", 0, 1)], "entries"),
        (
            "fare",
            "r",
            [Entry("provider:transit", 1, 0), Entry("provider:acquirer", 0, 1)],
            "entries",
        ),  # two providers in one posting
    ],
)
async def test_malformed_postings_are_refused(
    stores: Stores, kind: str, reference: str, entries: list[Entry], field: str
) -> None:
    async with connection(stores.pool, stores.settings) as conn:
        with pytest.raises(InvalidInput) as refused:
            await ledger.post(conn, reference=reference, kind=kind, entries=entries)
    assert refused.value.field == field


# --- reconciliation ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("ledger"), only=["transit", "acquirer"]) as running:
        yield running


@pytest.fixture(scope="module")
def provider_settings(settings: Settings, sandbox: Sandbox) -> Settings:
    return msgspec.structs.replace(
        settings, transit_operator_url=sandbox.urls["transit"], payment_acquirer_url=sandbox.urls["acquirer"]
    )


@pytest.fixture
async def wired(stores: Stores, provider_settings: Settings) -> AsyncIterator[Stores]:
    """The test's stores, with settings pointing at the sandbox providers (their shared clients closed
    after the test)."""
    yield Stores(settings=provider_settings, pool=stores.pool, redis=stores.redis)
    await providers.close_providers()


def move_line(sandbox: Sandbox, provider: str, provider_ref: str, **fields: object) -> None:
    answer = httpx.post(
        sandbox.urls[provider] + "/sandbox/statement", json={"provider_ref": provider_ref, **fields}
    )
    assert answer.status_code == 200, answer.text


async def charged_day(wired: Stores, sandbox: Sandbox, day: date) -> tuple[list[str], str]:
    """Two fares and a payment charged for real, their statement lines moved to `day` and posted on it.
    Returns the fares' and the payment's provider references."""
    settings = wired.settings
    citizen = uuid.uuid4()
    transit = providers.transit_operator(settings)
    account = await transit.link(ref("acct"))
    fares = [await transit.charge_fare(account, fare, ref("ride")) for fare in (200, 350)]
    acquirer = providers.payment_acquirer(settings)
    token = await acquirer.tokenise(ref("acct"), card_number())
    paid = await acquirer.authorise(token, 1999, ref("idem"), "pos-7")
    assert paid.approved
    for fare_ref in fares:
        move_line(sandbox, "transit", fare_ref, occurred_at=noon(day).isoformat())
    move_line(sandbox, "acquirer", paid.provider_ref, occurred_at=noon(day).isoformat())
    async with transaction(wired.pool, settings) as conn:
        for fare_ref, fare in zip(fares, (200, 350), strict=True):
            entries = ledger.fare_entries(citizen, fare)
            assert await ledger.post(
                conn, reference=fare_ref, kind=ledger.FARE, entries=entries, occurred_at=noon(day)
            )
        entries = ledger.payment_entries(citizen, "pos-7", 1999)
        assert await ledger.post(
            conn, reference=paid.provider_ref, kind=ledger.PAYMENT, entries=entries, occurred_at=noon(day)
        )
    return fares, paid.provider_ref


async def test_reconciliation_finds_nothing_then_each_injected_mismatch(
    wired: Stores, sandbox: Sandbox
) -> None:
    day = quiet_day()
    fares, payment = await charged_day(wired, sandbox, day)

    transit = await reconcile.reconcile(wired, day, "transit")
    paid = await reconcile.reconcile(wired, day, "payment")
    assert (transit.status, transit.mismatches, transit.statement_lines, transit.ledger_postings) == (
        "matched",
        [],
        2,
        2,
    )
    assert (paid.status, paid.mismatches, paid.statement_lines, paid.ledger_postings) == ("matched", [], 1, 1)

    # One injected mismatch: the operator's statement says another amount for a fare.
    move_line(sandbox, "transit", fares[0], amount_fen=250)
    transit = await reconcile.reconcile(wired, day, "transit")
    assert transit.status == "mismatched"
    assert transit.mismatches == [
        reconcile.Mismatch(reference=fares[0], problem="amount_differs", ledger_fen=200, statement_fen=250)
    ]
    stored = await reconcile.latest(wired, day, "transit")
    assert stored is not None and stored.id == transit.id and stored.mismatches == transit.mismatches

    # A line no charge of ours stands behind, and a charge the acquirer lost.
    ghost = ref("ghost")
    move_line(sandbox, "acquirer", ghost, amount_fen=500, occurred_at=noon(day).isoformat())
    assert httpx.delete(f"{sandbox.urls['acquirer']}/sandbox/statement/{payment}").status_code == 200
    paid = await reconcile.reconcile(wired, day, "payment")
    assert {(m.reference, m.problem, m.ledger_fen, m.statement_fen) for m in paid.mismatches} == {
        (ghost, "missing_in_ledger", None, 500),
        (payment, "missing_in_statement", 1999, None),
    }


async def test_a_posting_on_the_neighbouring_day_still_matches(wired: Stores, sandbox: Sandbox) -> None:
    day = quiet_day()
    fares, _ = await charged_day(wired, sandbox, day)
    # The operator puts one fare on the next day (a ride at midnight): that day's statement finds our posting.
    move_line(sandbox, "transit", fares[1], occurred_at=noon(day + timedelta(days=1)).isoformat())
    next_day = await reconcile.reconcile(wired, day + timedelta(days=1), "transit")
    assert next_day.mismatches == [] and next_day.statement_lines == 1
    this_day = await reconcile.reconcile(wired, day, "transit")
    assert [(m.reference, m.problem) for m in this_day.mismatches] == [(fares[1], "missing_in_statement")]


async def cli(env: dict[str, str], *args: str) -> Result:
    # The command runs its own event loop (asyncio.run), so it goes to a thread off this test's loop.
    return await asyncio.to_thread(CliRunner(env={"COLUMNS": "200", **env}).invoke, cli_app, list(args))


async def test_the_reconcile_command_lists_mismatches_and_exits_1(wired: Stores, sandbox: Sandbox) -> None:
    day = quiet_day()
    fares, _ = await charged_day(wired, sandbox, day)
    env = {
        "TONGBAN_TRANSIT_OPERATOR_URL": sandbox.urls["transit"],
        "TONGBAN_PAYMENT_ACQUIRER_URL": sandbox.urls["acquirer"],
    }
    clean = await cli(env, "onecode", "reconcile", day.isoformat())
    assert clean.exit_code == 0, clean.output
    assert f"transit {day.isoformat()}: 0 mismatch(es)" in clean.output
    assert f"payment {day.isoformat()}: 0 mismatch(es)" in clean.output

    move_line(sandbox, "transit", fares[1], amount_fen=1)
    found = await cli(env, "onecode", "reconcile", day.isoformat(), "--provider", "transit")
    assert found.exit_code == 1, found.output
    line = next(line for line in found.output.splitlines() if fares[1] in line)
    assert "amount_differs" in line and "3.50" in line and "0.01" in line
    assert "payment" not in found.output

    down = await cli(
        {"TONGBAN_TRANSIT_OPERATOR_URL": f"http://127.0.0.1:{free_port()}"},
        "onecode",
        "reconcile",
        day.isoformat(),
        "--provider",
        "transit",
    )
    assert down.exit_code == 2 and "transit operator is unavailable" in down.output

    bad = await cli(env, "onecode", "reconcile", "31.12.2024")
    assert bad.exit_code == 1 and "DATE" in bad.output
    ledger_table = await cli(env, "onecode", "ledger", "--account", "provider:transit", "--limit", "5")
    assert ledger_table.exit_code == 0, ledger_table.output
    assert "balanced" in ledger_table.output and "provider:transit" in ledger_table.output


async def test_the_daily_job_catches_up_after_a_provider_outage(
    wired: Stores, sandbox: Sandbox, provider_settings: Settings
) -> None:
    day = quiet_day()
    await charged_day(wired, sandbox, day)
    away = msgspec.structs.replace(provider_settings, transit_operator_url=f"http://127.0.0.1:{free_port()}")
    outage = Stores(settings=away, pool=wired.pool, redis=wired.redis)
    with pytest.raises(ProviderUnavailable):
        await reconcile.reconcile(outage, day, "transit")
    failed = await reconcile.latest(wired, day, "transit")
    assert failed is not None and failed.status == "failed" and failed.error

    after = day + timedelta(days=1)
    runs = await reconcile.catch_up(outage, today=after)
    # The acquirer's days are done; the transit operator is still away and stays to do.
    days = wired.settings.onecode_reconcile_days
    assert sorted((run.provider, run.status) for run in runs) == [("payment", "matched")] * days
    runs = await reconcile.catch_up(wired, today=after)
    assert [(run.provider, run.status) for run in runs] == [("transit", "matched")] * days
    assert await reconcile.catch_up(wired, today=after) == []
    latest = await reconcile.latest(wired, day, "transit")
    assert latest is not None and (latest.status, latest.ledger_postings) == ("matched", 2)
