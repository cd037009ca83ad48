"""The caller's inbox: messages from the platform and mini-apps, newest first."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from litestar import Request, Router, get
from litestar.params import FromQuery, QueryParameter

from api.deps import StoresDep
from api.guards import citizen, claims_of
from core.db import connection
from miniapps import inbox
from miniapps.inbox import InboxPage


@get("/me/messages", guards=[citizen], summary="The caller's messages, newest first")
async def my_messages(
    request: Request[Any, Any, Any],
    stores: StoresDep,
    limit: Annotated[int, QueryParameter(ge=1, le=inbox.MAX_PAGE)] = 20,
    before: FromQuery[UUID | None] = None,
) -> InboxPage:
    """`limit` messages (1-100, default 20); for the next page pass the answer's `next_before` as `before`
    (null on the last page)."""
    async with connection(stores.pool, stores.settings) as conn:
        return await inbox.list_messages(conn, claims_of(request).account_id, limit=limit, before=before)


router = Router(path="/v1", route_handlers=[my_messages], tags=["me"])
