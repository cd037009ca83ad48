"""`tongban checkpoints`: the accounts of scanners that report scans online (create, list, disable)."""

from __future__ import annotations

from typing import cast

import typer
from rich.table import Table
from rich.text import Text

from core import db
from core.clock import for_display
from core.stores import Stores
from health_code import checkpoints
from health_code.checkpoints import Checkpoint, CheckpointCredentials, Status
from scripts.common import console
from scripts.users_cmd import parse_id, run

app = typer.Typer(
    help="Checkpoint accounts: create (credentials shown once), list, disable.", no_args_is_help=True
)


@app.callback()
def checkpoints_group() -> None:
    """Checkpoint accounts for POST /v1/checkpoints/scans (docs/checkpoints.md)."""


@app.command("create")
def create_command(
    name: str = typer.Argument(..., help="what and where, e.g. '沈阳站 北广场 3号闸机'"),
) -> None:
    """Create a checkpoint and print its credentials. The secret is shown this once and stored only hashed:
    hand it to the checkpoint now (a lost secret means a new checkpoint)."""

    async def create(stores: Stores) -> CheckpointCredentials:
        async with db.connection(stores.pool, stores.settings) as conn:
            return await checkpoints.create_checkpoint(conn, name)

    made = run(create)
    # Plain lines, never folded, so that the secret can be copied whole.
    lines = (
        "checkpoint created: the secret is shown only now, keep it in the device's key store",
        f"id:            {made.checkpoint.id}",
        f"name:          {made.checkpoint.name}",
        f"secret:        {made.secret}",
        f"Authorization: {made.bearer}",
        "(HTTP Basic also works: user = the id, password = the secret)",
    )
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _set(checkpoint_id: str, status: str) -> Checkpoint:
    target = parse_id(checkpoint_id, "CHECKPOINT_ID")

    async def go(stores: Stores) -> Checkpoint:
        async with db.connection(stores.pool, stores.settings) as conn:
            return await checkpoints.set_status(conn, target, cast(Status, status))

    return run(go)


@app.command("disable")
def disable_command(checkpoint_id: str = typer.Argument(..., help="checkpoint id")) -> None:
    """Refuse the checkpoint's credentials (every API process within 10 s)."""
    done = _set(checkpoint_id, "disabled")
    console.print(f"checkpoint {done.id} ({done.name}) is disabled", markup=False)


@app.command("enable")
def enable_command(checkpoint_id: str = typer.Argument(..., help="checkpoint id")) -> None:
    """Accept a disabled checkpoint's credentials again."""
    done = _set(checkpoint_id, "active")
    console.print(f"checkpoint {done.id} ({done.name}) is active", markup=False)


@app.command("list")
def list_command() -> None:
    """Every checkpoint, oldest first, with its last scan."""

    async def go(stores: Stores) -> list[Checkpoint]:
        async with db.connection(stores.pool, stores.settings) as conn:
            return await checkpoints.list_checkpoints(conn)

    found = run(go)
    table = Table(title="checkpoints", caption=f"{len(found)} checkpoints, times Asia/Shanghai")
    for column in ("id", "name", "status", "created", "last scan"):
        table.add_column(column, overflow="fold")
    for item in found:
        table.add_row(
            str(item.id),
            Text(item.name),
            item.status,
            for_display(item.created_at),
            for_display(item.last_scan_at) if item.last_scan_at else "-",
        )
    console.print(table)
