"""Device keys: the P-256 key a phone holds (in its platform key store) and signs every code with.

The phone registers the public half in the form its platform exports (X9.62 uncompressed or compressed
point, or DER SubjectPublicKeyInfo); we keep the 65-byte uncompressed point, which authorisations certify.
An account has at most settings.onecode_max_devices active keys. "Lost phone" revokes the key and every
authorisation made for it at once: their code ids go into the revocation list terminals download
(onecode.authorisations), and online resolves refuse them from that moment. A revoked key never comes back:
the phone makes a new one.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec
import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core import ids
from core.db import connection, transaction
from core.errors import Conflict, InvalidInput, NotFound
from core.stores import Stores
from miniapps import inbox
from onecode import codec, repository

log = structlog.get_logger(__name__)

LOST_PHONE = "lost_phone"
INBOX_SOURCE = "onecode"
# The forms of a device key registration takes (what phones export); we keep the first.
_KEY_FORMS = (
    "a P-256 public key: the 65-byte X9.62 uncompressed point (04 || X || Y), the 33-byte compressed point"
    " (02 or 03 || X) or a DER SubjectPublicKeyInfo"
)
_COMPRESSED_BYTES = 33
_MIN_KEY_CHARS = 44  # the compressed point: 33 bytes, 44 characters
MAX_KEY_CHARS = 160  # SubjectPublicKeyInfo of an uncompressed point: 91 bytes, 124 characters


class DeviceView(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    public_key: str  # base64 of the 65-byte uncompressed point, whatever form was registered
    registered_at: datetime


class LostPhone(msgspec.Struct, frozen=True, kw_only=True):
    """What a lost-phone report revoked: the device keys, and how many authorisations went with them."""

    revoked_devices: list[UUID]
    revoked_authorisations: int


def decode_public_key(text: str) -> bytes:
    """The device key in the form the authorisation carries (the 65-byte uncompressed point, 04 || X || Y),
    from base64 (standard or URL-safe, padded or not) of any of the forms phones export: that 65-byte point
    (iOS SecKeyCopyExternalRepresentation), the 33-byte compressed point, or a DER SubjectPublicKeyInfo
    (Android/Java getEncoded()). The key must be P-256 and its point on the curve; InvalidInput naming
    `public_key` otherwise."""
    if not isinstance(text, str) or not _MIN_KEY_CHARS <= len(text.strip()) <= MAX_KEY_CHARS:
        raise InvalidInput(f"public_key: base64 of {_KEY_FORMS}", field="public_key")
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        raw = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"public_key: not base64; send base64 of {_KEY_FORMS}", field="public_key"
        ) from None
    key = _p256_key(raw)
    if key is None:
        raise InvalidInput(
            f"public_key: not a P-256 key with its point on the curve; send base64 of {_KEY_FORMS}",
            field="public_key",
        )
    return codec.device_point(key)


def _p256_key(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    """The P-256 public key in one of the accepted forms, or None."""
    if len(raw) == codec.DEVICE_KEY_BYTES and raw[0] == codec.UNCOMPRESSED:
        try:
            return codec.device_public_key(raw)
        except codec.BadDeviceKey:
            return None
    if len(raw) == _COMPRESSED_BYTES and raw[0] in (2, 3):
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            return None
    if raw[:1] != b"\x30":  # a DER SEQUENCE
        return None
    try:
        key = serialization.load_der_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    # The point ends the structure and must be in one of the forms above (OpenSSL takes the hybrid one too).
    compressed = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    if not raw.endswith(codec.device_point(key)) and not raw.endswith(compressed):
        return None
    return key


def view(row: asyncpg.Record) -> DeviceView:
    return DeviceView(
        id=row["id"],
        public_key=base64.b64encode(bytes(row["public_key"])).decode("ascii"),
        registered_at=row["registered_at"],
    )


async def register(stores: Stores, account_id: UUID, public_key: str) -> tuple[DeviceView, bool]:
    """Register the phone's key; (the device, True when new). The same key again from the same account is
    the same device."""
    raw = decode_public_key(public_key)
    settings = stores.settings
    async with transaction(stores.pool, settings) as conn:
        await repository.lock_account(conn, account_id)
        existing = await repository.active_device_by_key(conn, raw)
        if existing is not None:
            if existing["account_id"] == account_id:
                return view(existing), False
            raise Conflict(
                "public_key: this key is registered to another account",
                field="public_key",
                code="device_key_taken",
            )
        if await repository.key_was_revoked(conn, raw):
            raise Conflict(
                "public_key: this key was revoked; make a new one",
                field="public_key",
                code="device_key_revoked",
            )
        if await repository.count_active_devices(conn, account_id) >= settings.onecode_max_devices:
            raise Conflict(
                f"at most {settings.onecode_max_devices} device keys: report the old phone lost first",
                code="too_many_devices",
            )
        try:
            row = await repository.insert_device(conn, ids.new_id(), account_id, raw)
        except asyncpg.UniqueViolationError:  # registered by another account a moment ago
            raise Conflict(
                "public_key: this key is registered to another account",
                field="public_key",
                code="device_key_taken",
            ) from None
    log.info("onecode.device_registered", device_id=str(row["id"]))
    return view(row), True


async def devices(stores: Stores, account_id: UUID) -> list[DeviceView]:
    async with connection(stores.pool, stores.settings) as conn:
        return [view(row) for row in await repository.devices_of(conn, account_id)]


async def active_device(conn: asyncpg.Connection, account_id: UUID, device_id: UUID) -> asyncpg.Record:
    """The account's active device, or NotFound naming `device_id`."""
    row = await repository.device_of(conn, account_id, device_id)
    if row is None or row["status"] != "active":
        raise NotFound(
            "device_id: no active device key of yours with this id",
            field="device_id",
            code="device_not_found",
        )
    return row


async def lost_phone(stores: Stores, account_id: UUID, device_id: UUID | None = None) -> LostPhone:
    """Revoke one device key (or every one of the account) and every authorisation made for it, in one
    transaction; a message in the citizen's inbox says so. Reporting again revokes nothing more."""
    async with transaction(stores.pool, stores.settings) as conn:
        await repository.lock_account(conn, account_id)
        if device_id is not None:
            await active_device(conn, account_id, device_id)
        revoked = await repository.revoke_devices(
            conn, account_id, None if device_id is None else [device_id], LOST_PHONE
        )
        code_ids = await repository.revoke_device_authorisations(conn, revoked, LOST_PHONE) if revoked else []
        if revoked:
            await inbox.deliver(
                conn,
                account_id,
                title="一码通：设备已挂失",
                body=(
                    f"已停用 {len(revoked)} 台设备的乘车、医保和付款码，停用即时生效，离线闸机在下次更新名单时生效。"
                    "如非本人操作，请立即联系客服。"
                ),
                source=INBOX_SOURCE,
            )
    log.info("onecode.lost_phone", devices=len(revoked), authorisations=len(code_ids))
    return LostPhone(revoked_devices=revoked, revoked_authorisations=len(code_ids))


ACCOUNT_ERASED = "account_erased"


async def forget_account(conn: asyncpg.Connection, account_id: UUID) -> int:
    """For account erasure, inside its transaction: every device key and authorisation revoked (validators
    learn the code ids with their next bundle) and every link ended, a medical reference with it. Returns
    how many authorisations were revoked. The ledger keeps its postings (accounting records), tied to an
    account that no longer holds a phone, a name or an ID number."""
    await repository.lock_account(conn, account_id)
    revoked = await repository.revoke_devices(conn, account_id, None, ACCOUNT_ERASED)
    code_ids = await repository.revoke_device_authorisations(conn, revoked, ACCOUNT_ERASED) if revoked else []
    for link in await repository.active_links(conn, account_id):
        await repository.unlink(conn, link["id"])
    return len(code_ids)
