"""`tongban staff`: platform roles of accounts (platform_admin, reviewer, health_authority)."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from core.clock import for_display
from core.stores import Stores
from miniapps import registry
from miniapps.models import STAFF_ROLES, Actor, StaffMember
from scripts.common import console, fail
from scripts.users_cmd import ops_actor, parse_id, run

app = typer.Typer(help="Platform staff roles.", no_args_is_help=True)


@app.callback()
def staff() -> None:
    """Platform staff: grant, revoke, list roles (platform_admin, reviewer, health_authority)."""


def _role(role: str) -> str:
    if role not in STAFF_ROLES:
        fail(f"ROLE: one of {', '.join(STAFF_ROLES)}")
    return role


@app.command("grant")
def grant_command(
    account_id: str = typer.Argument(..., help="account id"),
    role: str = typer.Argument(..., help=f"one of {', '.join(STAFF_ROLES)}"),
) -> None:
    """Give an account a platform role (effective on every API process within staff_cache_seconds)."""
    target, wanted = parse_id(account_id, "ACCOUNT_ID"), _role(role)
    actor = Actor.ops(ops_actor())

    async def grant(stores: Stores) -> bool:
        return await registry.grant_staff(stores, target, wanted, actor)

    granted = run(grant)
    console.print(f"account {target} {'is now' if granted else 'already was'} {wanted}")


@app.command("revoke")
def revoke_command(
    account_id: str = typer.Argument(..., help="account id"),
    role: str = typer.Argument(..., help=f"one of {', '.join(STAFF_ROLES)}"),
) -> None:
    """Take a platform role away (every API process stops honouring it within staff_cache_seconds)."""
    target, wanted = parse_id(account_id, "ACCOUNT_ID"), _role(role)
    actor = Actor.ops(ops_actor())

    async def revoke(stores: Stores) -> bool:
        return await registry.revoke_staff(stores, target, wanted, actor)

    if not run(revoke):
        fail(f"account {target} is not {wanted}")
    console.print(f"account {target} is no longer {wanted}")


@app.command("list")
def list_command() -> None:
    """Every staff role held, oldest grant first."""
    members: list[StaffMember] = run(registry.list_staff)
    table = Table(title="staff roles", caption=f"{len(members)} grants, times Asia/Shanghai")
    for column in ("account", "role", "granted by", "granted at"):
        table.add_column(column, overflow="fold")
    for member in members:
        table.add_row(
            Text(str(member.account_id)),
            Text(member.role),
            Text(member.granted_by),
            Text(for_display(member.granted_at)),
        )
    console.print(table)
