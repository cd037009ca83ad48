"""Daily reconciliation of the ledger against each money-moving provider's statement.

For one provider and one settlement day (an Asia/Shanghai calendar day, providers.statement_window) the
statement lines and the ledger's postings of that provider are matched by the provider's reference:

    missing_in_ledger     a statement line no posting stands behind (a charge we never recorded)
    missing_in_statement  a posting of that day the provider does not list
    amount_differs        both sides have it, with other amounts

A line whose posting we put on another day (a charge just around midnight) is matched with it all the same.
Every run is stored with what it found (`tongban onecode reconcile DATE` shows it). A periodic job runs each
hour and reconciles every day of the last onecode_reconcile_days (yesterday back) that has no finished run,
so a provider that was away is caught up the next hour.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Final, Literal, Protocol
from uuid import UUID

import asyncpg
import msgspec
import structlog

from core import clock, ids
from core.db import connection, transaction
from core.errors import InvalidInput, ProviderUnavailable
from core.jobs import periodic
from core.stores import Stores
from onecode import providers, repository
from onecode.providers import ProviderRejected, StatementLine

log = structlog.get_logger(__name__)

Provider = Literal["transit", "payment"]
PROVIDERS: Final[tuple[Provider, ...]] = ("transit", "payment")
Problem = Literal["missing_in_ledger", "missing_in_statement", "amount_differs"]
_ERROR_MAX: Final = 300


class StatementSource(Protocol):
    async def statement(self, day: date) -> list[StatementLine]: ...


class Mismatch(msgspec.Struct, frozen=True, kw_only=True):
    reference: str
    problem: Problem
    ledger_fen: int | None
    statement_fen: int | None


class Reconciliation(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    provider: str
    day: date
    status: str  # matched | mismatched | failed
    statement_lines: int
    ledger_postings: int
    mismatches: list[Mismatch]
    error: str | None
    finished_at: datetime


def check_provider(provider: str) -> Provider:
    for known in PROVIDERS:
        if provider == known:
            return known
    raise InvalidInput("provider: transit or payment", field="provider")


def _source(stores: Stores, provider: Provider) -> StatementSource:
    if provider == "transit":
        return providers.transit_operator(stores.settings)
    return providers.payment_acquirer(stores.settings)


def _sums(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    sums: dict[str, int] = {}
    for reference, amount in pairs:
        sums[reference] = sums.get(reference, 0) + amount
    return sums


def compare(
    statement: dict[str, int], ledger_of_day: dict[str, int], ledger_elsewhere: dict[str, int]
) -> list[Mismatch]:
    """Mismatches between the statement's amounts by reference and the ledger's (its postings of the day,
    and those of other days that the statement names), by reference."""
    found: list[Mismatch] = []
    for reference, listed in statement.items():
        booked = ledger_of_day.get(reference, ledger_elsewhere.get(reference))
        if booked is None:
            found.append(
                Mismatch(
                    reference=reference, problem="missing_in_ledger", ledger_fen=None, statement_fen=listed
                )
            )
        elif booked != listed:
            found.append(
                Mismatch(
                    reference=reference, problem="amount_differs", ledger_fen=booked, statement_fen=listed
                )
            )
    for reference, booked in ledger_of_day.items():
        if reference not in statement:
            found.append(
                Mismatch(
                    reference=reference, problem="missing_in_statement", ledger_fen=booked, statement_fen=None
                )
            )
    return sorted(found, key=lambda mismatch: (mismatch.reference, mismatch.problem))


def _stored(record: asyncpg.Record, mismatches: Sequence[Mismatch]) -> Reconciliation:
    return Reconciliation(
        id=record["id"],
        provider=record["provider"],
        day=record["day"],
        status=record["status"],
        statement_lines=record["statement_lines"],
        ledger_postings=record["ledger_postings"],
        mismatches=list(mismatches),
        error=record["error"],
        finished_at=record["finished_at"],
    )


async def _record(
    stores: Stores,
    *,
    provider: Provider,
    day: date,
    started_at: datetime,
    lines: int,
    postings: int,
    mismatches: Sequence[Mismatch],
    error: str | None,
) -> Reconciliation:
    status = "failed" if error is not None else ("mismatched" if mismatches else "matched")
    async with transaction(stores.pool, stores.settings) as conn:
        row = await repository.insert_reconciliation(
            conn,
            run_id=ids.new_id(),
            provider=provider,
            day=day,
            status=status,
            statement_lines=lines,
            ledger_postings=postings,
            mismatches=[(m.reference, m.problem, m.ledger_fen, m.statement_fen) for m in mismatches],
            error=error,
            started_at=started_at,
        )
    return _stored(row, mismatches)


async def reconcile(
    stores: Stores, day: date, provider: str, *, source: StatementSource | None = None
) -> Reconciliation:
    """Reconcile one provider's statement of `day` with the ledger and store the run. When the provider
    cannot be reached (or refuses) a failed run is stored and the error raised."""
    name = check_provider(provider)
    started_at = clock.now()
    try:
        lines = await (source or _source(stores, name)).statement(day)
    except (ProviderUnavailable, ProviderRejected) as exc:
        await _record(
            stores,
            provider=name,
            day=day,
            started_at=started_at,
            lines=0,
            postings=0,
            mismatches=[],
            error=exc.detail[:_ERROR_MAX],
        )
        log.warning("onecode.reconcile_failed", provider=name, day=day.isoformat(), error=type(exc).__name__)
        raise
    statement = _sums((line.provider_ref, line.amount_fen) for line in lines)
    start, end = providers.statement_window(day)
    async with connection(stores.pool, stores.settings) as conn:
        of_day = await repository.provider_postings_between(conn, name, start, end)
        ledger_of_day = _sums((row["reference"], row["amount_fen"]) for row in of_day)
        unmatched = [reference for reference in statement if reference not in ledger_of_day]
        elsewhere = (
            await repository.provider_postings_by_reference(conn, name, unmatched) if unmatched else []
        )
    ledger_elsewhere = _sums((row["reference"], row["amount_fen"]) for row in elsewhere)
    mismatches = compare(statement, ledger_of_day, ledger_elsewhere)
    run = await _record(
        stores,
        provider=name,
        day=day,
        started_at=started_at,
        lines=len(lines),
        postings=len(of_day),
        mismatches=mismatches,
        error=None,
    )
    log.info(
        "onecode.reconciled",
        provider=name,
        day=day.isoformat(),
        status=run.status,
        mismatches=len(mismatches),
    )
    return run


async def latest(stores: Stores, day: date, provider: str) -> Reconciliation | None:
    """The newest stored run for the provider and day."""
    name = check_provider(provider)
    async with connection(stores.pool, stores.settings) as conn:
        row = await repository.latest_reconciliation(conn, name, day)
        if row is None:
            return None
        found = await repository.reconciliation_mismatches(conn, row["id"])
    return _stored(
        row,
        [
            Mismatch(
                reference=m["reference"],
                problem=m["problem"],
                ledger_fen=m["ledger_fen"],
                statement_fen=m["statement_fen"],
            )
            for m in found
        ],
    )


def settlement_today() -> date:
    return clock.now().astimezone(clock.SHANGHAI).date()


async def catch_up(stores: Stores, *, today: date | None = None) -> list[Reconciliation]:
    """Reconcile every provider's days of the last onecode_reconcile_days (yesterday back) that have no
    finished run yet; a provider that is away is left for the next time."""
    last = (today or settlement_today()) - timedelta(days=1)
    days = [last - timedelta(days=back) for back in range(stores.settings.onecode_reconcile_days)]
    runs: list[Reconciliation] = []
    for provider in PROVIDERS:
        async with connection(stores.pool, stores.settings) as conn:
            done = await repository.reconciled_days(conn, provider, days)
        for day in sorted(set(days) - done):
            try:
                runs.append(await reconcile(stores, day, provider))
            except (ProviderUnavailable, ProviderRejected):
                break  # stored as failed; the next hour tries again
    return runs


@periodic("onecode.reconcile_daily", every_seconds=3600)
async def reconcile_daily(stores: Stores) -> None:
    await catch_up(stores)
