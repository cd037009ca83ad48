"""The citizen inbox: short messages from the platform and mini-apps (a health status change, a review
result, ...), read in the app newest first.

Other capabilities write with deliver() inside their own transaction, so a message exists exactly when the
change it tells about was committed. Messages hold no secrets and no ID numbers: they are shown as they are.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated
from uuid import UUID

import asyncpg
import msgspec

from core import ids
from core.errors import InvalidInput

MAX_TITLE = 200
MAX_BODY = 4000
MAX_PAGE = 100
_SOURCE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class InboxMessage(msgspec.Struct, kw_only=True):
    id: UUID
    source: str
    title: str
    body: str
    created_at: datetime
    read_at: datetime | None = None


class InboxPage(msgspec.Struct, kw_only=True):
    messages: list[InboxMessage]
    # Pass as `before` for the next (older) page; None on the last page.
    next_before: UUID | None = None


PageSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)]


async def deliver(conn: asyncpg.Connection, account_id: UUID, *, title: str, body: str, source: str) -> UUID:
    """Put a message in the account's inbox (in the caller's transaction, if any); returns its id.

    source names the sender, e.g. "health" or "miniapp.<appid>" (lower-case, digits, _ . -)."""
    if not _SOURCE.match(source):
        raise InvalidInput("source: lower-case letters, digits, '_', '.', '-' (at most 64)", field="source")
    title, body = title.strip(), body.strip()
    if not title or len(title) > MAX_TITLE:
        raise InvalidInput(f"title: 1 to {MAX_TITLE} characters", field="title")
    if len(body) > MAX_BODY:
        raise InvalidInput(f"body: at most {MAX_BODY} characters", field="body")
    message_id = ids.new_id()
    await conn.execute(
        """INSERT INTO inbox_messages (id, account_id, source, title, body, created_at)
           VALUES ($1, $2, $3, $4, $5, now())""",
        message_id,
        account_id,
        source,
        title,
        body,
    )
    return message_id


async def list_messages(
    conn: asyncpg.Connection, account_id: UUID, *, limit: int = 20, before: UUID | None = None
) -> InboxPage:
    """The account's messages newest first: `limit` of them (1..100), older than message `before` (one of
    the account's message ids, e.g. the previous page's next_before) when given."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit: 1 to {MAX_PAGE}", field="limit")
    # seq keeps delivery order (ids of one millisecond are not ordered); a cursor that is not one of the
    # account's messages gives an empty page.
    rows = await conn.fetch(
        """SELECT id, source, title, body, created_at, read_at FROM inbox_messages
           WHERE account_id = $1
             AND ($2::uuid IS NULL
                  OR seq < (SELECT seq FROM inbox_messages WHERE id = $2 AND account_id = $1))
           ORDER BY seq DESC LIMIT $3""",
        account_id,
        before,
        limit + 1,
    )
    messages = [InboxMessage(**dict(row)) for row in rows[:limit]]
    return InboxPage(messages=messages, next_before=messages[-1].id if len(rows) > limit else None)


async def forget_account(conn: asyncpg.Connection, account_id: UUID) -> int:
    """For account erasure: every message of the account; how many were deleted."""
    deleted = await conn.fetch("DELETE FROM inbox_messages WHERE account_id = $1 RETURNING 1", account_id)
    return len(deleted)
