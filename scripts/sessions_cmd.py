"""`tongban sessions revoke`: end one session, or every session of an account, at once."""

from __future__ import annotations

from uuid import UUID

import typer

from auth import rights
from core.stores import Stores
from scripts.common import console, fail
from scripts.users_cmd import ops_actor, parse_id, run

app = typer.Typer(help="Citizen sessions (devices).", no_args_is_help=True)


@app.callback()
def sessions() -> None:
    """Citizen sessions: revoke."""


@app.command("revoke")
def revoke_command(
    session_id: str | None = typer.Argument(None, help="the session to end"),
    account: str | None = typer.Option(None, "--account", help="end every session of this account"),
) -> None:
    """End a session (or all of an account's): refresh stops at once and access tokens fail on every API
    process within a second."""
    if (session_id is None) == (account is None):
        fail("give exactly one of SESSION_ID or --account ACCOUNT_ID")
    actor = ops_actor()
    if session_id is not None:
        target = parse_id(session_id, "SESSION_ID")

        async def revoke_one(stores: Stores) -> UUID:
            return await rights.revoke_session_as(stores, target, actor)

        owner = run(revoke_one)
        console.print(f"session {target} of account {owner} revoked")
        return
    account_id = parse_id(account or "", "ACCOUNT_ID")

    async def revoke_all(stores: Stores) -> int:
        return await rights.revoke_account_sessions_as(stores, account_id, actor)

    ended = run(revoke_all)
    console.print(f"{ended} session{'' if ended == 1 else 's'} of account {account_id} revoked")
