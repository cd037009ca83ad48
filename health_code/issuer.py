"""Our provincial root CA and document-signer certificates, made for the key store's keys.

The private keys live in the key store (core.keys) under two purposes: `pass-root` (the root CA: it
certifies signers and signs our trust list) and `pass-signer` (signs passes and venue codes). The
certificates are kept in pass_certificates, one live certificate per key.

- The root certificate is made (self-signed, ROOT_DAYS) on first use. Do not rotate `pass-root`: verifiers
  hold the root certificate as their trust anchor.
- The active signer key gets a certificate on first use, valid health_pass_signer_days, within the root's.
  A certificate with less than a pass lifetime left is renewed for the same key on use.
- `rotate_signer` (`tongban health signer rotate`) issues a new certificate for the key store's next
  signer key and promotes that key. The old certificate is retired but stays in the published trust list
  until its last pass has expired (trusted_until: a pass lifetime, plus the key cache, after retirement);
  a pass's exp never passes its signer's notAfter (certs.max_exp).

`pass_signer(stores)` is what issuance calls: the active key with its certificate, cached per process.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import msgspec
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from core import clock, keys
from core.db import connection, transaction
from core.stores import Stores
from health_code import certs, repository
from health_code.certs import HEALTH, VENUE

log = structlog.get_logger(__name__)

PURPOSE_ROOT = "pass-root"
PURPOSE_SIGNER = "pass-signer"
ROLE_ROOT = "root"
ROLE_SIGNER = "signer"
ROOT_DAYS = 3650
# Certificates start this far in the past: a verifier whose clock is behind still takes them.
BACKDATE = timedelta(minutes=10)
# What our signers may sign: health passes, and the venue codes of the checkpoint service.
SIGNER_PASS_TYPES: tuple[str, ...] = (HEALTH, VENUE)
# Slack on top of a pass lifetime and the key cache before a retired signer leaves the trust list.
RETIRED_SLACK_SECONDS = 300.0


class CertificateInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What `tongban health signer list` shows about one certificate (no private material)."""

    kid: str  # the certificate's kid (base64), what passes carry
    role: str
    key_kid: str  # the key store's kid of its key
    province: str
    pass_types: list[str]
    not_before: datetime
    not_after: datetime
    status: str
    trusted_until: datetime | None
    retired_at: datetime | None


class SignerRotation(msgspec.Struct, frozen=True, kw_only=True):
    retired: list[CertificateInfo]
    issued: CertificateInfo


@dataclass(frozen=True, slots=True)
class PassSigner:
    """The key that signs passes now, with its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    kid: bytes  # the certificate's kid
    kid_b64: str
    key_kid: str
    # Past this (unix seconds) the certificate is due for renewal: look again.
    renew_at: float


def _info(row: asyncpg.Record) -> CertificateInfo:
    return CertificateInfo(
        kid=kid_text(bytes(row["kid8"])),
        role=row["role"],
        key_kid=row["key_kid"],
        province=row["province"],
        pass_types=list(row["pass_types"]),
        not_before=row["not_before"],
        not_after=row["not_after"],
        status=row["status"],
        trusted_until=row["trusted_until"],
        retired_at=row["retired_at"],
    )


def kid_text(kid: bytes) -> str:
    """A certificate kid as passes and trust lists show it (standard base64)."""
    return base64.b64encode(kid).decode("ascii")


def _retired_trust_seconds(stores: Stores) -> float:
    settings = stores.settings
    return settings.health_pass_ttl_seconds + settings.key_cache_seconds + RETIRED_SLACK_SECONDS


# --- the root --------------------------------------------------------------------------------------------

# Per process: the root by key kid (the root's key never rotates in normal operation).
_roots: dict[str, x509.Certificate] = {}


async def root(stores: Stores) -> tuple[keys.Signer, x509.Certificate]:
    """The root key and its certificate, made on first use."""
    signer = await keys.active_signer(stores, PURPOSE_ROOT)
    cert = _roots.get(signer.kid)
    if cert is not None:
        return signer, cert
    async with transaction(stores.pool, stores.settings) as conn:
        row = await repository.live_certificate(conn, ROLE_ROOT, signer.kid)
        if row is None:
            await repository.lock_named(conn, repository.ISSUANCE_LOCK)
            row = await repository.live_certificate(conn, ROLE_ROOT, signer.kid)
        if row is None:
            province = stores.settings.health_pass_province
            start = clock.now() - BACKDATE
            made = certs.make_root_certificate(
                signer.private_key,
                common_name=f"{province} health pass root",
                province=province,
                not_before=start,
                not_after=start + timedelta(days=ROOT_DAYS),
            )
            row = await repository.insert_certificate(
                conn,
                kid8=certs.certificate_kid(made),
                role=ROLE_ROOT,
                key_kid=signer.kid,
                province=province,
                der=certs.certificate_der(made),
                pass_types=[],
                not_before=made.not_valid_before_utc,
                not_after=made.not_valid_after_utc,
            )
            log.info("pass.root_issued", kid=kid_text(certs.certificate_kid(made)), key_kid=signer.kid)
    cert = x509.load_der_x509_certificate(bytes(row["der"]))
    _roots[signer.kid] = cert
    return signer, cert


# --- signers ---------------------------------------------------------------------------------------------

_signers: dict[str, PassSigner] = {}


def forget() -> None:
    """Drop this process's cached certificates (tests; after a rotation in this process)."""
    _roots.clear()
    _signers.clear()


def _renewal_room(stores: Stores) -> float:
    """Seconds before its notAfter a signer certificate is renewed: a pass lifetime with its refresh
    margin, or half a certificate's validity when that is shorter (a new one must not need renewing)."""
    settings = stores.settings
    return min(
        settings.health_pass_ttl_seconds + settings.health_pass_refresh_seconds,
        settings.health_pass_signer_days * 86400 / 2,
    )


def _usable(row: asyncpg.Record | None, stores: Stores) -> bool:
    """A live certificate that need not be renewed yet."""
    if row is None:
        return False
    not_after: datetime = row["not_after"]
    return not_after > clock.now() + timedelta(seconds=_renewal_room(stores))


def _pass_signer(signer: keys.Signer, row: asyncpg.Record, stores: Stores) -> PassSigner:
    cert = x509.load_der_x509_certificate(bytes(row["der"]))
    kid = certs.certificate_kid(cert)
    return PassSigner(
        key=signer.private_key,
        cert=cert,
        kid=kid,
        kid_b64=kid_text(kid),
        key_kid=signer.kid,
        renew_at=cert.not_valid_after_utc.timestamp() - _renewal_room(stores),
    )


async def _issue_signer(
    conn: asyncpg.Connection,
    stores: Stores,
    key_kid: str,
    public_key: ec.EllipticCurvePublicKey,
    issuing_root: tuple[keys.Signer, x509.Certificate],
) -> asyncpg.Record:
    """A new signer certificate for a key (in the caller's transaction, under the issuance lock; the root
    is got before taking it, as root() may take it itself)."""
    root_signer, root_cert = issuing_root
    settings = stores.settings
    start = clock.now() - BACKDATE
    end = min(start + timedelta(days=settings.health_pass_signer_days), root_cert.not_valid_after_utc)
    made = certs.make_signer_certificate(
        public_key,
        root_key=root_signer.private_key,
        root_cert=root_cert,
        common_name=f"{settings.health_pass_province} health pass signer {key_kid[:8]}",
        province=settings.health_pass_province,
        pass_types=SIGNER_PASS_TYPES,
        not_before=max(start, root_cert.not_valid_before_utc),
        not_after=end,
    )
    row = await repository.insert_certificate(
        conn,
        kid8=certs.certificate_kid(made),
        role=ROLE_SIGNER,
        key_kid=key_kid,
        province=settings.health_pass_province,
        der=certs.certificate_der(made),
        pass_types=SIGNER_PASS_TYPES,
        not_before=made.not_valid_before_utc,
        not_after=made.not_valid_after_utc,
    )
    await repository.bump_trust_generation(conn)  # every process reloads what it trusts
    log.info("pass.signer_issued", kid=kid_text(certs.certificate_kid(made)), key_kid=key_kid)
    return row


async def _renew_for_key(
    conn: asyncpg.Connection,
    stores: Stores,
    signer: keys.Signer,
    issuing_root: tuple[keys.Signer, x509.Certificate],
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """Under the issuance lock: the key's usable certificate (issued when missing or running out), and the
    other signer certificates it retires."""
    row = await repository.live_certificate(conn, ROLE_SIGNER, signer.kid)
    if not _usable(row, stores):
        if row is not None:  # running out: retired like any other below, still trusted until not_after
            await repository.retire_certificate(conn, bytes(row["kid8"]))
        row = await _issue_signer(conn, stores, signer.kid, signer.private_key.public_key(), issuing_root)
    retired = await repository.retire_certificates(
        conn, ROLE_SIGNER, keep_key_kid=signer.kid, trusted_for=_retired_trust_seconds(stores)
    )
    return row, retired


async def _active_in_store(stores: Stores, key_kid: str) -> bool:
    """Whether `key_kid` is the signer key the key store itself (not this process's cache) has active."""
    return any(
        info.kid == key_kid and info.status == "active"
        for info in await keys.list_keys(stores, PURPOSE_SIGNER)
    )


async def pass_signer(stores: Stores) -> PassSigner:
    """The signer key in force with its certificate (cached per process; the key follows the key store's
    cache, key_cache_seconds). The certificate is made or renewed here when needed."""
    signer = await keys.active_signer(stores, PURPOSE_SIGNER)
    cached = _signers.get(signer.kid)
    if cached is not None and time.time() < cached.renew_at:
        return cached
    async with connection(stores.pool, stores.settings) as conn:
        row = await repository.live_certificate(conn, ROLE_SIGNER, signer.kid)
    if not _usable(row, stores):
        if not await _active_in_store(stores, signer.kid):
            # This process's key cache is behind a rotation: take the key in force, never re-certify an old one.
            keys.clear_cache(stores, PURPOSE_SIGNER)
            signer = await keys.active_signer(stores, PURPOSE_SIGNER)
        issuing_root = await root(stores)
        async with transaction(stores.pool, stores.settings) as conn:
            await repository.lock_named(conn, repository.ISSUANCE_LOCK)
            row, _ = await _renew_for_key(conn, stores, signer, issuing_root)
    assert row is not None
    made = _pass_signer(signer, row, stores)
    _signers[signer.kid] = made
    return made


async def ensure_certificates(stores: Stores) -> PassSigner:
    """The root and the active signer's certificates exist (for the demo, `tongban health signer list`)."""
    await root(stores)
    return await pass_signer(stores)


async def rotate_signer(stores: Stores) -> SignerRotation:
    """Issue a certificate for the key store's next signer key, promote that key (keys.rotate), and retire
    the other signer certificates, which stay trusted until their passes have expired."""
    await ensure_certificates(stores)
    await keys.ensure_keys(stores, PURPOSE_SIGNER)
    next_kid = next(
        info.kid for info in await keys.list_keys(stores, PURPOSE_SIGNER) if info.status == "next"
    )
    public_key = await keys.public_key(stores, PURPOSE_SIGNER, next_kid)
    if public_key is None:
        raise keys.KeyStoreError(f"signing key {next_kid} ({PURPOSE_SIGNER}): no public key")
    issuing_root = await root(stores)
    async with transaction(stores.pool, stores.settings) as conn:
        await repository.lock_named(conn, repository.ISSUANCE_LOCK)
        issued = await repository.live_certificate(conn, ROLE_SIGNER, next_kid)
        if not _usable(issued, stores):
            issued = await _issue_signer(conn, stores, next_kid, public_key, issuing_root)
    assert issued is not None
    rotation = await keys.rotate(stores, PURPOSE_SIGNER)
    if rotation.activated.kid != next_kid:  # someone rotated in between: certify what is active now
        forget()
        made = await pass_signer(stores)
        issued_kid = made.key_kid
    else:
        issued_kid = next_kid
    async with transaction(stores.pool, stores.settings) as conn:
        await repository.lock_named(conn, repository.ISSUANCE_LOCK)
        retired = await repository.retire_certificates(
            conn, ROLE_SIGNER, keep_key_kid=issued_kid, trusted_for=_retired_trust_seconds(stores)
        )
        issued = await repository.live_certificate(conn, ROLE_SIGNER, issued_kid)
        await repository.bump_trust_generation(conn)
    assert issued is not None
    forget()
    log.info("pass.signer_rotated", issued=kid_text(bytes(issued["kid8"])), retired=len(retired))
    return SignerRotation(retired=[_info(row) for row in retired], issued=_info(issued))


async def certificate_list(stores: Stores) -> list[CertificateInfo]:
    """Every certificate we made, roots first, newest first."""
    async with connection(stores.pool, stores.settings) as conn:
        return [_info(row) for row in await repository.certificates(conn)]


async def trusted_signer_certificates(conn: asyncpg.Connection) -> list[tuple[x509.Certificate, str]]:
    """(certificate, province) of our signers verifiers should trust now (active, and retired ones whose
    passes may still be valid)."""
    return [
        (x509.load_der_x509_certificate(bytes(row["der"])), row["province"])
        for row in await repository.trusted_signers(conn)
    ]
