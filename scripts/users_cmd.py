"""`tongban users`: look up a citizen account (masked, or revealed with a logged reason), ban, unban."""

from __future__ import annotations

import getpass
from collections.abc import Awaitable, Callable
from typing import TypeVar
from uuid import UUID

import typer
from rich.table import Table
from rich.text import Text

from auth import rights
from auth.rights import AccountSummary
from core.clock import for_display
from core.errors import TongbanError
from core.stores import Stores
from scripts.common import console, fail, with_stores

app = typer.Typer(help="Citizen accounts: show, ban, unban.", no_args_is_help=True)
T = TypeVar("T")


@app.callback()
def users() -> None:
    """Citizen accounts: show (masked unless --reveal), ban, unban, erase-due."""


def ops_actor() -> str:
    """Who is at the keyboard, as the PII access log and the account events name them."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"ops:{user}"


def parse_id(text: str, what: str) -> UUID:
    try:
        return UUID(text.strip())
    except ValueError:
        fail(f"{what}: {text!r} is not an id (expected a UUID)")


def run(func: Callable[[Stores], Awaitable[T]]) -> T:
    """with_stores, with domain errors (bad input, not found, conflict) as one line and exit code 1."""
    try:
        return with_stores(func)
    except TongbanError as exc:
        fail(exc.detail)


def _text(value: str | None) -> Text:
    return Text("-" if value is None or value == "" else value)


def render(summary: AccountSummary) -> tuple[Table, Table | None]:
    title = "account (REVEALED: logged in the PII access log)" if summary.revealed else "account"
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    deletion = summary.deletion
    rows = [
        ("id", str(summary.id)),
        ("status", summary.status),
        ("level", f"L{summary.level} ({', '.join(summary.amr)})"),
        ("phone", summary.phone),
        ("name", summary.name),
        ("id number", summary.id_number),
        ("banned for", summary.banned_reason),
        ("created", for_display(summary.created_at)),
        ("updated", for_display(summary.updated_at)),
        (
            "deletion",
            deletion.state
            + (
                f", due {for_display(deletion.due_at)}"
                if deletion.state == "pending" and deletion.due_at
                else ""
            ),
        ),
        ("active sessions", str(len(summary.sessions))),
    ]
    for field, value in rows:
        # Text, not markup: stored values print exactly as they are.
        table.add_row(field, _text(value))
    if not summary.sessions:
        return table, None
    sessions = Table(title="active sessions", caption="times Asia/Shanghai")
    for column in ("session", "device", "name", "since", "last seen"):
        sessions.add_column(column, overflow="fold")
    for session in summary.sessions:
        sessions.add_row(
            Text(str(session.id)),
            Text(session.device_id),
            Text(session.device_name),
            Text(for_display(session.created_at)),
            Text(for_display(session.last_seen_at)),
        )
    return table, sessions


@app.command("show")
def show_command(
    phone: str | None = typer.Option(None, "--phone", help="mainland mobile number"),
    id_number: str | None = typer.Option(None, "--id-number", help="citizen ID number (GB 11643)"),
    account: str | None = typer.Option(None, "--account", help="account id"),
    reveal: bool = typer.Option(False, "--reveal", help="decrypt phone, name and ID number (needs --reason)"),
    reason: str | None = typer.Option(None, "--reason", help="why (written to the PII access log)"),
) -> None:
    """Show one account, found by phone, ID number or id. Masked unless --reveal --reason."""
    if sum(key is not None for key in (phone, id_number, account)) != 1:
        fail("give exactly one of --phone, --id-number or --account")
    account_id = parse_id(account, "--account") if account is not None else None
    if reveal and not (reason and reason.strip()):
        fail("--reveal needs --reason: every reveal is written to the PII access log")
    actor = ops_actor() if reveal else None

    async def find(stores: Stores) -> AccountSummary | None:
        return await rights.find_account(
            stores, phone=phone, id_number=id_number, account_id=account_id, reveal_as=actor, reason=reason
        )

    summary = run(find)
    if summary is None:
        fail("no account with that " + ("phone" if phone else "ID number" if id_number else "id"))
    table, sessions = render(summary)
    console.print(table)
    if sessions is not None:
        console.print(sessions)


@app.command("ban")
def ban_command(
    account_id: str = typer.Argument(..., help="account id"),
    reason: str = typer.Option(..., "--reason", help="why (kept with the account)"),
) -> None:
    """Suspend an account and end all its sessions: its tokens stop working at once, login is refused."""
    target = parse_id(account_id, "ACCOUNT_ID")
    actor = ops_actor()

    async def ban(stores: Stores) -> int:
        return await rights.ban_account(stores, target, reason, actor)

    ended = run(ban)
    console.print(f"account {target} banned; {ended} session{'' if ended == 1 else 's'} ended")


@app.command("unban")
def unban_command(account_id: str = typer.Argument(..., help="account id")) -> None:
    """Lift a ban (the person logs in again; old sessions stay ended)."""
    target = parse_id(account_id, "ACCOUNT_ID")
    actor = ops_actor()

    async def unban(stores: Stores) -> str:
        return await rights.unban_account(stores, target, actor)

    status = run(unban)
    console.print(f"account {target} unbanned; status {status}")


@app.command("erase-due")
def erase_due_command() -> None:
    """Erase accounts whose deletion grace period has ended. The worker's deferred jobs do this already;
    this is the backstop (e.g. after losing Redis), safe to run from cron."""
    erased = run(rights.erase_due_accounts)
    console.print(f"{erased} account{'' if erased == 1 else 's'} erased")
