"""Authorisations: what our issuer key (core.keys purpose "onecode") certifies about a device key, for at most
24 h (docs/onecode-format.md): the scenes the citizen linked, the per-ride cap for transit, and random
handles for medical and payment that map to the links here and name nobody.

A new one is issued when the app asks (POST /v1/onecode/authorisation) and when the links change (for every
device that holds a live one, so GET /v1/onecode shows the new scenes). An unlink also revokes the older
ones, since they still carry the removed scene; a lost phone revokes all of its device's. Revoked code ids
that a validator could still accept make the revocation list of the terminals' bundle.

The terminal side calls by_code_id, handle_target, transit_target, revoke and bundle_json.
"""

from __future__ import annotations

import base64
import math
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final
from uuid import UUID

import asyncpg
import msgspec
import structlog

from core import clock, keys
from core.db import connection, transaction
from core.errors import Conflict
from core.pii.vault import Vault
from core.ratelimit import Limiter, Window
from core.settings import Settings
from core.stores import Stores
from onecode import codec, devices, repository
from onecode.validator import Bundle

log = structlog.get_logger(__name__)

PURPOSE: Final = "onecode"
SCENE_BITS: Final = {
    "transit": codec.SCENE_TRANSIT,
    "medical": codec.SCENE_MEDICAL,
    "payment": codec.SCENE_PAYMENT,
}
# Revoked code ids stay in the list this long after their expiry: a validator accepts a code until
# expires_at plus its clock skew allowance.
REVOKED_MARGIN_SECONDS: Final = 3600.0
# The links table keeps a medical reference encrypted under these names (the AAD binds them).
LINKS_TABLE: Final = "onecode_links"
REF_COLUMN: Final = "provider_ref"
ISSUES_PER_HOUR: Final = 30
_ZERO: Final = bytes(codec.HANDLE_BYTES)


class AuthorisationView(msgspec.Struct, frozen=True, kw_only=True):
    """An authorisation as the app gets it: hand `authorisation` to onecode.client.OneCodeClient."""

    authorisation: str  # base64 of the 199 bytes
    code_id: str  # 32 hex digits
    device_id: UUID
    issued_at: datetime
    expires_at: datetime
    scenes: list[str]
    ride_cap_fen: int


class AuthorisationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What we stored about an authorisation (the terminal side looks codes up by code id)."""

    code_id: bytes
    account_id: UUID
    device_id: UUID
    device_key: bytes
    issuer_kid: bytes
    issued_at: datetime
    expires_at: datetime
    scenes: int
    ride_cap_fen: int
    transit_link_id: UUID | None
    medical_handle: bytes | None
    payment_handle: bytes | None
    status: str  # active | revoked
    revoked_at: datetime | None
    revoked_reason: str | None

    def live(self, now: datetime | None = None) -> bool:
        """Active and not expired."""
        return self.status == "active" and self.expires_at > (now or clock.now())


class LinkTarget(msgspec.Struct, frozen=True, kw_only=True):
    """The link a code resolves to: the provider reference to call the provider with."""

    code_id: bytes
    account_id: UUID
    link_id: UUID
    kind: str
    provider_ref: str  # transit account, insured-person ref (decrypted, logged) or payment token ref


def scene_names(scenes: int) -> list[str]:
    return [name for name, bit in SCENE_BITS.items() if scenes & bit]


def _record(row: asyncpg.Record) -> AuthorisationRecord:
    def optional(value: bytes | None) -> bytes | None:
        return None if value is None else bytes(value)

    return AuthorisationRecord(
        code_id=bytes(row["code_id"]),
        account_id=row["account_id"],
        device_id=row["device_id"],
        device_key=bytes(row["device_key"]),
        issuer_kid=bytes(row["issuer_kid"]),
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        scenes=row["scenes"],
        ride_cap_fen=row["ride_cap_fen"],
        transit_link_id=row["transit_link_id"],
        medical_handle=optional(row["medical_handle"]),
        payment_handle=optional(row["payment_handle"]),
        status=row["status"],
        revoked_at=row["revoked_at"],
        revoked_reason=row["revoked_reason"],
    )


def view(row: asyncpg.Record) -> AuthorisationView:
    return AuthorisationView(
        authorisation=base64.b64encode(bytes(row["signed"])).decode("ascii"),
        code_id=bytes(row["code_id"]).hex(),
        device_id=row["device_id"],
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        scenes=scene_names(row["scenes"]),
        ride_cap_fen=row["ride_cap_fen"],
    )


# --- issuing ---------------------------------------------------------------------------------------------


async def signer(stores: Stores) -> keys.Signer:
    """The issuer key (made on first use). Fetched before a transaction opens: it may touch the key store."""
    return await keys.active_signer(stores, PURPOSE)


async def _issue_locked(
    conn: asyncpg.Connection,
    issuer: keys.Signer,
    settings: Settings,
    account_id: UUID,
    device: asyncpg.Record,
    links: Sequence[asyncpg.Record],
) -> AuthorisationView:
    """Sign and store an authorisation for `device` carrying the scenes of `links` (the account is locked)."""
    by_kind = {link["kind"]: link for link in links}
    scenes = sum(SCENE_BITS[kind] for kind in by_kind)
    if not scenes:
        raise Conflict("link transit, medical insurance or payment first", code="nothing_linked")
    medical = secrets.token_bytes(codec.HANDLE_BYTES) if "medical" in by_kind else None
    payment = secrets.token_bytes(codec.HANDLE_BYTES) if "payment" in by_kind else None
    cap = settings.onecode_ride_cap_fen if "transit" in by_kind else 0
    code_id = secrets.token_bytes(codec.CODE_ID_BYTES)
    issued = math.floor(clock.now().timestamp())
    expires = issued + min(settings.onecode_authorisation_seconds, codec.MAX_VALIDITY_SECONDS)
    device_key = bytes(device["public_key"])
    signed = codec.sign_authorisation(
        issuer.private_key,
        code_id=code_id,
        device_key=device_key,
        issued_at=issued,
        expires_at=expires,
        scenes=scenes,
        ride_cap_fen=cap,
        medical_handle=medical or _ZERO,
        payment_handle=payment or _ZERO,
    )
    issued_at = datetime.fromtimestamp(issued, UTC)
    expires_at = datetime.fromtimestamp(expires, UTC)
    await repository.insert_authorisation(
        conn,
        code_id=code_id,
        account_id=account_id,
        device_id=device["id"],
        issuer_kid=codec.issuer_kid(issuer.private_key.public_key()),
        issued_at=issued_at,
        expires_at=expires_at,
        scenes=scenes,
        ride_cap_fen=cap,
        transit_link_id=by_kind["transit"]["id"] if "transit" in by_kind else None,
        medical_handle=medical,
        medical_link_id=by_kind["medical"]["id"] if medical else None,
        payment_handle=payment,
        payment_link_id=by_kind["payment"]["id"] if payment else None,
        signed=signed,
    )
    return AuthorisationView(
        authorisation=base64.b64encode(signed).decode("ascii"),
        code_id=code_id.hex(),
        device_id=device["id"],
        issued_at=issued_at,
        expires_at=expires_at,
        scenes=scene_names(scenes),
        ride_cap_fen=cap,
    )


async def issue(stores: Stores, account_id: UUID, device_id: UUID) -> AuthorisationView:
    """A new authorisation for the account's device, with the scenes linked now. The device's earlier ones
    stay valid until they expire (they certify the same key, and carry no scene the account lost: an unlink
    revokes those)."""
    settings = stores.settings
    await Limiter(stores.redis, settings).hit(
        "onecode-authorise", str(account_id), (Window("hour", ISSUES_PER_HOUR, 3600),)
    )
    issuer = await signer(stores)
    async with transaction(stores.pool, settings) as conn:
        await repository.lock_account(conn, account_id)
        device = await devices.active_device(conn, account_id, device_id)
        links = await repository.active_links(conn, account_id)
        issued = await _issue_locked(conn, issuer, settings, account_id, device, links)
    log.info("onecode.authorised", scenes=issued.scenes)
    return issued


async def reissue_locked(
    conn: asyncpg.Connection,
    issuer: keys.Signer,
    settings: Settings,
    account_id: UUID,
    *,
    revoke_reason: str | None,
) -> list[AuthorisationView]:
    """After a link change (the account is locked): a new authorisation for every device holding a live one.
    With `revoke_reason` (an unlink) the older ones are revoked; with nothing linked any more, no new ones."""
    live = await repository.live_authorisations(conn, account_id)
    device_ids = list(dict.fromkeys(row["device_id"] for row in live))
    if revoke_reason is not None and device_ids:
        await repository.revoke_device_authorisations(conn, device_ids, revoke_reason)
    links = await repository.active_links(conn, account_id)
    if not links:
        return []
    issued = []
    for device_id in device_ids:
        device = await repository.device_of(conn, account_id, device_id)
        if device is not None and device["status"] == "active":
            issued.append(await _issue_locked(conn, issuer, settings, account_id, device, links))
    return issued


async def current(conn: asyncpg.Connection, account_id: UUID) -> list[AuthorisationView]:
    """The newest live authorisation of each device, newest first."""
    newest: dict[UUID, AuthorisationView] = {}
    for row in await repository.live_authorisations(conn, account_id):
        newest.setdefault(row["device_id"], view(row))
    return list(newest.values())


class LinkSummary(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    reference: str  # masked: the last four characters only
    linked_at: datetime


class OneCodeOverview(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/onecode: what the citizen's one-code can do now."""

    scenes: list[str]  # linked now: transit, medical, payment
    authorisation: AuthorisationView | None  # the newest live one (of the device asked about)
    links: list[LinkSummary]
    devices: list[devices.DeviceView]


async def overview(stores: Stores, account_id: UUID, device_id: UUID | None = None) -> OneCodeOverview:
    async with connection(stores.pool, stores.settings) as conn:
        links = await repository.active_links(conn, account_id)
        live = await current(conn, account_id)
        device_rows = await repository.devices_of(conn, account_id)
    shown = [a for a in live if device_id is None or a.device_id == device_id]
    return OneCodeOverview(
        scenes=[kind for kind in SCENE_BITS if any(link["kind"] == kind for link in links)],
        authorisation=shown[0] if shown else None,
        links=[
            LinkSummary(kind=link["kind"], reference=link["ref_masked"], linked_at=link["linked_at"])
            for link in links
        ],
        devices=[devices.view(row) for row in device_rows],
    )


# --- the terminal side's look-ups ------------------------------------------------------------------------


async def by_code_id(conn: asyncpg.Connection, code_id: bytes) -> AuthorisationRecord | None:
    """The authorisation with this code id, whatever its status (check record.live())."""
    row = await repository.authorisation_by_code_id(conn, code_id)
    return None if row is None else _record(row)


async def _target(
    conn: asyncpg.Connection, row: asyncpg.Record, vault: Vault | None, actor: str
) -> LinkTarget:
    if row["kind"] == "medical":
        if vault is None:
            raise ValueError("a medical link's reference is encrypted: pass the vault")
        if row["provider_ref_enc"] is None:  # unlinked: the reference is gone
            raise LookupError("the medical link was removed")
        reference = await vault.decrypt(
            conn,
            bytes(row["provider_ref_enc"]),
            table=LINKS_TABLE,
            column=REF_COLUMN,
            row_id=row["link_id"],
            actor=actor,
            reason="one-code medical resolve (ec.query)",
        )
    else:
        reference = row["provider_ref"]
    return LinkTarget(
        code_id=bytes(row["code_id"]),
        account_id=row["account_id"],
        link_id=row["link_id"],
        kind=row["kind"],
        provider_ref=reference,
    )


async def handle_target(
    conn: asyncpg.Connection,
    handle: bytes,
    kind: str,
    *,
    vault: Vault | None = None,
    actor: str = "system:onecode-resolve",
    now: datetime | None = None,
) -> LinkTarget | None:
    """The link a medical or payment handle maps to, while the authorisation is live (active, unexpired) and
    the link is still active; None otherwise (unknown handle, revoked, expired, unlinked). For medical the
    reference is decrypted through `vault` (required then; one PII access-log row naming `actor`)."""
    if kind not in ("medical", "payment") or len(handle) != codec.HANDLE_BYTES or handle == _ZERO:
        return None
    row = await repository.handle_target(conn, handle, kind)
    if (
        row is None
        or row["authorisation_status"] != "active"
        or row["expires_at"] <= (now or clock.now())
        or row["link_status"] != "active"
    ):
        return None
    return await _target(conn, row, vault, actor)


async def transit_target(conn: asyncpg.Connection, code_id: bytes) -> LinkTarget | None:
    """The transit link an authorisation carried, whatever has happened since (revoked, expired, unlinked):
    a ride a validator accepted offline is charged to it when its upload settles. None when the code id is
    unknown or carried no transit."""
    row = await repository.transit_target(conn, code_id)
    return None if row is None else await _target(conn, row, None, "")


async def revoke(conn: asyncpg.Connection, code_id: bytes, reason: str) -> bool:
    """Revoke one authorisation (e.g. "replayed": its code showed up on two validators); False when it was
    not active. It is in the next bundle's revocation list."""
    revoked = await repository.revoke_authorisation(conn, code_id, reason)
    if revoked:
        log.info("onecode.authorisation_revoked", reason=reason)
    return revoked


async def revocation_list(stores: Stores) -> list[bytes]:
    """Code ids of revoked authorisations a validator could still accept (not expired, or within the margin)."""
    async with connection(stores.pool, stores.settings) as conn:
        return await repository.revoked_code_ids(conn, REVOKED_MARGIN_SECONDS)


async def bundle(stores: Stores) -> Bundle:
    """What terminals verify with: our published issuer keys of purpose "onecode" (active, next, and the
    recently retired whose authorisations may still be out there) and the revocation list."""
    await signer(stores)  # the first use makes the keys, so a fresh system publishes some
    published = await keys.jwks(stores, PURPOSE)
    public_keys = [keys.public_key_from_jwk(jwk) for jwk in published["keys"]]
    return Bundle.of(public_keys, await revocation_list(stores), clock.now())


async def bundle_json(stores: Stores) -> bytes:
    """The tongban-onecode-bundle/1 document (GET /v1/terminals/bundle, `tongban validator`)."""
    return (await bundle(stores)).to_json()
