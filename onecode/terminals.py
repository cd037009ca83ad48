"""Terminals: registering bus validators, hospital counters and shop POS, listing, disabling, new secrets.

A terminal's secret (256 random bits) is shown once, when it is registered or reset; the server keeps it
encrypted under the master key (see onecode.terminal_auth). Disabling a terminal or resetting its secret
reaches every API process within onecode_terminal_cache_seconds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg
import msgspec

from core import ids
from core.errors import InvalidInput, NotFound
from core.masterkey import master_keyring
from core.settings import Settings
from onecode import repository
from onecode.terminal_auth import (
    KINDS,
    TERMINALS,
    TerminalKind,
    new_secret,
    open_secret,
    seal_secret,
    secret_text,
)

MAX_NAME = 100
MAX_ORG_CODE = 40
Status = Literal["active", "disabled"]


class Terminal(msgspec.Struct, kw_only=True):
    id: UUID
    kind: TerminalKind
    name: str
    owner: str  # the operator: bus company, hospital or merchant
    org_code: str | None  # a hospital counter's medical-institution code
    status: Status
    created_at: datetime
    secret_changed_at: datetime


class TerminalCredentials(msgspec.Struct, kw_only=True):
    """What `tongban terminals add` / `reset-secret` shows once: the secret cannot be shown again."""

    terminal: Terminal
    secret: str  # 64 hex digits: the HMAC key of X-Signature


def _clean(value: str, what: str, limit: int) -> str:
    value = value.strip()
    if not value or len(value) > limit or not value.isprintable():
        raise InvalidInput(f"{what}: 1 to {limit} printable characters", field=what)
    return value


async def register(
    conn: asyncpg.Connection,
    settings: Settings,
    *,
    kind: str,
    name: str,
    owner: str,
    org_code: str | None = None,
) -> TerminalCredentials:
    """A new active terminal and its secret (the only time the secret exists outside the terminal)."""
    if kind not in KINDS:
        raise InvalidInput(f"kind: one of {', '.join(KINDS)}", field="kind")
    if org_code is not None:
        org_code = _clean(org_code, "org_code", MAX_ORG_CODE)
    elif kind == "counter":
        raise InvalidInput(
            "org_code: a hospital counter needs its medical-institution code (sent with ec.query)",
            field="org_code",
        )
    terminal_id, secret = ids.new_id(), new_secret()
    blob, master_key_id = seal_secret(settings, terminal_id, secret)
    row = await repository.insert_terminal(
        conn,
        terminal_id,
        kind=kind,
        name=_clean(name, "name", MAX_NAME),
        owner=_clean(owner, "owner", MAX_NAME),
        org_code=org_code,
        secret_enc=blob,
        master_key_id=master_key_id,
    )
    return TerminalCredentials(terminal=Terminal(**dict(row)), secret=secret_text(secret))


async def list_terminals(conn: asyncpg.Connection, kind: str | None = None) -> list[Terminal]:
    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"kind: one of {', '.join(KINDS)}", field="kind")
    return [Terminal(**dict(row)) for row in await repository.list_terminals(conn, kind)]


async def set_status(conn: asyncpg.Connection, terminal_id: UUID, status: Status) -> Terminal:
    """Disable (or enable again) a terminal; every process follows within onecode_terminal_cache_seconds."""
    if status not in ("active", "disabled"):
        raise InvalidInput("status: active or disabled", field="status")
    row = await repository.set_terminal_status(conn, terminal_id, status)
    if row is None:
        raise NotFound("no such terminal", field="terminal_id")
    TERMINALS.forget(terminal_id)
    return Terminal(**dict(row))


async def reset_secret(
    conn: asyncpg.Connection, settings: Settings, terminal_id: UUID
) -> TerminalCredentials:
    """A new secret for a terminal (the old one stops working within onecode_terminal_cache_seconds)."""
    secret = new_secret()
    blob, master_key_id = seal_secret(settings, terminal_id, secret)
    row = await repository.set_terminal_secret(conn, terminal_id, blob, master_key_id)
    if row is None:
        raise NotFound("no such terminal", field="terminal_id")
    TERMINALS.forget(terminal_id)
    return TerminalCredentials(terminal=Terminal(**dict(row)), secret=secret_text(secret))


async def rewrap_secrets(conn: asyncpg.Connection, settings: Settings) -> int:
    """Re-wrap every terminal secret under the current master key (after a master-key rotation, with the
    old key still in the keyring), in the caller's transaction: all or nothing. Returns how many moved."""
    current_id = master_keyring(settings).current_id
    rows = await repository.terminal_secrets_not_under(conn, current_id)
    for row in rows:
        secret = open_secret(settings, row["id"], row["secret_enc"], row["master_key_id"])
        blob, key_id = seal_secret(settings, row["id"], secret)
        await repository.rewrap_terminal_secret(conn, row["id"], blob, key_id)
    return len(rows)
