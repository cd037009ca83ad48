"""The daily statement of a provider that moves money (the transit operator, the payment acquirer), and the
knobs that inject, alter or drop a line so reconciliation can be shown to catch a mismatch.

GET {prefix}/statement?date=YYYY-MM-DD   JSON lines (application/x-ndjson), one per charge of that
                                         settlement day, oldest first: {provider_ref, kind, amount_fen,
                                         occurred_at}. The day is an Asia/Shanghai calendar day, as Chinese
                                         providers settle; occurred_at is RFC 3339 in UTC.
POST /sandbox/statement {provider_ref, amount_fen?, kind?, occurred_at?}
                                         alters the line with that provider_ref (the fields given), or adds
                                         one (amount_fen required) that no charge stands behind.
DELETE /sandbox/statement/{provider_ref} drops a line, as if the provider had lost the charge.
Only the statement changes: the charge itself (and its idempotent replay) stays as it was.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

import msgspec
import structlog
from litestar import Response, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, Parameter
from litestar.types import ControllerRouterHandler

from sandbox.frame import FAULTY, ProviderError

log = structlog.get_logger(__name__)

SETTLEMENT_TZ = ZoneInfo("Asia/Shanghai")
NDJSON = "application/x-ndjson"
Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]

_encoder = msgspec.json.Encoder()


class StatementLine(msgspec.Struct):
    provider_ref: str
    kind: str
    amount_fen: int
    occurred_at: datetime


class LineIn(msgspec.Struct, forbid_unknown_fields=True):
    provider_ref: Reference
    amount_fen: Annotated[int, msgspec.Meta(ge=-(10**12), le=10**12)] | None = None
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    occurred_at: AwareTime | None = None


def day_window(day: date) -> tuple[datetime, datetime]:
    """[start, end) in UTC of one settlement day."""
    start = datetime.combine(day, time(), SETTLEMENT_TZ)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


class Statement:
    """Lines by provider reference, in the order they were written."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # the kind of the provider's own charges ("fare", "payment")
        self.lines: dict[str, StatementLine] = {}

    def record(self, provider_ref: str, amount_fen: int, occurred_at: datetime) -> None:
        self.lines[provider_ref] = StatementLine(provider_ref, self.kind, amount_fen, occurred_at)

    def for_day(self, day: date) -> list[StatementLine]:
        start, end = day_window(day)
        return sorted(
            (line for line in self.lines.values() if start <= line.occurred_at < end),
            key=lambda line: line.occurred_at,
        )


def statement_routes(prefix: str) -> list[ControllerRouterHandler]:
    """The statement download under `prefix` and the injection knobs; the app's state holds `statement`."""

    @get(f"{prefix}/statement", opt=FAULTY, sync_to_thread=False)
    def download(state: State, day: Annotated[date, Parameter(query="date")]) -> Response[bytes]:
        statement: Statement = state.statement
        lines = statement.for_day(day)
        return Response(_encoder.encode_lines(lines), media_type=NDJSON)

    @post("/sandbox/statement", status_code=200, sync_to_thread=False)
    def inject(state: State, data: JSONBody[LineIn]) -> StatementLine:
        statement: Statement = state.statement
        line = statement.lines.get(data.provider_ref)
        if line is None:
            if data.amount_fen is None:
                raise ProviderError(400, "isv.INVALID_PARAMETERS", "amount_fen: required for a new line")
            line = StatementLine(
                data.provider_ref,
                data.kind or statement.kind,
                data.amount_fen,
                (data.occurred_at or datetime.now(UTC)).astimezone(UTC),
            )
        else:
            line = StatementLine(
                line.provider_ref,
                data.kind or line.kind,
                line.amount_fen if data.amount_fen is None else data.amount_fen,
                line.occurred_at if data.occurred_at is None else data.occurred_at.astimezone(UTC),
            )
        statement.lines[line.provider_ref] = line
        log.info("statement.injected", provider_ref=line.provider_ref)
        return line

    @delete("/sandbox/statement/{provider_ref:str}", status_code=200, sync_to_thread=False)
    def drop(state: State, provider_ref: FromPath[str]) -> dict[str, int]:
        statement: Statement = state.statement
        dropped = statement.lines.pop(provider_ref, None)
        log.info("statement.dropped", provider_ref=provider_ref[:64], found=dropped is not None)
        return {"deleted": int(dropped is not None)}

    return [download, inject, drop]
