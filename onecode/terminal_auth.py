"""Terminal request signing: bus validators, hospital counters and shop POS sign every request with HMAC.

A terminal holds an id and a secret of 256 random bits (shown once, as 64 hex digits, when it is
registered). Every request carries

    X-Terminal-Id: <terminal id>
    X-Timestamp:   <unix seconds>
    X-Nonce:       <16-64 characters of [A-Za-z0-9_-], new for every request>
    X-Signature:   <lowercase hex HMAC-SHA256(secret, canonical)>

    canonical = METHOD "\\n" path-with-query "\\n" sha256hex(body) "\\n" timestamp "\\n" nonce

The pure helpers (canonical, sign, signed_headers) need no server: terminals, the validator CLI, the tests,
the bench and the docs example use them. The server side (authenticate) refuses, each with a 401 and its
own code: a missing or malformed header, an unknown or disabled terminal, or a wrong signature
(terminal_unauthorized); a timestamp more than onecode_terminal_skew_seconds away from the server's clock
(terminal_clock_skew); a nonce this terminal used before (terminal_nonce_replayed, refused atomically across
processes with Redis SET NX EX).

The server must compute HMACs, so it keeps the secret itself, not a hash: encrypted under the master key
(AES-256-GCM, the AAD binding the terminal id; see core.keys.wrap_private_key). Resolves are a hot path, so
a terminal's row (its decrypted secret, kind and status) is cached in the process for
onecode_terminal_cache_seconds, and so is a failed look-up; disabling a terminal reaches every process within
that time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from typing import Final, Literal
from uuid import UUID

import msgspec

from core import db
from core import redis as redis_mod
from core.errors import Forbidden, Unauthorized
from core.keys import KeyStoreError, unwrap_private_key, wrap_private_key
from core.masterkey import master_keyring
from core.pipelined_redis import pipelined
from core.settings import Settings, SettingsError
from core.stores import Stores

TerminalKind = Literal["validator", "counter", "pos"]
KINDS: Final[tuple[TerminalKind, ...]] = ("validator", "counter", "pos")

HEADER_ID: Final = "X-Terminal-Id"
HEADER_TIMESTAMP: Final = "X-Timestamp"
HEADER_NONCE: Final = "X-Nonce"
HEADER_SIGNATURE: Final = "X-Signature"
# Looked up in lower case: Litestar's Headers match any case; a plain dict must use these keys.
_ID, _TIMESTAMP, _NONCE, _SIGNATURE = (
    h.lower() for h in (HEADER_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
)

SECRET_BYTES: Final = 32
NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SIGNATURE_RE: Final = re.compile(r"[0-9a-f]{64}")
_SECRET_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
# Cached terminal rows at most (each ~200 bytes); the cache starts over when full.
CACHE_MAX: Final = 100_000
# The wrapping AAD's purpose and algorithm (see core.keys._aad): a terminal secret can never be taken for a
# signing key, nor the other way round.
_WRAP_PURPOSE: Final = "onecode-terminal"
_WRAP_ALG: Final = "HMAC-SHA256"

UNAUTHORIZED: Final = "terminal_unauthorized"
CLOCK_SKEW: Final = "terminal_clock_skew"
NONCE_REPLAYED: Final = "terminal_nonce_replayed"
KIND_NOT_ALLOWED: Final = "terminal_kind_not_allowed"


# --- the pure helpers ----------------------------------------------------------------------------------


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def secret_text(secret: bytes) -> str:
    """How a secret is shown and typed: 64 lowercase hex digits (openssl's `-macopt hexkey:` takes it)."""
    return secret.hex()


def parse_secret(secret: bytes | str) -> bytes:
    """The 32 secret bytes from their 64 hex digits (bytes are taken as they are). ValueError otherwise."""
    if isinstance(secret, bytes):
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a terminal secret is {SECRET_BYTES} bytes")
        return secret
    text = secret.strip()
    if not _SECRET_RE.fullmatch(text):
        raise ValueError("a terminal secret is 64 hex digits")
    return bytes.fromhex(text)


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical(method: str, path: str, body: bytes, timestamp: int | str, nonce: str) -> bytes:
    """The signed text: METHOD, path with query, SHA-256 of the body (hex), timestamp and nonce, one per line.
    `path` is exactly what the request line carries (e.g. "/v1/terminals/bundle")."""
    return "\n".join((method.upper(), path, body_hash(body), str(timestamp), nonce)).encode()


def sign(secret: bytes | str, method: str, path: str, body: bytes, timestamp: int | str, nonce: str) -> str:
    """X-Signature: lowercase hex HMAC-SHA256 of canonical(...) under the terminal's secret."""
    key = parse_secret(secret)
    return hmac.new(key, canonical(method, path, body, timestamp, nonce), hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return secrets.token_urlsafe(18)  # 24 characters of [A-Za-z0-9_-]


def signed_headers(
    terminal_id: UUID | str,
    secret: bytes | str,
    method: str,
    path: str,
    body: bytes = b"",
    now: float | None = None,
) -> dict[str, str]:
    """The four headers of one signed request (a fresh nonce each call)."""
    timestamp = int(time.time() if now is None else now)
    nonce = new_nonce()
    return {
        HEADER_ID: str(terminal_id),
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: sign(secret, method, path, body, timestamp, nonce),
    }


# --- storing the secret ------------------------------------------------------------------------------------


def seal_secret(settings: Settings, terminal_id: UUID, secret: bytes) -> tuple[bytes, str]:
    """(ciphertext, master key id): the secret under the current master key, bound to this terminal."""
    ring = master_keyring(settings)
    blob = wrap_private_key(ring.current, secret, kid=str(terminal_id), purpose=_WRAP_PURPOSE, alg=_WRAP_ALG)
    return blob, ring.current_id


def open_secret(settings: Settings, terminal_id: UUID, blob: bytes, master_key_id: str) -> bytes:
    """The secret back (SettingsError when its master key is not in the keyring, KeyStoreError if altered)."""
    ring = master_keyring(settings)
    if master_key_id not in ring.keys:
        raise SettingsError(
            f"TONGBAN_MASTER_KEY: terminal {terminal_id}'s secret is wrapped under master key {master_key_id},"
            " which is not in the keyring"
        )
    return unwrap_private_key(
        ring.keys[master_key_id],
        bytes(blob),
        kid=str(terminal_id),
        purpose=_WRAP_PURPOSE,
        alg=_WRAP_ALG,
        master_key_id=master_key_id,
    )


# --- authenticating requests ---------------------------------------------------------------------------


class TerminalPrincipal(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The terminal a request authenticated as."""

    id: UUID
    kind: TerminalKind
    name: str
    owner: str
    # A hospital counter's medical-institution code (定点医药机构编码), sent with ec.query.
    org_code: str | None = None


class _Row(msgspec.Struct, frozen=True, gc=False):
    expires: float
    principal: TerminalPrincipal | None  # None: no such terminal, or disabled
    secret: bytes


def _refused(detail: str, code: str = UNAUTHORIZED) -> Unauthorized:
    return Unauthorized(detail, code=code)


class TerminalCache:
    """The terminals this process read lately (found or not), with their decrypted secrets."""

    def __init__(self) -> None:
        self._rows: dict[UUID, _Row] = {}

    def forget(self, terminal_id: UUID | None = None) -> None:
        if terminal_id is None:
            self._rows.clear()
        else:
            self._rows.pop(terminal_id, None)

    async def row(self, stores: Stores, terminal_id: UUID, now: float) -> _Row:
        cached = self._rows.get(terminal_id)
        if cached is not None and cached.expires > now:
            return cached
        from onecode import repository  # imported here: the pure helpers above run on terminals too

        settings = stores.settings
        async with db.connection(stores.pool, settings) as conn:
            record = await repository.terminal_credentials(conn, terminal_id)
        expires = now + settings.onecode_terminal_cache_seconds
        if record is None or record["status"] != "active":
            row = _Row(expires, None, b"")
        else:
            try:
                secret = open_secret(settings, terminal_id, record["secret_enc"], record["master_key_id"])
            except (KeyStoreError, SettingsError):
                # An altered row or a missing master key: this terminal cannot be checked; it is refused
                # (the operator sees the reason in the logs of `tongban terminals list`).
                row = _Row(expires, None, b"")
            else:
                principal = TerminalPrincipal(
                    id=record["id"],
                    kind=record["kind"],
                    name=record["name"],
                    owner=record["owner"],
                    org_code=record["org_code"],
                )
                row = _Row(expires, principal, secret)
        if len(self._rows) >= CACHE_MAX:
            self._rows.clear()
        self._rows[terminal_id] = row
        return row


# One per process.
TERMINALS = TerminalCache()


def nonce_key(terminal_id: UUID, nonce: str) -> str:
    return redis_mod.key("onecode:nonce", str(terminal_id), nonce)


async def authenticate(
    stores: Stores,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],  # case-insensitive (Litestar's Headers), or lower-case keys
    body: bytes,
    kinds: frozenset[str] | None = None,
    now: float | None = None,
) -> TerminalPrincipal:
    """The terminal that signed this request; Unauthorized (401, see the module doc for the codes)
    otherwise, Forbidden (403 terminal_kind_not_allowed) when its kind may not call the route. The nonce is
    spent only by a request whose signature is right."""
    settings = stores.settings
    ident = headers.get(_ID)
    stamp = headers.get(_TIMESTAMP)
    nonce = headers.get(_NONCE)
    signature = headers.get(_SIGNATURE)
    if not (ident and stamp and nonce and signature):
        raise _refused("a signed terminal request needs X-Terminal-Id, X-Timestamp, X-Nonce and X-Signature")
    try:
        terminal_id = UUID(ident)
    except ValueError:
        raise _refused("X-Terminal-Id: not a terminal id") from None
    if not stamp.isdigit() or len(stamp) > 12:
        raise _refused("X-Timestamp: unix seconds")
    if not NONCE_RE.fullmatch(nonce):
        raise _refused("X-Nonce: 16 to 64 characters of A-Z a-z 0-9 _ -")
    if not _SIGNATURE_RE.fullmatch(signature):
        raise _refused("X-Signature: 64 lowercase hex digits")
    moment = time.time() if now is None else now
    skew = settings.onecode_terminal_skew_seconds
    if abs(int(stamp) - moment) > skew:
        raise _refused(f"X-Timestamp: more than {skew} s away from the server's clock", CLOCK_SKEW)
    row = await TERMINALS.row(stores, terminal_id, time.monotonic())
    expected = (
        hmac.new(row.secret, canonical(method, path, body, stamp, nonce), hashlib.sha256).hexdigest()
        if row.principal is not None
        else ""
    )
    # One answer for all three, so that a caller learns nothing about which terminals exist.
    if row.principal is None or not hmac.compare_digest(expected, signature):
        raise _refused("unknown terminal, wrong signature, or the terminal is disabled")
    if kinds is not None and row.principal.kind not in kinds:
        raise Forbidden(
            f"a {row.principal.kind} terminal may not call this route ({' or '.join(sorted(kinds))} only)",
            code=KIND_NOT_ALLOWED,
        )
    # SET NX on the process's pipelined connection: atomic across processes, one write per loop tick.
    async with redis_mod.guarded(settings):
        fresh = await pipelined(stores.redis).execute(
            "SET", nonce_key(terminal_id, nonce), b"1", "NX", "EX", 2 * skew + 1
        )
    if fresh is None:
        raise _refused("X-Nonce: this terminal used the nonce before", NONCE_REPLAYED)
    return row.principal
