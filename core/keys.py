"""The signing key store: ES256 keys per purpose with status next -> active -> retired.

Private keys are kept encrypted (AES-256-GCM under the current master key, the AAD binding kid, purpose and
algorithm). Each purpose has one active key (signs) and one next key (already published, so verifiers know
it before it is promoted). Retired keys stay published for `key_retired_publish_days` so tokens signed
before a rotation keep verifying. Hot paths read a per-process snapshot that expires after
`key_cache_seconds`, so a rotation reaches every worker without a restart and a request does not touch
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg
import jwt
import msgspec
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core import db
from core.errors import InvalidInput, StoreUnavailable
from core.masterkey import MasterKeyring, master_keyring
from core.settings import Settings, SettingsError
from core.stores import Stores

log = structlog.get_logger(__name__)

ALG = "ES256"
Status = Literal["next", "active", "retired"]

# Purposes in use; a purpose is any short lowercase name, these are the ones the capabilities share.
TOKEN = "token"  # noqa: S105 (a purpose name, not a secret)

_PURPOSE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# An RFC 7638 SHA-256 thumbprint is 43 base64url characters: anything else is rejected without a query.
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_WRAP_V1 = b"\x01"  # blob format: version byte, 12-byte nonce, AES-256-GCM ciphertext with tag
_NONCE_BYTES = 12
_COORD_BYTES = 32  # P-256 coordinates and scalar


class KeyStoreError(Exception):
    """A stored signing key cannot be used (altered or moved row, mismatched material). One line."""


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What may be shown about a key: never private material."""

    kid: str
    purpose: str
    alg: str
    status: Status
    master_key_id: str
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None


class Rotation(msgspec.Struct, frozen=True, kw_only=True):
    purpose: str
    retired: KeyInfo | None  # the key that was active
    activated: KeyInfo  # the key that was next (or a new one when there was none)
    next: KeyInfo  # the new next key
    created_from_empty: bool = False  # the purpose had no keys: this made its first pair


class Rewrap(msgspec.Struct, frozen=True, kw_only=True):
    total: int  # keys in the store
    rewrapped: int  # keys moved to the current master key
    master_key_id: str  # the current master key


# ---------------------------------------------------------------------------------------------------------
# Key material: generation, JWK, thumbprint, wrapping.


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwk_thumbprint(required_members: Mapping[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, no whitespace; base64url."""
    canonical = msgspec.json.encode(dict(sorted(required_members.items())))
    return b64url(hashlib.sha256(canonical).digest())


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The RFC 7517 JWK of a P-256 public key with its thumbprint as kid."""
    numbers = public_key.public_numbers()
    members = {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(_COORD_BYTES, "big")),
        "y": b64url(numbers.y.to_bytes(_COORD_BYTES, "big")),
    }
    return {**members, "kid": jwk_thumbprint(members), "use": "sig", "alg": ALG}


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise KeyStoreError(f"signing key {jwk.get('kid')}: not a P-256 key")
    x = int.from_bytes(b64url_decode(str(jwk["x"])), "big")
    y = int.from_bytes(b64url_decode(str(jwk["y"])), "big")
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def _aad(kid: str, purpose: str, alg: str) -> bytes:
    # NUL-separated: neither purpose nor kid can contain NUL, so no two triples give the same bytes.
    return b"\x00".join((b"tongban:signing-key:v1", purpose.encode(), kid.encode(), alg.encode()))


def wrap_private_key(master_key: bytes, der: bytes, *, kid: str, purpose: str, alg: str = ALG) -> bytes:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return _WRAP_V1 + nonce + AESGCM(master_key).encrypt(nonce, der, _aad(kid, purpose, alg))


def unwrap_private_key(
    master_key: bytes, blob: bytes, *, kid: str, purpose: str, alg: str = ALG, master_key_id: str = "?"
) -> bytes:
    if blob[:1] != _WRAP_V1 or len(blob) < 1 + _NONCE_BYTES + 16:
        raise KeyStoreError(f"signing key {kid} ({purpose}): unknown wrapping format")
    nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
    try:
        return AESGCM(master_key).decrypt(nonce, sealed, _aad(kid, purpose, alg))
    except InvalidTag:
        raise KeyStoreError(
            f"signing key {kid} ({purpose}): does not decrypt under master key {master_key_id}"
            " (the row was altered or its ciphertext belongs to another key)"
        ) from None


@dataclass(frozen=True, slots=True)
class NewKey:
    kid: str
    jwk: dict[str, str]
    der: bytes = field(repr=False)


def generate_key() -> NewKey:
    private_key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(private_key.public_key())
    der = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return NewKey(kid=jwk["kid"], jwk=jwk, der=der)


def _load_private(
    ring: MasterKeyring,
    *,
    kid: str,
    purpose: str,
    alg: str,
    blob: bytes,
    master_key_id: str,
    jwk: Mapping[str, Any],
) -> ec.EllipticCurvePrivateKey:
    if master_key_id not in ring.keys:
        raise SettingsError(
            f"TONGBAN_MASTER_KEY: signing key {kid} ({purpose}) is wrapped under master key {master_key_id},"
            " which is not in the keyring (list the old key after the current one, comma-separated)"
        )
    der = unwrap_private_key(
        ring.keys[master_key_id], blob, kid=kid, purpose=purpose, alg=alg, master_key_id=master_key_id
    )
    private_key = serialization.load_der_private_key(der, password=None)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or public_jwk(private_key.public_key())[
        "kid"
    ] != jwk.get("kid", kid):
        raise KeyStoreError(f"signing key {kid} ({purpose}): private key does not match its public key")
    return private_key


# ---------------------------------------------------------------------------------------------------------
# Signing and verifying.


@dataclass(frozen=True, slots=True)
class Signer:
    """The active key of a purpose. Hand `private_key` (or `pyjwt_key()`) to pyjwt with `jwt_headers()`."""

    kid: str
    purpose: str
    alg: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    def pyjwt_key(self) -> ec.EllipticCurvePrivateKey:
        return self.private_key

    def jwt_headers(self) -> dict[str, str]:
        return {"kid": self.kid}

    def sign_jwt(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        return jwt.encode(
            dict(claims), self.private_key, algorithm=self.alg, headers={**(headers or {}), "kid": self.kid}
        )

    def sign_raw(self, data: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 as JWS and COSE want it: r || s, 32 bytes each."""
        r, s = decode_dss_signature(self.private_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(_COORD_BYTES, "big") + s.to_bytes(_COORD_BYTES, "big")


def verify_raw(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    if len(signature) != 2 * _COORD_BYTES:
        return False
    r = int.from_bytes(signature[:_COORD_BYTES], "big")
    s = int.from_bytes(signature[_COORD_BYTES:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except Exception:  # cryptography raises InvalidSignature; anything else is just as invalid
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# The per-process cache: one snapshot per purpose, refreshed by one coroutine at a time.


@dataclass(slots=True)
class _Snapshot:
    signer: Signer | None
    public: dict[str, ec.EllipticCurvePublicKey]
    jwks_keys: list[dict[str, str]]
    jwks_json: bytes
    fetched_at: float
    expires_at: float


@dataclass(slots=True)
class _Cache:
    pool: asyncpg.Pool  # held so that id(pool) cannot be reused by another pool while this cache lives
    snapshots: dict[str, _Snapshot] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock(self, purpose: str) -> asyncio.Lock:
        return self.locks.setdefault(purpose, asyncio.Lock())


# Keyed by pool: a process has one pool, so this is the process's cache (tests with their own pool get theirs).
_caches: dict[int, _Cache] = {}


def _cache_for(stores: Stores) -> _Cache:
    cache = _caches.get(id(stores.pool))
    if cache is None or cache.pool is not stores.pool:
        cache = _caches[id(stores.pool)] = _Cache(pool=stores.pool)
    return cache


def clear_cache(stores: Stores, purpose: str | None = None) -> None:
    """Forget this process's cached keys (all purposes, or one); the next use reloads them."""
    cache = _cache_for(stores)
    if purpose is None:
        cache.snapshots.clear()
    else:
        cache.snapshots.pop(purpose, None)


_PUBLISHED_SQL = """
SELECT kid, status, alg, public_jwk, master_key_id,
       CASE WHEN status = 'active' THEN private_key_enc END AS private_key_enc
FROM signing_keys
WHERE purpose = $1 AND (status <> 'retired' OR retired_at > now() - make_interval(secs => $2))
ORDER BY status = 'active' DESC, status = 'next' DESC, retired_at DESC NULLS LAST, kid
"""


async def _fetch_snapshot(stores: Stores, purpose: str, previous: _Snapshot | None) -> _Snapshot:
    settings = stores.settings
    window = settings.key_retired_publish_days * 86400.0
    async with db.connection(stores.pool, settings) as conn:
        rows = await conn.fetch(_PUBLISHED_SQL, purpose, window)
    signer: Signer | None = None
    public: dict[str, ec.EllipticCurvePublicKey] = {}
    jwks_keys: list[dict[str, str]] = []
    for row in rows:
        jwk: dict[str, str] = msgspec.json.decode(row["public_jwk"])
        public[row["kid"]] = public_key_from_jwk(jwk)
        jwks_keys.append(jwk)
        if row["status"] == "active":
            if previous is not None and previous.signer is not None and previous.signer.kid == row["kid"]:
                signer = previous.signer  # same key: no need to decrypt again
            else:
                private_key = _load_private(
                    master_keyring(settings),
                    kid=row["kid"],
                    purpose=purpose,
                    alg=row["alg"],
                    blob=row["private_key_enc"],
                    master_key_id=row["master_key_id"],
                    jwk=jwk,
                )
                signer = Signer(kid=row["kid"], purpose=purpose, alg=row["alg"], private_key=private_key)
    now = time.monotonic()
    return _Snapshot(
        signer=signer,
        public=public,
        jwks_keys=jwks_keys,
        jwks_json=msgspec.json.encode({"keys": jwks_keys}),
        fetched_at=now,
        expires_at=now + max(settings.key_cache_seconds, 0.0),
    )


async def _snapshot(stores: Stores, purpose: str, *, want_kid: str | None = None) -> _Snapshot:
    """The cached snapshot, reloaded when expired, or when `want_kid` is unknown and the last load is older
    than key_unknown_kid_seconds (so unknown kids cost at most one query per purpose per interval)."""
    cache = _cache_for(stores)
    settings = stores.settings

    def fresh_enough(snap: _Snapshot | None) -> bool:
        if snap is None:
            return False
        now = time.monotonic()
        if now >= snap.expires_at:
            return False
        if want_kid is not None and want_kid not in snap.public:
            return now - snap.fetched_at < settings.key_unknown_kid_seconds
        return True

    snap = cache.snapshots.get(purpose)
    if fresh_enough(snap):
        assert snap is not None
        return snap
    async with cache.lock(purpose):
        snap = cache.snapshots.get(purpose)  # another coroutine may have reloaded while we waited
        if fresh_enough(snap):
            assert snap is not None
            return snap
        try:
            new = await _fetch_snapshot(stores, purpose, snap)
        except StoreUnavailable:
            if snap is None:
                raise
            # Keep signing and verifying with what we have; try the database again shortly.
            log.warning("keys.cache_stale", purpose=purpose)
            now = time.monotonic()
            snap.fetched_at = now  # also holds unknown-kid reloads back for key_unknown_kid_seconds
            snap.expires_at = now + min(max(settings.key_cache_seconds, 0.0), 1.0)
            return snap
        cache.snapshots[purpose] = new
        return new


def _check_purpose(purpose: str) -> None:
    if not _PURPOSE_RE.fullmatch(purpose):
        raise InvalidInput(
            "purpose: 1-32 characters, lowercase letters, digits, '-' or '_', starting with a letter",
            field="purpose",
        )


async def active_signer(stores: Stores, purpose: str) -> Signer:
    """The purpose's active key, from the process cache; its first use makes the keys if there are none."""
    snap = await _snapshot(stores, purpose)
    if snap.signer is not None:
        return snap.signer
    _check_purpose(purpose)
    await ensure_keys(stores, purpose)
    clear_cache(stores, purpose)
    snap = await _snapshot(stores, purpose)
    if snap.signer is None:
        raise KeyStoreError(f"signing keys ({purpose}): no active key after ensure_keys")
    return snap.signer


async def public_key(stores: Stores, purpose: str, kid: str) -> ec.EllipticCurvePublicKey | None:
    """The public key for a kid if it is published for this purpose (next, active, or recently retired)."""
    if not _KID_RE.fullmatch(kid):
        return None
    snap = await _snapshot(stores, purpose, want_kid=kid)
    return snap.public.get(kid)


async def jwks(stores: Stores, purpose: str) -> dict[str, Any]:
    """RFC 7517 JWK Set of the purpose's published keys: active first, then next, then retired."""
    snap = await _snapshot(stores, purpose)
    return {"keys": [dict(k) for k in snap.jwks_keys]}


async def jwks_json(stores: Stores, purpose: str) -> bytes:
    """The same JWK Set, already encoded (for an HTTP handler to return as is)."""
    return (await _snapshot(stores, purpose)).jwks_json


async def verify_jwt(
    stores: Stores,
    purpose: str,
    token: str,
    *,
    audience: str | Sequence[str] | None = None,
    issuer: str | None = None,
    leeway: float = 0,
    require: Sequence[str] = ("exp",),
) -> dict[str, Any]:
    """Decode a JWT signed by one of the purpose's published keys. The algorithm is pinned (RFC 8725);
    a missing or unknown kid is an invalid token. Raises jwt.InvalidTokenError."""
    header = jwt.get_unverified_header(token)
    kid = header.get("kid")
    if header.get("alg") != ALG:
        raise jwt.InvalidAlgorithmError("unexpected algorithm")
    if not isinstance(kid, str):
        raise jwt.InvalidTokenError("missing kid")
    key = await public_key(stores, purpose, kid)
    if key is None:
        raise jwt.InvalidTokenError("unknown kid")
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[ALG],
        audience=audience,
        issuer=issuer,
        leeway=leeway,
        options={"require": list(require)},
    )
    return claims


# ---------------------------------------------------------------------------------------------------------
# Lifecycle: ensure, rotate, list, rewrap.


def _info(row: asyncpg.Record) -> KeyInfo:
    return KeyInfo(
        kid=row["kid"],
        purpose=row["purpose"],
        alg=row["alg"],
        status=row["status"],
        master_key_id=row["master_key_id"],
        created_at=row["created_at"],
        activated_at=row["activated_at"],
        retired_at=row["retired_at"],
    )


async def _lock_purpose(conn: asyncpg.Connection, purpose: str) -> None:
    # Serialises ensure/rotate of one purpose across every process until the transaction ends.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "tongban.signing_keys:" + purpose
    )


async def _insert_key(conn: asyncpg.Connection, settings: Settings, purpose: str, status: Status) -> KeyInfo:
    ring = master_keyring(settings)
    new = generate_key()
    blob = wrap_private_key(ring.current, new.der, kid=new.kid, purpose=purpose)
    row = await conn.fetchrow(
        """INSERT INTO signing_keys (kid, purpose, alg, status, public_jwk, private_key_enc, master_key_id,
                                      activated_at)
            VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, CASE WHEN $4 = 'active' THEN now() END)
            RETURNING kid, purpose, alg, status, master_key_id, created_at, activated_at, retired_at""",
        new.kid,
        purpose,
        ALG,
        status,
        msgspec.json.encode(new.jwk).decode(),
        blob,
        ring.current_id,
    )
    log.info("keys.created", purpose=purpose, kid=new.kid, status=status)
    return _info(row)


async def _promote(conn: asyncpg.Connection, kid: str) -> KeyInfo:
    row = await conn.fetchrow(
        """UPDATE signing_keys SET status = 'active', activated_at = now() WHERE kid = $1
            RETURNING kid, purpose, alg, status, master_key_id, created_at, activated_at, retired_at""",
        kid,
    )
    return _info(row)


async def _current_pair(conn: asyncpg.Connection, purpose: str) -> tuple[str | None, str | None]:
    rows = await conn.fetch(
        "SELECT kid, status FROM signing_keys WHERE purpose = $1 AND status IN ('active', 'next') FOR UPDATE",
        purpose,
    )
    by_status = {row["status"]: row["kid"] for row in rows}
    return by_status.get("active"), by_status.get("next")


async def _ensure_locked(conn: asyncpg.Connection, settings: Settings, purpose: str) -> list[KeyInfo]:
    active, next_kid = await _current_pair(conn, purpose)
    made: list[KeyInfo] = []
    if active is None:
        if next_kid is not None:
            # The next key is already published, so it is the better one to start signing with.
            made.append(await _promote(conn, next_kid))
            next_kid = None
        else:
            made.append(await _insert_key(conn, settings, purpose, "active"))
    if next_kid is None:
        made.append(await _insert_key(conn, settings, purpose, "next"))
    return made


async def ensure_keys(stores: Stores, purpose: str) -> list[KeyInfo]:
    """Make the purpose's active and next keys if missing; returns the keys made or promoted (usually none).
    Safe to call from many processes at once."""
    _check_purpose(purpose)
    present = await db.fetchval(
        stores.pool,
        stores.settings,
        "SELECT count(*) FROM signing_keys WHERE purpose = $1 AND status IN ('active', 'next')",
        purpose,
    )
    if present == 2:
        return []
    async with db.transaction(stores.pool, stores.settings) as conn:
        await _lock_purpose(conn, purpose)
        made = await _ensure_locked(conn, stores.settings, purpose)
    if made:
        clear_cache(stores, purpose)
    return made


async def rotate(stores: Stores, purpose: str) -> Rotation:
    """In one transaction: active -> retired, next -> active, a new next. A purpose without keys gets its
    first pair. Other processes pick the change up within key_cache_seconds."""
    _check_purpose(purpose)
    async with db.transaction(stores.pool, stores.settings) as conn:
        await _lock_purpose(conn, purpose)
        active, next_kid = await _current_pair(conn, purpose)
        if active is None and next_kid is None:
            made = await _ensure_locked(conn, stores.settings, purpose)
            result = Rotation(
                purpose=purpose, retired=None, activated=made[0], next=made[1], created_from_empty=True
            )
        else:
            retired: KeyInfo | None = None
            if active is not None:
                # Retire first: the partial unique index allows one active key per purpose.
                row = await conn.fetchrow(
                    """UPDATE signing_keys SET status = 'retired', retired_at = now() WHERE kid = $1
                        RETURNING kid, purpose, alg, status, master_key_id, created_at, activated_at, retired_at""",
                    active,
                )
                retired = _info(row)
            if next_kid is not None:
                activated = await _promote(conn, next_kid)
            else:
                activated = await _insert_key(conn, stores.settings, purpose, "active")
            new_next = await _insert_key(conn, stores.settings, purpose, "next")
            result = Rotation(purpose=purpose, retired=retired, activated=activated, next=new_next)
    clear_cache(stores, purpose)
    log.info(
        "keys.rotated",
        purpose=purpose,
        retired=result.retired.kid if result.retired else None,
        activated=result.activated.kid,
        next_kid=result.next.kid,
    )
    return result


async def list_keys(stores: Stores, purpose: str | None = None) -> list[KeyInfo]:
    """Every key (or one purpose's), oldest first; no private material."""
    async with db.connection(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            """SELECT kid, purpose, alg, status, master_key_id, created_at, activated_at, retired_at FROM signing_keys WHERE $1::text IS NULL OR purpose = $1
                ORDER BY purpose, created_at, kid""",
            purpose,
        )
    return [_info(row) for row in rows]


async def rewrap(stores: Stores, on_progress: Callable[[int, int], None] | None = None) -> Rewrap:
    """Re-encrypt every private key under the current master key (after a master key rotation). Kids and
    key material stay the same. All or nothing: one transaction, checked before anything changes."""
    ring = master_keyring(stores.settings)
    async with db.transaction(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            """SELECT kid, purpose, alg, public_jwk, private_key_enc, master_key_id FROM signing_keys
               ORDER BY created_at, kid FOR UPDATE"""
        )
        stale = [row for row in rows if row["master_key_id"] != ring.current_id]
        missing = sorted({row["master_key_id"] for row in stale} - ring.keys.keys())
        if missing:
            count = sum(1 for row in stale if row["master_key_id"] in missing)
            raise SettingsError(
                f"TONGBAN_MASTER_KEY: {count} signing key(s) are wrapped under master key {', '.join(missing)},"
                " which is not in the keyring; list the old key after the current one (comma-separated) and"
                " run the rewrap again"
            )
        if on_progress is not None:
            on_progress(0, len(stale))
        for done, row in enumerate(stale, start=1):
            jwk = msgspec.json.decode(row["public_jwk"])
            private_key = _load_private(
                ring,
                kid=row["kid"],
                purpose=row["purpose"],
                alg=row["alg"],
                blob=row["private_key_enc"],
                master_key_id=row["master_key_id"],
                jwk=jwk,
            )
            der = private_key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            blob = wrap_private_key(ring.current, der, kid=row["kid"], purpose=row["purpose"], alg=row["alg"])
            await conn.execute(
                "UPDATE signing_keys SET private_key_enc = $2, master_key_id = $3 WHERE kid = $1",
                row["kid"],
                blob,
                ring.current_id,
            )
            if on_progress is not None:
                on_progress(done, len(stale))
    log.info("keys.rewrapped", rewrapped=len(stale), total=len(rows), master_key_id=ring.current_id)
    return Rewrap(total=len(rows), rewrapped=len(stale), master_key_id=ring.current_id)
