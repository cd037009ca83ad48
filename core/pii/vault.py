"""The PII vault: envelope encryption of personal data, blind indexes for equality lookups, and a log row
for every decrypt.

Keys live in pii_keys, wrapped under the master key: 'data' keys (one active per cipher) encrypt values,
'index' keys (one active per HMAC) key the blind index. A process opens one Vault at start-up
(`await open_vault(stores)`) and keeps it; unwrapped data keys are cached for pii_key_cache_seconds, so a
decrypt costs PostgreSQL only its access-log insert.

Row ids enter the AAD as str(row_id): pass the same table and column names, and the same row id, to encrypt,
decrypt and reencrypt_batch.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec

from core import db
from core.masterkey import master_keyring
from core.pii import cipher as c
from core.pii.masking import normalize_text
from core.settings import Settings, SettingsError
from core.stores import Stores

RowId = str | int | UUID
# Larger values are sealed in a worker thread: SM4-GCM runs at ~100 MB/s, so this is ~1 ms of CPU.
OFFLOAD_BYTES: Final = 64 * 1024
# pg_advisory_xact_lock id that serialises key creation, rotation and rewrapping across processes.
KEYS_LOCK_ID: Final = 7_370_203_712
REENCRYPT_ACTOR: Final = "system:pii-reencrypt"
REENCRYPT_REASON: Final = "re-encrypt under the active data key"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT4_MAX: Final = 2**31 - 1
_SELECT_ACTIVE_KEY: Final = """
    SELECT id, kind, algorithm, wrapped_key, master_key_id, status, created_at, retired_at, rewrapped_at
    FROM pii_keys WHERE kind = $1 AND algorithm = $2 AND status = 'active'
"""
_SELECT_DATA_KEY: Final = """
    SELECT id, kind, algorithm, wrapped_key, master_key_id, status, created_at, retired_at, rewrapped_at
    FROM pii_keys WHERE id = $1 AND kind = 'data'
"""
_SELECT_ALL_KEYS: Final = """
    SELECT id, kind, algorithm, wrapped_key, master_key_id, status, created_at, retired_at, rewrapped_at
    FROM pii_keys ORDER BY id
"""
_INSERT_KEY: Final = """
    INSERT INTO pii_keys (id, kind, algorithm, wrapped_key, master_key_id, status)
    VALUES ($1, $2, $3, $4, $5, 'active')
    RETURNING id, kind, algorithm, wrapped_key, master_key_id, status, created_at, retired_at, rewrapped_at
"""
_INSERT_LOG: Final = """
    INSERT INTO pii_access_log (actor, reason, table_name, column_name, row_id, key_id, succeeded)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


class PiiError(Exception):
    """A vault key is missing, does not unwrap, or the vault was used wrongly."""


class PiiDecryptError(PiiError):
    """Tampered bytes, a value moved to another row or column, or a key that is gone. Says no more."""


class PiiKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    kind: str
    algorithm: str
    master_key_id: str
    wrapped_with: str
    status: str
    created_at: datetime
    retired_at: datetime | None
    rewrapped_at: datetime | None


class EnvelopeInfo(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    algorithm: str
    key_id: int


class AccessLogEntry(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    at: datetime
    actor: str
    reason: str
    table_name: str
    column_name: str
    row_id: str
    key_id: int | None
    succeeded: bool


class RewrapResult(msgspec.Struct, frozen=True, kw_only=True):
    master_key_id: str
    rewrapped: int
    unchanged: int


class ReencryptBatch(msgspec.Struct, frozen=True, kw_only=True):
    scanned: int
    reencrypted: int
    failed: int
    # Pass back as `after` for the next batch; the id column's own type (int, UUID, str).
    last_row_id: Any
    done: bool


@dataclass(frozen=True, slots=True)
class _DataKey:
    id: int
    algorithm: c.CipherName
    material: bytes


def index_hash_for(settings: Settings) -> c.IndexHash:
    if settings.pii_blind_index != "auto":
        return settings.pii_blind_index
    return "hmac-sm3" if settings.pii_cipher == "sm4-gcm" else "hmac-sha256"


def describe(blob: bytes) -> EnvelopeInfo:
    """Header of a vault value (no key needed); PiiDecryptError if the bytes are not one."""
    try:
        algorithm, key_id, _, _, _ = c.parse_envelope(bytes(blob))
    except c.CipherError:
        raise PiiDecryptError("not a vault value") from None
    return EnvelopeInfo(version=c.FORMAT_VERSION, algorithm=algorithm, key_id=key_id)


def _require_text(value: str, what: str) -> str:
    # NUL cannot be stored in a PostgreSQL text column, so it could not reach the access log either.
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise PiiError(f"{what} is required (non-blank text without NUL)")
    return value


def _row_text(row_id: RowId) -> str:
    return _require_text(str(row_id), "row_id")


async def _off_loop(size: int, work: Callable[[], bytes]) -> bytes:
    return await asyncio.to_thread(work) if size > OFFLOAD_BYTES else work()


_live_vaults: weakref.WeakSet[Vault] = weakref.WeakSet()


class Vault:
    """Encrypt, decrypt (logged) and blind-index personal data. Make it with open_vault(stores)."""

    def __init__(self, settings: Settings, *, index_key_id: int, index_key: bytes) -> None:
        self.settings = settings
        self.cipher: c.CipherName = settings.pii_cipher
        self.index_hash: c.IndexHash = index_hash_for(settings)
        self.index_key_id = index_key_id
        self._index_key = index_key
        self._cache_seconds = settings.pii_key_cache_seconds
        self._keys: dict[int, tuple[_DataKey, float]] = {}
        self._active: tuple[int, float] | None = None
        self._purpose_keys: dict[str, bytes] = {}
        _live_vaults.add(self)

    def forget_keys(self) -> None:
        """Drop cached data keys: the next call reads pii_keys again (rotate_data_key calls this)."""
        self._keys.clear()
        self._active = None

    async def encrypt(
        self, conn: asyncpg.Connection, value: str, *, table: str, column: str, row_id: RowId
    ) -> bytes:
        """`value` under the active data key, bound to (table, column, row_id)."""
        key = await self._active_key(conn)
        return await self._seal(
            key,
            value.encode(),
            _require_text(table, "table"),
            _require_text(column, "column"),
            _row_text(row_id),
        )

    async def decrypt(
        self,
        conn: asyncpg.Connection,
        blob: bytes,
        *,
        table: str,
        column: str,
        row_id: RowId,
        actor: str,
        reason: str,
    ) -> str:
        """The plaintext, after writing one pii_access_log row (also for a failed attempt).

        The row goes through `conn`, so it commits or rolls back with the caller's transaction; the plaintext
        is returned only once the row is written."""
        for text, what in ((actor, "actor"), (reason, "reason"), (table, "table"), (column, "column")):
            _require_text(text, what)
        row_text = _row_text(row_id)
        key_id, plaintext = await self._open(conn, blob, table, column, row_text)
        await conn.execute(_INSERT_LOG, actor, reason, table, column, row_text, key_id, plaintext is not None)
        if plaintext is None:
            raise PiiDecryptError(f"cannot decrypt {table}.{column} of row {row_text}")
        return plaintext.decode()

    async def reencrypt(
        self,
        conn: asyncpg.Connection,
        blob: bytes,
        *,
        table: str,
        column: str,
        row_id: RowId,
        actor: str = REENCRYPT_ACTOR,
        reason: str = REENCRYPT_REASON,
    ) -> bytes | None:
        """The value under the active data key, or None when it already is (then nothing is decrypted)."""
        key = await self._active_key(conn)
        if bytes(blob[: c.HEADER.size]) == c.envelope_header(key.algorithm, key.id):
            return None
        value = await self.decrypt(
            conn, blob, table=table, column=column, row_id=row_id, actor=actor, reason=reason
        )
        return await self._seal(key, value.encode(), table, column, _row_text(row_id))

    def blind_index(
        self, value: str, *, purpose: str, normalize: Callable[[str], str] = normalize_text
    ) -> bytes:
        """HMAC of the normalised value under the index key and a per-purpose sub-key (32 bytes).

        Use one purpose per column (e.g. "accounts.id_number") and the same normaliser for writes and lookups."""
        subkey = self._purpose_keys.get(purpose)
        if subkey is None:
            subkey = c.purpose_key(self.index_hash, self._index_key, _require_text(purpose, "purpose"))
            self._purpose_keys[purpose] = subkey
        return c.blind_index(self.index_hash, subkey, normalize(value))

    # --- internals -------------------------------------------------------------------------------------

    async def _seal(self, key: _DataKey, plaintext: bytes, table: str, column: str, row_id: str) -> bytes:
        header = c.envelope_header(key.algorithm, key.id)
        nonce = os.urandom(c.NONCE_SIZE)  # random 96-bit nonces: fine far below 2^32 values per key
        aad = c.value_aad(header, table, column, row_id)
        sealed = await _off_loop(
            len(plaintext), lambda: c.seal(key.algorithm, key.material, nonce, plaintext, aad)
        )
        return header + nonce + sealed

    async def _open(
        self, conn: asyncpg.Connection, blob: bytes, table: str, column: str, row_id: str
    ) -> tuple[int | None, bytes | None]:
        """(key id if the key exists, plaintext or None). Never raises for bad bytes."""
        try:
            algorithm, key_id, header, nonce, sealed = c.parse_envelope(bytes(blob))
        except c.CipherError:
            return None, None
        key = await self._key_by_id(conn, key_id)
        if key is None:
            return None, None
        if key.algorithm != algorithm:
            return key.id, None
        aad = c.value_aad(header, table, column, row_id)
        try:
            plaintext = await _off_loop(
                len(sealed), lambda: c.unseal(algorithm, key.material, nonce, sealed, aad)
            )
        except c.CipherError:
            return key.id, None
        return key.id, plaintext

    async def _active_key(self, conn: asyncpg.Connection) -> _DataKey:
        if self._active is not None and self._active[1] > time.monotonic():
            cached = self._keys.get(self._active[0])
            if cached is not None:
                return cached[0]
        row = await conn.fetchrow(_SELECT_ACTIVE_KEY, "data", self.cipher)
        if row is None:
            # Keys are made only in their own transaction (open_vault, rotate_data_key), never in a caller's
            # one that could roll back after a value was sealed under them.
            raise PiiError(f"no active {self.cipher} data key: open_vault() makes one")
        key = self._remember(row)
        self._active = (key.id, time.monotonic() + self._cache_seconds)
        return key

    async def _key_by_id(self, conn: asyncpg.Connection, key_id: int) -> _DataKey | None:
        cached = self._keys.get(key_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        if key_id > _INT4_MAX:
            return None
        row = await conn.fetchrow(_SELECT_DATA_KEY, key_id)
        return None if row is None else self._remember(row)

    def _remember(self, row: asyncpg.Record) -> _DataKey:
        algorithm = row["algorithm"]
        if algorithm not in c.CIPHER_CODES:
            raise PiiError(f"PII key {row['id']} is not a data key")
        key = _DataKey(id=int(row["id"]), algorithm=algorithm, material=_unwrap_row(self.settings, row))
        if self._cache_seconds > 0:
            self._keys[key.id] = (key, time.monotonic() + self._cache_seconds)
        return key


# --- keys -----------------------------------------------------------------------------------------------


def _check_supported(settings: Settings) -> None:
    if (settings.pii_cipher == "sm4-gcm" or index_hash_for(settings) == "hmac-sm3") and not c.sm_supported():
        raise SettingsError("TONGBAN_PII_CIPHER: this OpenSSL build has no SM4-GCM / SM3; choose aes-256-gcm")


def _unwrap_row(settings: Settings, row: asyncpg.Record) -> bytes:
    master_key_id = str(row["master_key_id"])
    master_key = master_keyring(settings).get(master_key_id)
    try:
        return c.unwrap_key(
            master_key,
            master_key_id,
            key_id=int(row["id"]),
            kind=str(row["kind"]),
            algorithm=str(row["algorithm"]),
            wrapped=bytes(row["wrapped_key"]),
        )
    except c.CipherError:
        raise PiiError(f"PII key {row['id']} does not unwrap under master key {master_key_id}") from None


def _key_info(row: asyncpg.Record) -> PiiKeyInfo:
    try:
        wrapped_with: str = c.wrap_cipher(bytes(row["wrapped_key"]))
    except c.CipherError:
        wrapped_with = "unknown"
    return PiiKeyInfo(
        id=int(row["id"]),
        kind=row["kind"],
        algorithm=row["algorithm"],
        master_key_id=row["master_key_id"],
        wrapped_with=wrapped_with,
        status=row["status"],
        created_at=row["created_at"],
        retired_at=row["retired_at"],
        rewrapped_at=row["rewrapped_at"],
    )


async def _insert_key(
    conn: asyncpg.Connection, settings: Settings, kind: c.KeyKind, algorithm: str
) -> asyncpg.Record:
    keyring = master_keyring(settings)
    key_id = int(await conn.fetchval("SELECT nextval(pg_get_serial_sequence('pii_keys', 'id'))"))
    wrapped = c.wrap_key(
        settings.pii_cipher,
        keyring.current,
        keyring.current_id,
        key_id=key_id,
        kind=kind,
        algorithm=algorithm,
        material=c.new_key_material(algorithm),
    )
    return await conn.fetchrow(_INSERT_KEY, key_id, kind, algorithm, wrapped, keyring.current_id)


async def _ensure_active(
    conn: asyncpg.Connection, settings: Settings, kind: c.KeyKind, algorithm: str
) -> asyncpg.Record:
    row = await conn.fetchrow(_SELECT_ACTIVE_KEY, kind, algorithm)
    return row if row is not None else await _insert_key(conn, settings, kind, algorithm)


async def open_vault(stores: Stores) -> Vault:
    """The process's vault: makes the active data key and index key on first use, loads the index key."""
    settings = stores.settings
    _check_supported(settings)
    async with db.transaction(stores.pool, settings) as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", KEYS_LOCK_ID)
        await _ensure_active(conn, settings, "data", settings.pii_cipher)
        index_row = await _ensure_active(conn, settings, "index", index_hash_for(settings))
    return Vault(settings, index_key_id=int(index_row["id"]), index_key=_unwrap_row(settings, index_row))


async def rotate_data_key(stores: Stores) -> PiiKeyInfo:
    """A new active data key for the configured cipher; the old one is retired and keeps decrypting.

    Vaults in this process switch at once, other processes within pii_key_cache_seconds."""
    settings = stores.settings
    _check_supported(settings)
    async with db.transaction(stores.pool, settings) as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", KEYS_LOCK_ID)
        await conn.execute(
            """UPDATE pii_keys SET status = 'retired', retired_at = now()
               WHERE kind = 'data' AND algorithm = $1 AND status = 'active'""",
            settings.pii_cipher,
        )
        row = await _insert_key(conn, settings, "data", settings.pii_cipher)
    for vault in list(_live_vaults):
        vault.forget_keys()
    return _key_info(row)


async def rewrap(stores: Stores) -> RewrapResult:
    """Re-wrap every key not yet under the current master key (and configured cipher); values are untouched.

    Run after putting a new master key first in the keyring (the old one still listed); then the old one may
    be dropped. All or nothing: a key whose master key is not in the keyring stops the whole run."""
    settings = stores.settings
    keyring = master_keyring(settings)
    rewrapped = 0
    async with db.transaction(stores.pool, settings) as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", KEYS_LOCK_ID)
        rows = await conn.fetch(_SELECT_ALL_KEYS)  # the advisory lock keeps other key changes out
        for row in rows:
            if (
                row["master_key_id"] == keyring.current_id
                and _key_info(row).wrapped_with == settings.pii_cipher
            ):
                continue
            material = _unwrap_row(settings, row)
            wrapped = c.wrap_key(
                settings.pii_cipher,
                keyring.current,
                keyring.current_id,
                key_id=int(row["id"]),
                kind=row["kind"],
                algorithm=row["algorithm"],
                material=material,
            )
            await conn.execute(
                """UPDATE pii_keys SET wrapped_key = $2, master_key_id = $3, rewrapped_at = now()
                   WHERE id = $1""",
                row["id"],
                wrapped,
                keyring.current_id,
            )
            rewrapped += 1
    return RewrapResult(
        master_key_id=keyring.current_id, rewrapped=rewrapped, unchanged=len(rows) - rewrapped
    )


async def list_keys(conn: asyncpg.Connection) -> list[PiiKeyInfo]:
    return [_key_info(row) for row in await conn.fetch(_SELECT_ALL_KEYS)]


# --- re-encryption --------------------------------------------------------------------------------------


def _quote(name: str) -> str:
    parts = name.split(".")
    if not all(_IDENTIFIER.match(part) for part in parts):
        raise PiiError(f"not a plain SQL identifier: {name!r}")
    return ".".join(f'"{part}"' for part in parts)


async def reencrypt_batch(
    stores: Stores,
    vault: Vault,
    *,
    table: str,
    column: str,
    id_column: str = "id",
    after: Any = None,
    limit: int = 500,
    actor: str = REENCRYPT_ACTOR,
    reason: str = REENCRYPT_REASON,
) -> ReencryptBatch:
    """Re-encrypt up to `limit` values of table.column not under the active data key, in one transaction.

    A job calls it with after=previous.last_row_id until done. Each decrypt is logged (one row per value);
    a value that does not decrypt is left as it is and counted as failed."""
    _require_text(actor, "actor")
    _require_text(reason, "reason")
    table_sql, column_sql, id_sql = _quote(table), _quote(column), _quote(id_column)
    async with db.transaction(stores.pool, stores.settings) as conn:
        active = await vault._active_key(conn)
        after_sql = f"AND {id_sql} > $3" if after is not None else ""
        rows = await conn.fetch(
            # Identifiers are checked and quoted by _quote; values are parameters.
            f"""SELECT {id_sql} AS row_id, {column_sql} AS blob FROM {table_sql}
                WHERE {column_sql} IS NOT NULL AND substring({column_sql} FROM 1 FOR {c.HEADER.size}) <> $1
                {after_sql} ORDER BY {id_sql} LIMIT $2 FOR UPDATE""",  # noqa: S608
            c.envelope_header(active.algorithm, active.id),
            limit,
            *([after] if after is not None else []),
        )
        updates: list[tuple[Any, bytes]] = []
        logged: list[tuple[str, int | None, bool]] = []
        for row in rows:
            row_text = str(row["row_id"])
            key_id, plaintext = await vault._open(conn, row["blob"], table, column, row_text)
            logged.append((row_text, key_id, plaintext is not None))
            if plaintext is not None:
                updates.append((row["row_id"], await vault._seal(active, plaintext, table, column, row_text)))
        if logged:
            await conn.execute(
                """INSERT INTO pii_access_log (actor, reason, table_name, column_name, row_id, key_id, succeeded)
                   SELECT $1, $2, $3, $4, r, k, s FROM unnest($5::text[], $6::int[], $7::bool[]) AS x(r, k, s)""",
                actor,
                reason,
                table,
                column,
                [r for r, _, _ in logged],
                [k for _, k, _ in logged],
                [s for _, _, s in logged],
            )
        if updates:
            await conn.executemany(
                f"UPDATE {table_sql} SET {column_sql} = $2 WHERE {id_sql} = $1",  # noqa: S608
                updates,
            )
    return ReencryptBatch(
        scanned=len(rows),
        reencrypted=len(updates),
        failed=len(rows) - len(updates),
        last_row_id=rows[-1]["row_id"] if rows else after,
        done=len(rows) < limit,
    )


# --- access log -----------------------------------------------------------------------------------------


async def access_log(
    conn: asyncpg.Connection, *, since: datetime | None = None, actor: str | None = None, limit: int = 100
) -> list[AccessLogEntry]:
    """Newest first."""
    rows = await conn.fetch(
        """SELECT id, at, actor, reason, table_name, column_name, row_id, key_id, succeeded
           FROM pii_access_log
           WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::text IS NULL OR actor = $2)
           ORDER BY at DESC, id DESC LIMIT $3""",
        since,
        actor,
        limit,
    )
    return [AccessLogEntry(**dict(row)) for row in rows]
