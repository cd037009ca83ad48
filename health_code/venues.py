"""Venue codes (场所码): a citizen (L2) registers a venue and prints its static, signed QR code; visitors
scan it with the app, which records the visit as a trip (status.record_trip) at the venue's region.

A venue code is one of our passes with pass type "venue" (docs/pass-format.md): iss our province, sub and
number the venue's id, name the venue's name. It is signed by the venue signer, a key of its own in the key
store (purpose VENUE_SIGNER) whose certificate, issued by the issuer's root (health_code.issuer.root),
names the venue-code OID only: that key can sign nothing a checkpoint would take for a health pass
(a health pass it signed is `wrong_key_usage`).

The venue signer's certificates are kept in app_meta (TRUST_META_PREFIX + "venue-signer.<kid>"), because
the issuer's pass_certificates table holds the pass signers it rotates and retires together. A certificate
is made on first use and renewed once it has less than a code lifetime left, so a code is always valid
CODE_DAYS. `verify_online` is what the server checks a scanned code or pass with: the issuer's TrustStore
(trustlist.TRUST), and for a kid unknown there, the venue signers (VENUE_TRUST), each certificate until its
notAfter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Final, Literal
from uuid import UUID

import asyncpg
import msgspec
import segno
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from core import clock, db, ids, keys
from core.errors import Conflict, InvalidInput, NotFound
from core.stores import Stores
from health_code import certs, issuer, repository, status
from health_code.certs import VENUE
from health_code.rules import valid_region
from health_code.trust import TrustListError, TrustStore
from health_code.trustlist import TRUST
from health_code.verify import PassContent, Verdict, sign_pass, verify

log = structlog.get_logger(__name__)

VENUE_SIGNER: Final = "venue-signer"  # key store purpose
SIGNER_DAYS: Final = 730
CODE_DAYS: Final = 365
BACKDATE: Final = timedelta(minutes=10)
_RECORD_KIND: Final = "venue-signer."
_ISSUE_LOCK: Final = "health.venue-signer"
MAX_NAME: Final = 100
MAX_ADDRESS: Final = 200
# A process reloads the venue signers when its copy is older than this, or, at most this often, when a
# pass names a kid nobody here knows (a signer just made by another process).
RELOAD_SECONDS: Final = 60.0
UNKNOWN_KID_SECONDS: Final = 1.0
# The longest venue code text a visit takes (a code is about 330 characters).
MAX_PAYLOAD: Final = 4296

Region = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{5}$", description="GB/T 2260 region code")]
VenueStatus = Literal["active", "suspended"]


class VenueInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
    region: Region  # where the venue is: the county-level GB/T 2260 code, e.g. 210102
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ADDRESS)]


class Venue(msgspec.Struct, kw_only=True):
    id: UUID
    name: str
    region: str
    address: str
    status: VenueStatus
    created_at: datetime


class VenueCode(msgspec.Struct, kw_only=True):
    venue: Venue
    payload: str  # the QR text ("TB1:..."); GET /v1/venues/{id}/code gives it as SVG or PNG
    expires_at: datetime


class VisitInput(msgspec.Struct, kw_only=True):
    venue_payload: str  # the scanned venue code


class Visit(msgspec.Struct, kw_only=True):
    trip_id: UUID
    venue_id: UUID
    venue_name: str
    region: str
    at: datetime


# --- the venue signer ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VenueSigner:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    key_kid: str
    renew_at: float  # unix seconds: past this the certificate has less than a code lifetime left


_signers: dict[str, VenueSigner] = {}


def forget() -> None:
    """Drop this process's cached venue signer (tests)."""
    _signers.clear()


def _records_of(rows: list[asyncpg.Record]) -> list[dict[str, str]]:
    found = []
    for row in rows:
        try:
            found.append(json.loads(row["value"]))
        except ValueError:
            log.error("venues.bad_signer_record", key=row["key"])
    return found


async def trusted_venue_signers(conn: asyncpg.Connection, at: datetime) -> list[tuple[bytes, str]]:
    """(certificate DER, province) of every venue signer certificate still valid at `at`."""
    found = []
    for record in _records_of(await repository.trust_records(conn, _RECORD_KIND)):
        if datetime.fromisoformat(record["not_after"]) > at:
            found.append((base64.b64decode(record["der"]), record["province"]))
    return found


def _usable(record: dict[str, str], key_kid: str, now: datetime) -> bool:
    return record["key_kid"] == key_kid and datetime.fromisoformat(record["not_after"]) > now + timedelta(
        days=CODE_DAYS
    )


async def _issue(stores: Stores, key: keys.Signer) -> dict[str, str]:
    """A certificate for the venue key, made under the issuer's root (unless another process just did)."""
    root_signer, root_cert = await issuer.root(stores)
    province = stores.settings.health_pass_province
    async with db.transaction(stores.pool, stores.settings) as conn:
        await repository.lock_named(conn, _ISSUE_LOCK)
        now = clock.now()
        for record in _records_of(await repository.trust_records(conn, _RECORD_KIND)):
            if _usable(record, key.kid, now):
                return record
        start = max(now - BACKDATE, root_cert.not_valid_before_utc)
        cert = certs.make_signer_certificate(
            key.private_key.public_key(),
            root_key=root_signer.private_key,
            root_cert=root_cert,
            common_name=f"{province} venue code signer {key.kid[:8]}",
            province=province,
            pass_types=[VENUE],
            not_before=start,
            not_after=min(start + timedelta(days=SIGNER_DAYS), root_cert.not_valid_after_utc),
        )
        record = {
            "der": base64.b64encode(certs.certificate_der(cert)).decode(),
            "province": province,
            "key_kid": key.kid,
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
        await repository.put_trust_record(
            conn, _RECORD_KIND + certs.certificate_kid(cert).hex(), json.dumps(record)
        )
    log.info("venues.signer_issued", key_kid=key.kid)
    VENUE_TRUST.stale = True
    return record


async def venue_signer(stores: Stores) -> VenueSigner:
    """The venue key in force with a certificate that outlives a code, cached per process."""
    key = await keys.active_signer(stores, VENUE_SIGNER)
    cached = _signers.get(key.kid)
    if cached is not None and time.time() < cached.renew_at:
        return cached
    async with db.connection(stores.pool, stores.settings) as conn:
        records = _records_of(await repository.trust_records(conn, _RECORD_KIND))
    now = clock.now()
    usable = [record for record in records if _usable(record, key.kid, now)]
    record = max(usable, key=lambda r: r["not_after"]) if usable else await _issue(stores, key)
    cert = x509.load_der_x509_certificate(base64.b64decode(record["der"]))
    made = VenueSigner(
        key=key.private_key,
        cert=cert,
        key_kid=key.kid,
        renew_at=cert.not_valid_after_utc.timestamp() - CODE_DAYS * 86400,
    )
    _signers[key.kid] = made
    return made


class VenueTrust:
    """This process's TrustStore of venue signers: rebuilt and swapped whole, never changed in place."""

    def __init__(self) -> None:
        self.store = TrustStore()
        self.loaded_at = float("-inf")
        self.stale = False
        self._lock = asyncio.Lock()

    async def current(self, stores: Stores, *, unknown_kid: bool = False) -> TrustStore:
        """The store, reloaded when old, marked stale, or asked for an unknown kid (at most once per
        UNKNOWN_KID_SECONDS). With PostgreSQL away, the one it has."""
        age = time.monotonic() - self.loaded_at
        if not (self.stale or age > RELOAD_SECONDS or (unknown_kid and age >= UNKNOWN_KID_SECONDS)):
            return self.store
        async with self._lock:
            if not self.stale and time.monotonic() - self.loaded_at < min(age, UNKNOWN_KID_SECONDS):
                return self.store  # reloaded while this one waited
            try:
                async with db.connection(stores.pool, stores.settings) as conn:
                    signers = await trusted_venue_signers(conn, clock.now())
            except Exception as exc:
                if self.loaded_at == float("-inf"):
                    raise
                log.warning("venues.trust_reload_failed", exc_type=type(exc).__name__)
                return self.store
            store = TrustStore()
            for der, province in signers:
                try:
                    store.add_certificate(x509.load_der_x509_certificate(der), region=province)
                except (ValueError, TrustListError):
                    log.error("venues.bad_signer_certificate")
            self.store, self.loaded_at, self.stale = store, time.monotonic(), False
            return store


# One per process.
VENUE_TRUST = VenueTrust()


class _IssuerReload:
    """Reloads of the issuer's TrustStore (trustlist.TRUST) for unknown kids: at most one per
    UNKNOWN_KID_SECONDS per process; requests arriving meanwhile wait for it rather than refuse the pass.
    (Its watcher reloads it too, within health_pass_poll_seconds of a new signer: this closes that gap.)"""

    def __init__(self) -> None:
        self.at = float("-inf")
        self.done: asyncio.Event | None = None  # set when the reload in progress ends

    async def store(self, stores: Stores) -> TrustStore:
        if self.done is not None and not self.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), timeout=2.0)
            return TRUST.store
        if time.monotonic() - self.at < UNKNOWN_KID_SECONDS:
            return TRUST.store
        self.at, done = time.monotonic(), asyncio.Event()
        self.done = done
        try:
            return await TRUST.reload(stores)
        except Exception as exc:  # PostgreSQL away: verify with what this process has
            log.warning("venues.issuer_trust_reload_failed", exc_type=type(exc).__name__)
            return TRUST.store
        finally:
            done.set()


_ISSUER_RELOAD = _IssuerReload()


async def verify_online(stores: Stores, payload: str, at: datetime) -> Verdict:
    """verify() against everything the server trusts: the issuer's TrustStore (our pass signers, imported
    trust, revocations current within health_pass_poll_seconds), then, for a kid unknown there, the venue
    signers. A kid unknown to both reloads both (rate-limited) and tries once more: a signer made a moment
    ago by another process is trusted at once. Never raises for any payload (a store outage on first use is
    StoreUnavailable)."""
    verdict = verify(payload, await TRUST.current(stores), at)
    if verdict.reason != "unknown_kid":
        return verdict
    venue_verdict = verify(payload, await VENUE_TRUST.current(stores, unknown_kid=True), at)
    if venue_verdict.reason != "unknown_kid":
        return venue_verdict
    return verify(payload, await _ISSUER_RELOAD.store(stores), at)


# --- venues ----------------------------------------------------------------------------------------------


def _clean(value: str, what: str, most: int) -> str:
    value = " ".join(value.split())
    if not value or len(value) > most or not value.isprintable():
        raise InvalidInput(f"{what}: 1 to {most} printable characters", field=what)
    return value


def _venue(row: asyncpg.Record) -> Venue:
    return Venue(
        id=row["id"],
        name=row["name"],
        region=row["region"],
        address=row["address"],
        status=row["status"],
        created_at=row["created_at"],
    )


async def sign_code(stores: Stores, venue: Venue) -> VenueCode:
    """A fresh venue code (any number of them may be valid at once: each is a signed copy)."""
    signer = await venue_signer(stores)
    now = clock.now()
    exp = certs.max_exp(signer.cert, now + timedelta(days=CODE_DAYS))
    payload = sign_pass(
        PassContent(
            iss=stores.settings.health_pass_province,
            sub=str(venue.id),
            iat=now,
            exp=exp,
            name=venue.name,
            number=str(venue.id),
            pass_type="venue",  # noqa: S106 (a pass type, not a password)
        ),
        key=signer.key,
        cert=signer.cert,
    )
    return VenueCode(venue=venue, payload=payload, expires_at=exp)


async def register_venue(stores: Stores, owner: UUID, data: VenueInput) -> VenueCode:
    """Register a venue of `owner` (an L2 citizen: the route's guard) and sign its first code."""
    if not valid_region(data.region):
        raise InvalidInput("region: a 6-digit GB/T 2260 region code", field="region")
    name = _clean(data.name, "name", MAX_NAME)
    address = _clean(data.address, "address", MAX_ADDRESS)
    async with db.connection(stores.pool, stores.settings) as conn:
        row = await repository.insert_venue(conn, ids.new_id(), owner, name, data.region, address)
    return await sign_code(stores, _venue(row))


async def venues_of(stores: Stores, owner: UUID) -> list[Venue]:
    async with db.connection(stores.pool, stores.settings) as conn:
        return [_venue(row) for row in await repository.venues_of_owner(conn, owner)]


async def own_venue(stores: Stores, owner: UUID, venue_id: UUID) -> Venue:
    """The owner's venue; NotFound for anyone else's (whether it exists is not told)."""
    async with db.connection(stores.pool, stores.settings) as conn:
        row = await repository.venue(conn, venue_id)
    if row is None or row["owner_account"] != owner:
        raise NotFound("no such venue", field="venue_id", code="venue_not_found")
    return _venue(row)


async def set_status(stores: Stores, venue_id: UUID, status_: VenueStatus) -> Venue:
    """Suspend a venue (its codes stop recording visits) or make it active again (ops)."""
    if status_ not in ("active", "suspended"):
        raise InvalidInput("status: active or suspended", field="status")
    async with db.connection(stores.pool, stores.settings) as conn:
        row = await repository.set_venue_status(conn, venue_id, status_)
    if row is None:
        raise NotFound("no such venue", field="venue_id", code="venue_not_found")
    return _venue(row)


def qr_image(payload: str, kind: Literal["svg", "png"], *, scale: int = 4) -> bytes:
    """The code as a QR image: alphanumeric mode (every character of a pass is in that set), error
    correction M, the standard 4-module quiet zone."""
    code = segno.make(payload, error="m", mode="alphanumeric", micro=False, boost_error=False)
    out = io.BytesIO()
    code.save(out, kind=kind, scale=scale, border=4)
    return out.getvalue()


# --- visits ----------------------------------------------------------------------------------------------


def _refused(reason: str) -> InvalidInput:
    return InvalidInput(
        f"venue_payload: not a valid venue code ({reason})", field="venue_payload", code="invalid_venue_code"
    )


async def record_visit(stores: Stores, account_id: UUID, payload: str) -> Visit:
    """Check a scanned venue code (against the server's trust, like a checkpoint scan) and record the visit
    as a trip at the venue's region; status.record_trip schedules the recompute when that matters."""
    if len(payload) > MAX_PAYLOAD + 2:
        raise _refused("too_large")
    now = clock.now()
    verdict = await verify_online(stores, payload, now)
    claims = verdict.claims
    if not verdict.valid or claims is None:
        raise _refused(verdict.reason)
    if claims.format != "tongban" or claims.pass_type != VENUE or claims.sub is None:
        raise InvalidInput(
            "venue_payload: this is not a venue code", field="venue_payload", code="not_a_venue_code"
        )
    try:
        venue_id = UUID(claims.sub)
    except ValueError:
        raise NotFound("no such venue", field="venue_payload", code="venue_not_found") from None
    async with db.connection(stores.pool, stores.settings) as conn:
        row = await repository.venue(conn, venue_id)
        if row is None:
            raise NotFound("no such venue", field="venue_payload", code="venue_not_found")
        if row["status"] != "active":
            raise Conflict("this venue is suspended", field="venue_payload", code="venue_suspended")
        trip_id = await status.record_trip(conn, account_id, row["region"], venue_id, now)
    return Visit(trip_id=trip_id, venue_id=venue_id, venue_name=row["name"], region=row["region"], at=now)
