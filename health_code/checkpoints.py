"""Checkpoint accounts: the scanners at a gate, a hospital counter or on a bus that report scans online.

A checkpoint's credentials are its id and a secret of 256 random bits, shown once when it is created and
kept only as a SHA-256 (a slow password hash buys nothing against a random 256-bit secret). A request
carries them as

    Authorization: Bearer cp_<id>.<secret>
    Authorization: Basic base64(<id>:<secret>)

Scans are the hot path, so verified credentials are cached in the process for CACHE_SECONDS, and so are
failed look-ups (a wrong secret costs no query either); disabling a checkpoint reaches every process within
that time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import asyncpg
import msgspec

from core import db, ids
from core.errors import InvalidInput, NotFound, Unauthorized
from core.stores import Stores
from health_code import repository

TOKEN_PREFIX = "cp_"  # noqa: S105 (the prefix of a credential, not one)
SECRET_BYTES = 32
# How long a process trusts a checkpoint row it read (credentials, status).
CACHE_SECONDS = 10.0
# Cached entries at most (each a few hundred bytes); the cache starts over when full.
CACHE_MAX = 50_000
MAX_NAME = 100
_HASH_DOMAIN = b"tongban-checkpoint-secret/1\x00"

Status = Literal["active", "disabled"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]


class Checkpoint(msgspec.Struct, kw_only=True):
    id: UUID
    name: str
    status: Status
    created_at: datetime
    last_scan_at: datetime | None = None


class CheckpointCredentials(msgspec.Struct, kw_only=True):
    """What `tongban checkpoints create` shows once: the secret is not stored and cannot be shown again."""

    checkpoint: Checkpoint
    secret: str
    # The Authorization header value: "Bearer cp_<id>.<secret>".
    bearer: str


class CheckpointPrincipal(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The checkpoint a request authenticated as."""

    id: UUID
    name: str


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(_HASH_DOMAIN + secret.encode()).digest()


def bearer_token(checkpoint_id: UUID, secret: str) -> str:
    return f"{TOKEN_PREFIX}{checkpoint_id}.{secret}"


def _clean_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidInput(f"name: 1 to {MAX_NAME} printable characters", field="name")
    return name


async def create_checkpoint(conn: asyncpg.Connection, name: str) -> CheckpointCredentials:
    """A new active checkpoint and its credentials (the only time the secret exists outside its holder)."""
    checkpoint_id, secret = ids.new_id(), secrets.token_urlsafe(SECRET_BYTES)
    row = await repository.insert_checkpoint(conn, checkpoint_id, _clean_name(name), hash_secret(secret))
    return CheckpointCredentials(
        checkpoint=Checkpoint(**dict(row)),
        secret=secret,
        bearer=f"Bearer {bearer_token(checkpoint_id, secret)}",
    )


async def list_checkpoints(conn: asyncpg.Connection) -> list[Checkpoint]:
    return [Checkpoint(**dict(row)) for row in await repository.list_checkpoints(conn)]


async def set_status(conn: asyncpg.Connection, checkpoint_id: UUID, status: Status) -> Checkpoint:
    """Disable (or enable again) a checkpoint; every process follows within CACHE_SECONDS."""
    if status not in ("active", "disabled"):
        raise InvalidInput("status: active or disabled", field="status")
    row = await repository.set_checkpoint_status(conn, checkpoint_id, status)
    if row is None:
        raise NotFound("no such checkpoint", field="checkpoint_id")
    CREDENTIALS.forget(checkpoint_id)
    return Checkpoint(**dict(row))


# --- authenticating requests -------------------------------------------------------------------------------


def _refused(detail: str) -> Unauthorized:
    return Unauthorized(detail, code="invalid_checkpoint_credentials")


def parse_authorization(header: str | None) -> tuple[UUID, str]:
    """(checkpoint id, secret) from `Bearer cp_<id>.<secret>` or `Basic base64(<id>:<secret>)`.
    Unauthorized when missing or malformed."""
    if not header:
        raise _refused("checkpoint credentials are required (Bearer cp_<id>.<secret> or Basic)")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    scheme = scheme.lower()
    if scheme == "bearer" and value.startswith(TOKEN_PREFIX):
        ident, dot, secret = value[len(TOKEN_PREFIX) :].partition(".")
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise _refused("Basic credentials are not base64 of <id>:<secret>") from None
        ident, dot, secret = decoded.partition(":")
        ident = ident.removeprefix(TOKEN_PREFIX)
    else:
        raise _refused("checkpoint credentials are required (Bearer cp_<id>.<secret> or Basic)")
    if not dot or not secret or len(secret) > 200:
        raise _refused("malformed checkpoint credentials")
    try:
        return UUID(ident), secret
    except ValueError:
        raise _refused("malformed checkpoint credentials") from None


class _Row(msgspec.Struct, frozen=True, gc=False):
    expires: float
    principal: CheckpointPrincipal | None  # None: no such checkpoint, or disabled
    secret_hash: bytes


class CredentialCache:
    """The checkpoints this process read lately (rows, found or not) and the credentials it accepted, by the
    Authorization header that carried them: a scanner sends the same header with every scan, so a repeat is
    one dictionary look-up, with no parsing."""

    def __init__(self) -> None:
        self._accepted: dict[str, tuple[float, CheckpointPrincipal]] = {}
        self._rows: dict[UUID, _Row] = {}

    def forget(self, checkpoint_id: UUID | None = None) -> None:
        if checkpoint_id is None:
            self._accepted.clear()
            self._rows.clear()
            return
        self._rows.pop(checkpoint_id, None)
        for key in [key for key, (_, principal) in self._accepted.items() if principal.id == checkpoint_id]:
            del self._accepted[key]

    async def _row(self, stores: Stores, checkpoint_id: UUID, now: float) -> _Row:
        cached = self._rows.get(checkpoint_id)
        if cached is not None and cached.expires > now:
            return cached
        async with db.connection(stores.pool, stores.settings) as conn:
            record = await repository.checkpoint_secret(conn, checkpoint_id)
        if record is None or record["status"] != "active":
            row = _Row(now + CACHE_SECONDS, None, b"")
        else:
            principal = CheckpointPrincipal(id=record["id"], name=record["name"])
            row = _Row(now + CACHE_SECONDS, principal, bytes(record["secret_hash"]))
        if len(self._rows) >= CACHE_MAX:
            self._rows.clear()
        self._rows[checkpoint_id] = row
        return row

    async def authenticate(self, stores: Stores, authorization: str | None) -> CheckpointPrincipal:
        now = time.monotonic()
        header = authorization or ""  # "" is never accepted: parse_authorization refuses it
        accepted = self._accepted.get(header)
        if accepted is not None and accepted[0] > now:
            return accepted[1]
        checkpoint_id, secret = parse_authorization(authorization)
        row = await self._row(stores, checkpoint_id, now)
        if row.principal is None or not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
            raise _refused("unknown checkpoint, wrong secret, or the checkpoint is disabled")
        if len(self._accepted) >= CACHE_MAX:
            self._accepted.clear()
        self._accepted[header] = (row.expires, row.principal)
        return row.principal


# One per process.
CREDENTIALS = CredentialCache()


async def authenticate(stores: Stores, authorization: str | None) -> CheckpointPrincipal:
    """The checkpoint named by an Authorization header; Unauthorized (401) otherwise."""
    return await CREDENTIALS.authenticate(stores, authorization)
