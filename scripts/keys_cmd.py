"""`tongban keys`: list, rotate and rewrap the signing keys (and the one-code terminal secrets)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from core import clock, keys
from core.db import transaction
from core.errors import TongbanError
from core.pii.vault import PiiKeyInfo, RewrapResult, rotate_data_key
from core.pii.vault import rewrap as rewrap_pii
from core.stores import Stores
from onecode import terminals
from scripts.common import console, fail, with_stores

app = typer.Typer(help="Signing keys: list, rotate, rewrap under a new master key.", no_args_is_help=True)
T = TypeVar("T")


def _run(func: Callable[[Stores], Awaitable[T]]) -> T:
    try:
        return with_stores(func)
    except (keys.KeyStoreError, TongbanError) as exc:
        fail(str(exc))


def _print_table(table: Table) -> None:
    console.print(table)


def _when(moment: datetime | None) -> str:
    return clock.for_display(moment) if moment is not None else "-"


@app.command("list")
def list_command(
    purpose: str | None = typer.Option(None, "--purpose", help="only this purpose (e.g. token)"),
) -> None:
    """Show the signing keys (no private material). Times are Asia/Shanghai."""
    infos = _run(lambda stores: keys.list_keys(stores, purpose))
    if not infos:
        console.print("no signing keys" + (f" for purpose {purpose}" if purpose else ""))
        return
    table = Table(title="Signing keys (times Asia/Shanghai)")
    for name in ("kid", "purpose", "alg", "status", "created", "activated", "retired", "master key id"):
        table.add_column(name, no_wrap=name in ("kid", "master key id"))
    for info in infos:
        table.add_row(
            info.kid,
            info.purpose,
            info.alg,
            info.status,
            _when(info.created_at),
            _when(info.activated_at),
            _when(info.retired_at),
            info.master_key_id,
        )
    _print_table(table)


PII = "pii"


async def _rotate_pii(stores: Stores) -> tuple[PiiKeyInfo, RewrapResult]:
    """A new PII data key, and every PII key wrapped under the current master key. Values stay as they are:
    old data keys keep decrypting, so nothing waits (no downtime)."""
    info = await rotate_data_key(stores)
    return info, await rewrap_pii(stores)


@app.command("rotate")
def rotate_command(
    purpose: str = typer.Argument(..., help="key purpose, e.g. token; 'pii' for the PII vault"),
) -> None:
    """Signing keys: retire the active key, promote the next key, make a new next key.
    'pii': a new PII data key, and every PII key re-wrapped under the current master key."""
    if purpose == PII:
        info, rewrapped = _run(_rotate_pii)
        console.print(
            f"PII data key {info.id} ({info.algorithm}) is now active; "
            f"{rewrapped.rewrapped} key(s) re-wrapped under master key {rewrapped.master_key_id}, "
            f"{rewrapped.unchanged} already were"
        )
        console.print("other processes switch data keys within TONGBAN_PII_KEY_CACHE_SECONDS")
        return
    result = _run(lambda stores: keys.rotate(stores, purpose))
    table = Table(title=f"Rotated {purpose}" + (" (first keys made)" if result.created_from_empty else ""))
    table.add_column("kid", no_wrap=True)
    table.add_column("was")
    table.add_column("now")
    if result.retired is not None:
        table.add_row(result.retired.kid, "active", "retired")
    table.add_row(result.activated.kid, "-" if result.created_from_empty else "next", "active")
    table.add_row(result.next.kid, "-", "next")
    _print_table(table)
    console.print("other processes switch keys within their cache time (TONGBAN_KEY_CACHE_SECONDS)")


@app.command("rewrap")
def rewrap_command() -> None:
    """Re-encrypt every private key under the current master key (after a master key rotation)."""
    with Progress(
        TextColumn("rewrapping signing keys"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        task = progress.add_task("rewrap", total=None)

        def step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = _run(lambda stores: keys.rewrap(stores, on_progress=step))
    console.print(
        f"rewrapped {result.rewrapped} of {result.total} signing keys under master key {result.master_key_id}"
    )

    async def terminal_secrets(stores: Stores) -> int:
        async with transaction(stores.pool, stores.settings) as conn:
            return await terminals.rewrap_secrets(conn, stores.settings)

    console.print(f"rewrapped {_run(terminal_secrets)} one-code terminal secret(s)")
