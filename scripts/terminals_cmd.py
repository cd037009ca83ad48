"""`tongban terminals`: one-code terminals (bus validators, hospital counters, shop POS): add, list, disable,
enable, reset-secret."""

from __future__ import annotations

from typing import cast

import typer
from rich.table import Table
from rich.text import Text

from core import db
from core.clock import for_display
from core.stores import Stores
from onecode import terminals
from onecode.terminals import Status, Terminal, TerminalCredentials
from scripts.common import console
from scripts.users_cmd import parse_id, run

app = typer.Typer(
    help="One-code terminals: add (secret shown once), list, disable, enable, reset-secret.",
    no_args_is_help=True,
)


@app.callback()
def terminals_group() -> None:
    """Terminals that sign their requests to /v1/terminals/* (docs/terminals.md)."""


def _show(made: TerminalCredentials, headline: str) -> None:
    # Plain lines, never folded, so that the secret can be copied whole.
    lines = (
        headline,
        f"id:      {made.terminal.id}",
        f"kind:    {made.terminal.kind}",
        f"name:    {made.terminal.name}",
        f"owner:   {made.terminal.owner}",
        f"secret:  {made.secret}",
        "(64 hex digits: the HMAC-SHA256 key of X-Signature; see docs/terminals.md)",
    )
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command("add")
def add_command(
    kind: str = typer.Option(..., help="validator (bus), counter (hospital) or pos (shop)"),
    name: str = typer.Option(..., help="what and where, e.g. '沈阳 215路 辽A12345 前门'"),
    owner: str | None = typer.Option(None, help="operator or merchant (default: the name)"),
    org_code: str | None = typer.Option(
        None, help="a hospital counter's medical-institution code (定点医药机构编码), sent with ec.query"
    ),
) -> None:
    """Register a terminal and print its id and secret. The secret is shown this once: put it in the
    terminal's key store now (a lost secret means `reset-secret`)."""

    async def add(stores: Stores) -> TerminalCredentials:
        async with db.connection(stores.pool, stores.settings) as conn:
            return await terminals.register(
                conn, stores.settings, kind=kind, name=name, owner=owner or name, org_code=org_code
            )

    _show(run(add), "terminal added: the secret is shown only now, keep it in the terminal's key store")


def _set(terminal_id: str, status: str) -> Terminal:
    target = parse_id(terminal_id, "TERMINAL_ID")

    async def go(stores: Stores) -> Terminal:
        async with db.connection(stores.pool, stores.settings) as conn:
            return await terminals.set_status(conn, target, cast(Status, status))

    return run(go)


@app.command("disable")
def disable_command(terminal_id: str = typer.Argument(..., help="terminal id")) -> None:
    """Refuse the terminal's requests (every API process within TONGBAN_ONECODE_TERMINAL_CACHE_SECONDS)."""
    done = _set(terminal_id, "disabled")
    console.print(f"terminal {done.id} ({done.name}) is disabled", markup=False)


@app.command("enable")
def enable_command(terminal_id: str = typer.Argument(..., help="terminal id")) -> None:
    """Accept a disabled terminal's requests again."""
    done = _set(terminal_id, "active")
    console.print(f"terminal {done.id} ({done.name}) is active", markup=False)


@app.command("reset-secret")
def reset_secret_command(terminal_id: str = typer.Argument(..., help="terminal id")) -> None:
    """A new secret for the terminal, shown once; the old one stops working."""
    target = parse_id(terminal_id, "TERMINAL_ID")

    async def go(stores: Stores) -> TerminalCredentials:
        async with db.connection(stores.pool, stores.settings) as conn:
            return await terminals.reset_secret(conn, stores.settings, target)

    _show(run(go), "new secret: shown only now; the old one is refused from now on")


@app.command("list")
def list_command(
    kind: str | None = typer.Option(None, help="only this kind: validator, counter or pos"),
) -> None:
    """Every terminal, oldest first."""

    async def go(stores: Stores) -> list[Terminal]:
        async with db.connection(stores.pool, stores.settings) as conn:
            return await terminals.list_terminals(conn, kind)

    found = run(go)
    table = Table(title="one-code terminals", caption=f"{len(found)} terminals, times Asia/Shanghai")
    for column in ("id", "kind", "name", "owner", "org code", "status", "created", "secret changed"):
        table.add_column(column, overflow="fold")
    for item in found:
        table.add_row(
            str(item.id),
            item.kind,
            Text(item.name),
            Text(item.owner),
            item.org_code or "-",
            item.status,
            for_display(item.created_at),
            for_display(item.secret_changed_at),
        )
    console.print(table)
