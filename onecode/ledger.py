"""The settlement ledger: every ride fare and payment as double-entry rows in PostgreSQL.

A posting is one business event (a fare the transit operator charged, a payment the acquirer approved),
idempotent by (kind, reference) where the reference is the provider's transaction reference: posting it again
changes nothing and answers False. Its entries balance (debits == credits): post() refuses anything else and
a deferred constraint trigger refuses it again at commit, whatever wrote it.

Ledger accounts are strings:

    citizen:<account uuid>:transit    what the citizen spent on rides (debited by a fare)
    citizen:<account uuid>:payment    what the citizen paid with the payment code
    provider:transit                  the transit operator (credited with the fares it charged)
    provider:acquirer                 the payment acquirer (collects from citizens, owes merchants)
    merchant:<terminal id>            the shop behind a POS terminal (credited with its sales)

A posting that touches a provider account belongs to that provider's statement: reconciliation
(onecode.reconcile) compares it, by reference, with the statement line. Its amount is what the citizen was
charged (the net debit of the citizen accounts; a refund is negative), or the provider account's net credit
when no citizen account takes part. fare_entries() and payment_entries() build the usual shapes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Final
from uuid import UUID

import asyncpg
import msgspec

from core import clock, ids
from core.errors import InvalidInput
from onecode import repository

FARE: Final = "transit.fare"
PAYMENT: Final = "payment"
REFUND: Final = "payment.refund"

# The provider account behind each provider name (as reconciliation and the CLI name them).
PROVIDER_ACCOUNTS: Final = {"transit": "provider:transit", "payment": "provider:acquirer"}
_PROVIDER_OF_ACCOUNT: Final = {account: name for name, account in PROVIDER_ACCOUNTS.items()}

MAX_ENTRIES: Final = 32
MAX_FEN: Final = 10**15  # far above any real amount; keeps sums inside bigint
MAX_PAGE: Final = 100
_KIND = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
_ACCOUNT = re.compile(r"^[a-z]+:[A-Za-z0-9_.:-]{1,120}$")
_REFERENCE_MAX: Final = 200


class Entry(msgspec.Struct, frozen=True):
    """One side of a posting: `account` is debited or credited (exactly one of the two is positive)."""

    account: str
    debit_fen: int = 0
    credit_fen: int = 0


class UnbalancedPosting(InvalidInput):
    code = "unbalanced_posting"
    title = "Unbalanced posting"


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    debit_fen: int
    credit_fen: int
    entries: int

    @property
    def net_debit_fen(self) -> int:
        return self.debit_fen - self.credit_fen


class HistoryItem(msgspec.Struct, frozen=True, kw_only=True):
    """A posting as one account sees it: its net debit (what the citizen paid; a refund is negative)."""

    posting_id: UUID
    kind: str
    reference: str
    amount_fen: int
    occurred_at: datetime


class LedgerLine(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    reference: str
    occurred_at: datetime
    account: str
    debit_fen: int
    credit_fen: int


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    postings: int
    debit_fen: int
    credit_fen: int

    @property
    def balanced(self) -> bool:
        return self.debit_fen == self.credit_fen


def citizen_account(account_id: UUID, scene: str) -> str:
    """The citizen's ledger account for a scene ("transit" or "payment")."""
    return f"citizen:{account_id}:{scene}"


def merchant_account(terminal_id: str) -> str:
    return f"merchant:{terminal_id}"


def fare_entries(account_id: UUID, fare_fen: int) -> list[Entry]:
    """A ride fare the transit operator charged the citizen."""
    return [
        Entry(citizen_account(account_id, "transit"), debit_fen=fare_fen),
        Entry(PROVIDER_ACCOUNTS["transit"], credit_fen=fare_fen),
    ]


def payment_entries(account_id: UUID, terminal_id: str, amount_fen: int) -> list[Entry]:
    """A payment the acquirer approved: it collects from the citizen and owes the merchant."""
    acquirer = PROVIDER_ACCOUNTS["payment"]
    return [
        Entry(citizen_account(account_id, "payment"), debit_fen=amount_fen),
        Entry(acquirer, credit_fen=amount_fen),
        Entry(acquirer, debit_fen=amount_fen),
        Entry(merchant_account(terminal_id), credit_fen=amount_fen),
    ]


def _checked(kind: str, reference: str, entries: Sequence[Entry]) -> list[tuple[str, int, int]]:
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise InvalidInput("kind: lower-case letters, digits, '_', '.', '-' (at most 32)", field="kind")
    if (
        not isinstance(reference, str)
        or not reference.strip()
        or len(reference) > _REFERENCE_MAX
        or not reference.isprintable()
    ):
        raise InvalidInput(f"reference: 1 to {_REFERENCE_MAX} printable characters", field="reference")
    if not 2 <= len(entries) <= MAX_ENTRIES:
        raise UnbalancedPosting(f"entries: 2 to {MAX_ENTRIES} per posting", field="entries")
    rows: list[tuple[str, int, int]] = []
    for entry in entries:
        if not _ACCOUNT.match(entry.account):
            raise InvalidInput(f"entries: {entry.account!r} is not a ledger account", field="entries")
        for amount in (entry.debit_fen, entry.credit_fen):
            if type(amount) is not int or not 0 <= amount <= MAX_FEN:
                raise InvalidInput("entries: amounts are whole fen, 0 or more", field="entries")
        if (entry.debit_fen > 0) == (entry.credit_fen > 0):
            raise InvalidInput(
                "entries: each entry is a debit or a credit, not both or neither", field="entries"
            )
        rows.append((entry.account, entry.debit_fen, entry.credit_fen))
    debits = sum(row[1] for row in rows)
    credits = sum(row[2] for row in rows)
    if debits != credits:
        raise UnbalancedPosting(f"entries: debits {debits} fen <> credits {credits} fen", field="entries")
    return rows


def _provider_and_amount(rows: Sequence[tuple[str, int, int]]) -> tuple[str | None, int | None]:
    providers = {_PROVIDER_OF_ACCOUNT[row[0]] for row in rows if row[0] in _PROVIDER_OF_ACCOUNT}
    if not providers:
        return None, None
    if len(providers) > 1:
        raise InvalidInput("entries: one provider per posting", field="entries")
    provider = providers.pop()
    citizen = [row for row in rows if row[0].startswith("citizen:")]
    if citizen:
        return provider, sum(row[1] - row[2] for row in citizen)
    account = PROVIDER_ACCOUNTS[provider]
    return provider, sum(row[2] - row[1] for row in rows if row[0] == account)


async def post(
    conn: asyncpg.Connection,
    *,
    reference: str,
    kind: str,
    entries: Sequence[Entry],
    occurred_at: datetime | None = None,
) -> bool:
    """Record a balanced posting in the caller's transaction (a savepoint of it; its own transaction when
    there is none). False when (kind, reference) was already posted: nothing changes. `occurred_at` is when
    the provider says it happened (default now): reconciliation puts the posting on that day.
    Raises UnbalancedPosting (and InvalidInput for malformed entries) before touching the database."""
    rows = _checked(kind, reference, entries)
    provider, amount = _provider_and_amount(rows)
    when = occurred_at or clock.now()
    if when.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    posting_id = ids.new_id()
    async with conn.transaction():
        inserted = await repository.insert_posting(
            conn,
            posting_id=posting_id,
            kind=kind,
            reference=reference,
            provider=provider,
            amount_fen=amount,
            occurred_at=when,
        )
        if not inserted:
            return False
        await repository.insert_entries(conn, posting_id, rows)
    return True


async def balances(conn: asyncpg.Connection, account_prefix: str | None = None) -> list[Balance]:
    """Debits and credits per ledger account (those starting with `account_prefix`, or all)."""
    return [
        Balance(
            account=row["account"],
            debit_fen=row["debit_fen"],
            credit_fen=row["credit_fen"],
            entries=row["entries"],
        )
        for row in await repository.balances(conn, account_prefix)
    ]


async def totals(conn: asyncpg.Connection) -> Totals:
    """Postings and the sums of every debit and credit: balanced when the two sums are equal."""
    row = await repository.totals(conn)
    return Totals(postings=row["postings"], debit_fen=row["debit_fen"], credit_fen=row["credit_fen"])


async def history(
    conn: asyncpg.Connection, account: str, *, limit: int = 20, before: datetime | None = None
) -> list[HistoryItem]:
    """Postings touching `account`, newest first (`before`: older than this occurred_at)."""
    rows = await repository.account_history(
        conn, account, limit=min(max(limit, 1), MAX_PAGE + 1), before=before
    )
    return [
        HistoryItem(
            posting_id=row["id"],
            kind=row["kind"],
            reference=row["reference"],
            amount_fen=row["net_debit_fen"],
            occurred_at=row["occurred_at"],
        )
        for row in rows
    ]


async def posting(conn: asyncpg.Connection, kind: str, reference: str) -> list[LedgerLine]:
    """The entries of one posting (empty when it is not posted)."""
    return [
        LedgerLine(
            kind=row["kind"],
            reference=row["reference"],
            occurred_at=row["occurred_at"],
            account=row["account"],
            debit_fen=row["debit_fen"],
            credit_fen=row["credit_fen"],
        )
        for row in await repository.posting_entries(conn, kind, reference)
    ]


async def recent(conn: asyncpg.Connection, account: str | None = None, limit: int = 50) -> list[LedgerLine]:
    """The newest entries (of one account, or all)."""
    return [
        LedgerLine(
            kind=row["kind"],
            reference=row["reference"],
            occurred_at=row["occurred_at"],
            account=row["account"],
            debit_fen=row["debit_fen"],
            credit_fen=row["credit_fen"],
        )
        for row in await repository.recent_entries(conn, account, limit)
    ]


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[HistoryItem]
    # Pass as `before` for the next (older) page; None on the last page.
    next_before: datetime | None = None


async def citizen_history(
    conn: asyncpg.Connection, account_id: UUID, scene: str, *, limit: int = 20, before: datetime | None = None
) -> HistoryPage:
    """The citizen's settled fares (scene "transit") or payments ("payment"), newest first."""
    page = max(1, min(limit, MAX_PAGE))
    items = await history(conn, citizen_account(account_id, scene), limit=page + 1, before=before)
    more = len(items) > page
    items = items[:page]
    return HistoryPage(items=items, next_before=items[-1].occurred_at if more else None)
