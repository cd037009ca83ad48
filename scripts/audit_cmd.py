"""`tongban audit pii`: who decrypted which personal data field, when and why."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer
from rich.table import Table
from rich.text import Text

from core import db
from core.clock import SHANGHAI, for_display, now
from core.pii import AccessLogEntry, access_log
from core.stores import Stores
from scripts.common import console, with_stores

app = typer.Typer(help="Audit trails.", no_args_is_help=True)

_AGE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@app.callback()
def audit() -> None:
    """Audit trails: access to personal data."""


def parse_since(text: str, at: datetime) -> datetime:
    """An age before `at` (30m, 24h, 7d, 2w) or an ISO date/time; without a zone it is Asia/Shanghai time."""
    text = text.strip()
    age = _AGE.match(text.lower())
    if age:
        return at - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected an age like 24h or 7d, or a date like 2026-11-22"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=SHANGHAI)
    return moment.astimezone(UTC)


def render(entries: list[AccessLogEntry]) -> Table:
    table = Table(
        title="PII access log (newest first)",
        caption=f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}, times Asia/Shanghai",
    )
    table.add_column("at", no_wrap=True)
    table.add_column("actor", overflow="fold")
    table.add_column("reason", overflow="fold")
    table.add_column("field", overflow="fold")
    table.add_column("row", overflow="fold")
    table.add_column("key", justify="right")
    table.add_column("result")
    for entry in entries:
        # Text, not markup strings: an actor or reason like "[red]" must print as typed.
        table.add_row(
            Text(for_display(entry.at)),
            Text(entry.actor),
            Text(entry.reason),
            Text(f"{entry.table_name}.{entry.column_name}"),
            Text(entry.row_id),
            Text("-" if entry.key_id is None else str(entry.key_id)),
            Text("ok") if entry.succeeded else Text("FAILED", style="red"),
        )
    return table


@app.command("pii")
def pii_command(
    since: str | None = typer.Option(
        None, help="from this moment: an age (30m, 24h, 7d) or a date/time (Asia/Shanghai unless zoned)"
    ),
    actor: str | None = typer.Option(None, help="only this actor"),
    limit: int = typer.Option(50, min=1, max=10_000, help="at most N entries, newest first"),
) -> None:
    """Print the PII access log: every decrypt, with actor, reason, field and row."""
    since_at = parse_since(since, now()) if since else None

    async def fetch(stores: Stores) -> list[AccessLogEntry]:
        async with db.connection(stores.pool, stores.settings) as conn:
            return await access_log(conn, since=since_at, actor=actor, limit=limit)

    entries = with_stores(fetch)
    if not entries:
        console.print("no PII access recorded for this filter")
        return
    console.print(render(entries))
