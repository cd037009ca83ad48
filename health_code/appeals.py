"""Appeals (申诉) against a health status: a citizen (L2) files one, health-authority staff approve or reject.

One appeal per account may be pending at a time. A decision is final; it is written with the status
engine's outcome (status.apply_appeal_outcome: an approval clears what the rules held against the account
up to now, and schedules the recompute that writes the history and its own inbox message) and a message
telling the citizen the decision, all in one transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import asyncpg
import msgspec

from core import db, ids
from core.errors import Conflict, InvalidInput, NotFound
from core.stores import Stores
from health_code import repository, status
from miniapps import inbox

MAX_REASON = 1000
MAX_NOTE = 1000
MAX_PAGE = 200
INBOX_TITLE = "健康码申诉结果"

AppealStatus = Literal["pending", "approved", "rejected"]


class AppealInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REASON)]


class Decision(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    approve: bool
    # Why: shown to the citizen. Required to reject.
    note: Annotated[str, msgspec.Meta(max_length=MAX_NOTE)] | None = None


class Appeal(msgspec.Struct, kw_only=True):
    id: UUID
    account_id: UUID
    reason: str
    status: AppealStatus
    decided_by: UUID | None = None  # the staff account (None: decided from the ops CLI)
    decision_note: str | None = None
    created_at: datetime
    decided_at: datetime | None = None


def _appeal(row: asyncpg.Record) -> Appeal:
    return Appeal(**dict(row))


def _text(value: str | None, what: str, most: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > most:
        raise InvalidInput(f"{what}: at most {most} characters", field=what)
    return value


async def file_appeal(stores: Stores, account_id: UUID, reason: str) -> Appeal:
    """A new pending appeal; Conflict `appeal_pending` while the account has one."""
    text = _text(reason, "reason", MAX_REASON)
    if text is None:
        raise InvalidInput("reason: 1 to 1000 characters", field="reason")
    async with db.transaction(stores.pool, stores.settings) as conn:
        # Serialises two filings of one account (the table may lack a unique index on pending ones).
        await repository.lock_appeals_of(conn, account_id)
        if await repository.pending_appeal_of(conn, account_id) is not None:
            raise Conflict("an appeal of this account is already pending", code="appeal_pending")
        try:
            row = await repository.insert_appeal(conn, ids.new_id(), account_id, text)
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("no such account", field="account_id") from None
    return _appeal(row)


async def appeals_of(stores: Stores, account_id: UUID, *, limit: int = 50) -> list[Appeal]:
    """The account's appeals, newest first."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: 1 to {MAX_PAGE}", field="limit")
    async with db.connection(stores.pool, stores.settings) as conn:
        return [_appeal(row) for row in await repository.appeals_of_account(conn, account_id, limit=limit)]


async def list_appeals(
    stores: Stores, status_: AppealStatus | None = "pending", *, limit: int = 100
) -> list[Appeal]:
    """Appeals in one state (None: all), oldest first: the queue staff works through."""
    if status_ is not None and status_ not in ("pending", "approved", "rejected"):
        raise InvalidInput("status: pending, approved or rejected", field="status")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: 1 to {MAX_PAGE}", field="limit")
    async with db.connection(stores.pool, stores.settings) as conn:
        return [_appeal(row) for row in await repository.appeals_by_status(conn, status_, limit=limit)]


def _message(approved: bool, note: str | None) -> str:
    body = "您的健康码申诉已通过，健康码将随之更新。" if approved else "您的健康码申诉未通过。"
    return body + (f"说明：{note}" if note else "")


async def decide(
    stores: Stores,
    appeal_id: UUID,
    *,
    approve: bool,
    note: str | None,
    by: str,
    staff_account: UUID | None = None,
) -> Appeal:
    """Approve or reject a pending appeal. `by` names the decider for the status engine's record
    ("account:<id>" or "ops:<user>"); `staff_account` is stored as decided_by. Conflict `appeal_decided`
    when it was decided already, NotFound for an unknown appeal; a rejection needs a note."""
    note = _text(note, "note", MAX_NOTE)
    if not approve and note is None:
        raise InvalidInput("note: say why the appeal is rejected", field="note")
    decision: Literal["approved", "rejected"] = "approved" if approve else "rejected"
    async with db.transaction(stores.pool, stores.settings) as conn:
        row = await repository.appeal_for_update(conn, appeal_id)
        if row is None:
            raise NotFound("no such appeal", field="appeal_id", code="appeal_not_found")
        if row["status"] != "pending":
            raise Conflict(f"this appeal was already {row['status']}", code="appeal_decided")
        decided = await repository.decide_appeal(conn, appeal_id, decision, staff_account, note)
        await status.apply_appeal_outcome(
            conn, row["account_id"], appeal_id=appeal_id, decision=decision, decided_by=by
        )
        await inbox.deliver(
            conn,
            row["account_id"],
            title=INBOX_TITLE,
            body=_message(approve, note),
            source=status.INBOX_SOURCE,
        )
    return _appeal(decided)
