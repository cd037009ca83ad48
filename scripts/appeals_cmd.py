"""`tongban health appeals`: health-status appeals for health-authority staff at the keyboard."""

from __future__ import annotations

from typing import cast

import typer
from rich.table import Table
from rich.text import Text

from core.clock import for_display
from core.stores import Stores
from health_code import appeals
from health_code.appeals import Appeal, AppealStatus
from scripts.common import console, fail
from scripts.users_cmd import ops_actor, parse_id, run

app = typer.Typer(help="Appeals against health statuses: list, approve, reject.", no_args_is_help=True)
STATUSES = ("pending", "approved", "rejected", "all")


@app.command("list")
def list_command(
    status: str = typer.Option("pending", "--status", help="pending, approved, rejected or all"),
    limit: int = typer.Option(100, "--limit", min=1, max=appeals.MAX_PAGE),
) -> None:
    """Appeals in one state, oldest first (the queue)."""
    if status not in STATUSES:
        fail(f"--status: one of {', '.join(STATUSES)}")
    wanted = None if status == "all" else cast(AppealStatus, status)

    async def go(stores: Stores) -> list[Appeal]:
        return await appeals.list_appeals(stores, wanted, limit=limit)

    found = run(go)
    table = Table(title=f"appeals ({status})", caption=f"{len(found)} appeals, times Asia/Shanghai")
    for column in ("id", "account", "status", "filed", "reason", "decided", "note"):
        table.add_column(column, overflow="fold")
    for appeal in found:
        table.add_row(
            str(appeal.id),
            str(appeal.account_id),
            appeal.status,
            for_display(appeal.created_at),
            Text(appeal.reason),
            for_display(appeal.decided_at) if appeal.decided_at else "-",
            Text(appeal.decision_note or "-"),
        )
    console.print(table)


def _decide(appeal_id: str, approve: bool, note: str | None) -> None:
    target = parse_id(appeal_id, "APPEAL_ID")
    actor = ops_actor()

    async def go(stores: Stores) -> Appeal:
        return await appeals.decide(stores, target, approve=approve, note=note, by=actor)

    decided = run(go)
    console.print(f"appeal {decided.id}: {decided.status} (account {decided.account_id})", markup=False)


@app.command("approve")
def approve_command(
    appeal_id: str = typer.Argument(..., help="appeal id"),
    note: str | None = typer.Option(None, "--note", help="shown to the citizen"),
) -> None:
    """Approve: what the rules held against the citizen up to now is cleared (a recompute follows)."""
    _decide(appeal_id, True, note)


@app.command("reject")
def reject_command(
    appeal_id: str = typer.Argument(..., help="appeal id"),
    note: str = typer.Option(..., "--note", help="why (shown to the citizen)"),
) -> None:
    """Reject, saying why; the status stays as it is."""
    _decide(appeal_id, False, note)
