"""Trust: the trust list we publish, the trust we import, and the TrustStore this process verifies with.

- `published_trust_list(stores)`: our signed `tongban-trust-list/1` document (GET /v1/trust-list, see
  docs/pass-format.md): our signer certificates (active ones, and retired ones whose passes may still be
  valid) and our revocation entries, signed by our root (health_code.issuer). A new version is signed at
  most every health_trust_list_seconds and kept in pass_trust_lists, so every API process serves the same
  versions.
- Revocations come from status changes: when an account's status changes (health_status.changed_at), its
  passes issued before then are revoked by the entry `<rid>.<changed_at, rounded up>` (rid of our iss and
  the account's pseudonymous subject). Entries are listed while a revoked pass could still be unexpired (a
  pass lifetime after the change), and only for subjects that held a pass before the change. Issuance
  gives a pass iat >= that time (passes.py), so the new pass verifies and the older ones do not
  (cutoff_seconds: how two changes within one second still get distinct times).
- `import_trust(stores, file, root=...)` (`tongban trust import`): another province's trust list (its root
  required: the signature is checked), the EU DCC trust list, or one signer certificate. A new import of
  the same source (the same province, the EU list, the same certificate) replaces the previous one; a
  province's list older than the one held is refused.
- `TRUST`: this process's TrustStore (ours + imported signers, ours + imported revocations) for online
  verification (checkpoint scans): `await TRUST.current(stores)`, or `TRUST.store` once loaded. The pass
  watcher (passes.PassWatcher) keeps it current: new revocations at once on a "health:status" message and
  every health_pass_poll_seconds, imports and signer changes on the next poll. To change it, a new store
  is built and the reference swapped: verify() may run on the old one meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import asyncpg
import msgspec
import structlog
from cryptography import x509

from core import clock, ids
from core.db import connection, transaction
from core.errors import Conflict, StoreUnavailable
from core.stores import Stores
from health_code import certs, issuer, repository
from health_code.trust import TrustListError, TrustStore, build_trust_list, load_trust_file, revocation_id

log = structlog.get_logger(__name__)

SourceKind = Literal["tongban", "eu_dcc", "certificate"]
EU_SOURCE = "EU"
# Published lists kept in the database (older versions are of no use to anyone).
KEEP_LISTS = 20
# How long a process serves the list it read before asking the database for a newer one.
LIST_RECHECK_SECONDS = 5.0
# Status changes are read back this far before the last poll: a recompute commits a little after the
# changed_at it writes, so a change may appear later than its time.
POLL_OVERLAP = timedelta(seconds=30)
REVOCATION_SLACK = timedelta(minutes=5)
# A process reads everything again this often even when nothing was imported or rotated.
FULL_RELOAD_SECONDS = 300.0


# --- revocation entries ------------------------------------------------------------------------------------


def cutoff_seconds(recent_changes: Sequence[datetime]) -> int:
    """The revocation time of a status version, from the times of its last changes (oldest first, the
    version's own last): passes issued (iat) before it are revoked, and the version's own passes are issued
    at or after it. Each change's time rounded up, and at least one second after the previous version's:
    pass times are whole seconds, so two changes within one second still get distinct times (a little
    ahead of the clock, well within a verifier's clock skew)."""
    cutoff = 0
    for changed_at in recent_changes:
        cutoff = max(math.ceil(changed_at.timestamp()), cutoff + 1)
    return cutoff


def revocation_window(stores: Stores) -> timedelta:
    """How long after a change its entry matters: until every pass issued before it has expired."""
    return timedelta(seconds=stores.settings.health_pass_ttl_seconds) + REVOCATION_SLACK


def revocation_entries(iss: str, rows: Iterable[asyncpg.Record]) -> dict[str, int]:
    """rid -> cutoff of the status changes of subjects that held a pass before the change."""
    entries: dict[str, int] = {}
    for row in rows:
        if row["first_issued_at"] < row["changed_at"]:
            rid = revocation_id(iss, row["sub"])
            cutoff = cutoff_seconds(row["recent_changes"] or [row["changed_at"]])
            entries[rid] = max(entries.get(rid, 0), cutoff)
    return entries


async def our_revocations(conn: asyncpg.Connection, stores: Stores) -> dict[str, int]:
    since = clock.now() - revocation_window(stores)
    return revocation_entries(
        stores.settings.health_pass_province, await repository.status_changes_since(conn, since)
    )


# --- the published list ------------------------------------------------------------------------------------


class PublishedList(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    generated_at: datetime
    document: bytes


_published: tuple[float, PublishedList] | None = None


def forget_published() -> None:
    global _published
    _published = None


async def _build(stores: Stores) -> PublishedList:
    await issuer.pass_signer(stores)  # the list names our signer even before the first pass
    root_signer, root_cert = await issuer.root(stores)  # its own transaction: before taking the lock
    settings = stores.settings
    async with transaction(stores.pool, settings) as conn:
        await repository.lock_named(conn, repository.TRUST_LIST_LOCK)
        latest = await repository.latest_trust_list(conn)
        now = clock.now()
        if latest is not None and now - latest["generated_at"] < timedelta(
            seconds=settings.health_trust_list_seconds
        ):
            return PublishedList(**dict(latest))  # another process signed one meanwhile
        version = (latest["version"] if latest is not None else 0) + 1
        revoked = await our_revocations(conn, stores)
        document = build_trust_list(
            issuer=settings.health_pass_province,
            version=version,
            generated_at=now,
            certificates=await issuer.trusted_signer_certificates(conn),
            revocations=[f"{rid}.{cutoff}" for rid, cutoff in revoked.items()],
            root_key=root_signer.private_key,
            root_cert=root_cert,
        )
        await repository.insert_trust_list(conn, version, now, document)
        await repository.prune_trust_lists(conn, KEEP_LISTS)
    log.info("pass.trust_list_published", version=version, revocations=len(revoked))
    return PublishedList(version=version, generated_at=now, document=document)


async def published_trust_list(stores: Stores) -> PublishedList:
    """The current signed trust list: the newest stored one while it is younger than
    health_trust_list_seconds, else a new version. With PostgreSQL away, the last one this process served."""
    global _published
    if _published is not None and time.monotonic() < _published[0]:
        return _published[1]
    try:
        async with connection(stores.pool, stores.settings) as conn:
            latest = await repository.latest_trust_list(conn)
        fresh = latest is not None and clock.now() - latest["generated_at"] < timedelta(
            seconds=stores.settings.health_trust_list_seconds
        )
        current = PublishedList(**dict(latest)) if fresh and latest is not None else await _build(stores)
    except StoreUnavailable:
        if _published is None:
            raise
        log.warning("pass.trust_list_stale", version=_published[1].version)
        return _published[1]
    recheck = min(LIST_RECHECK_SECONDS, stores.settings.health_trust_list_seconds)
    _published = (time.monotonic() + recheck, current)
    return current


# --- imports ---------------------------------------------------------------------------------------------


class ImportResult(msgspec.Struct, frozen=True, kw_only=True):
    kind: SourceKind
    issuer: str
    version: int | None
    signers: int
    revocations: int
    skipped: int  # EU keys left out (not P-256, unreadable)
    signature_checked: bool


def _kind_of(data: bytes) -> SourceKind:
    if data.lstrip()[:1] != b"{":
        return "certificate"
    return "eu_dcc" if b'"dsc_trust_list"' in data else "tongban"


async def import_trust(
    stores: Stores, data: bytes, *, root: x509.Certificate | None = None, by: str
) -> ImportResult:
    """Trust another issuer: our trust-list format from another province (with `root`, its root
    certificate: required, the list's signature is checked), the EU DCC trust list, or one signer
    certificate (PEM/DER; with `root` it must be issued by it). Raises TrustListError for a file that cannot
    be used, Conflict for a province list older than the one held."""
    kind = _kind_of(data)
    if kind == "tongban" and root is None:
        raise TrustListError("a Tongban trust list is imported with its province's root certificate (--root)")
    store = load_trust_file(data, root=root)
    signers = store.all_signers()
    version: int | None = None
    if kind == "tongban":
        assert store.info is not None
        source_issuer, version = store.info.issuer, store.info.version
        if source_issuer == stores.settings.health_pass_province:
            raise TrustListError(f"{source_issuer} is our own province: its trust is ours already")
    if not signers:
        raise TrustListError("the file holds no usable signer certificate")
    if kind == "eu_dcc":
        source_issuer = EU_SOURCE
    elif kind == "certificate":
        source_issuer = signers[0].kid_b64
    revocations = store.revocation_entries()
    async with transaction(stores.pool, stores.settings) as conn:
        held = await repository.trust_source(conn, kind, source_issuer)
        if (
            held is not None
            and version is not None
            and held["version"] is not None
            and version < held["version"]
        ):
            raise Conflict(
                f"{source_issuer}: version {version} is older than the one imported ({held['version']})",
                code="trust_list_outdated",
            )
        source_id = await repository.replace_trust_source(
            conn,
            ids.new_id(),
            kind=kind,
            issuer=source_issuer,
            version=version,
            root_der=certs.certificate_der(root) if root is not None else None,
            file_sha256=hashlib.sha256(data).digest(),
            signature_checked=root is not None,
            by=by,
        )
        await repository.insert_trust_signers(
            conn, source_id, [(s.kid, s.region, certs.certificate_der(s.certificate)) for s in signers]
        )
        await repository.insert_trust_revocations(conn, source_id, revocations)
        await repository.bump_trust_generation(conn)
    log.info("pass.trust_imported", kind=kind, issuer=source_issuer, signers=len(signers))
    return ImportResult(
        kind=kind,
        issuer=source_issuer,
        version=version,
        signers=len(signers),
        revocations=len(revocations),
        skipped=store.skipped,
        signature_checked=root is not None,
    )


class TrustedView(msgspec.Struct, frozen=True, kw_only=True):
    """One trusted signer, as `tongban trust list` shows it."""

    source: str  # "ours", or the import: "tongban CN-JL", "eu_dcc EU", "certificate <kid>"
    region: str | None
    kid: str
    pass_types: list[str]
    not_after: datetime
    subject: str


async def trusted_signers(stores: Stores) -> list[TrustedView]:
    """Every signer this deployment trusts: ours first, then the imported ones."""
    store = await TRUST.reload(stores)
    ours = {signer.kid for signer in TRUST.ours}
    views = []
    for signer in store.all_signers():
        source = "ours" if signer.kid in ours else TRUST.source_of.get(signer.kid, "imported")
        views.append(
            TrustedView(
                source=source,
                region=signer.region,
                kid=signer.kid_b64,
                pass_types=sorted(signer.pass_types),
                not_after=signer.certificate.not_valid_after_utc,
                subject=signer.certificate.subject.rfc4514_string(),
            )
        )
    return sorted(views, key=lambda view: (view.source != "ours", view.source, view.kid))


# --- this process's TrustStore ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OurSigner:
    cert: x509.Certificate
    region: str
    kid: bytes


class TrustState:
    """The TrustStore online verification uses, and what it is built from."""

    def __init__(self) -> None:
        self.store = TrustStore()
        self.loaded = False
        self.ours: list[OurSigner] = []
        self.source_of: dict[bytes, str] = {}
        self._imported: list[tuple[x509.Certificate, str | None, bytes]] = []
        self._imported_revocations: list[str] = []
        self._revoked: dict[str, int] = {}  # our rid -> cutoff
        self._generation: int | None = None
        self._watermark: datetime | None = None
        self._reloaded_at = 0.0  # monotonic
        self._locks: dict[int, asyncio.Lock] = {}  # by event loop: a lock belongs to one

    def _lock(self) -> asyncio.Lock:
        loop = id(asyncio.get_running_loop())
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def current(self, stores: Stores) -> TrustStore:
        """The store, loaded on first use (later kept current by the pass watcher)."""
        if not self.loaded:
            await self.reload(stores)
        return self.store

    def _rebuild(self) -> None:
        store = TrustStore()
        for signer in self.ours:
            store.add_certificate(signer.cert, region=signer.region, kid=signer.kid)
        for cert, region, kid in self._imported:
            try:
                store.add_certificate(cert, region=region, kid=kid)
            except TrustListError:
                store.skipped += 1
        for entry in self._imported_revocations:
            try:
                store.add_revocation(entry)
            except TrustListError:
                log.warning("pass.trust_bad_revocation")
        for rid, cutoff in self._revoked.items():
            store.add_revocation(f"{rid}.{cutoff}")
        self.store = store  # one reference swap: verify() never sees a half-built store

    async def reload(self, stores: Stores) -> TrustStore:
        """Everything again from the database: signers, imports, revocations."""
        async with self._lock():
            async with connection(stores.pool, stores.settings) as conn:
                generation = await repository.trust_generation(conn)
                ours = await issuer.trusted_signer_certificates(conn)
                imported = await repository.imported_signers(conn)
                imported_revocations = await repository.imported_revocations(conn)
                started = clock.now()
                revoked = await our_revocations(conn, stores)
            self.ours = [
                OurSigner(cert=cert, region=province, kid=certs.certificate_kid(cert))
                for cert, province in ours
            ]
            self._imported = []
            self.source_of = {}
            for row in imported:
                try:
                    cert = x509.load_der_x509_certificate(bytes(row["der"]))
                except ValueError:
                    continue
                kid = bytes(row["kid"])
                self._imported.append((cert, row["region"], kid))
                self.source_of[kid] = f"{row['kind']} {row['issuer']}"
            self._imported_revocations = imported_revocations
            self._revoked = revoked
            self._generation = generation
            self._watermark = started
            self._rebuild()
            self.loaded = True
            self._reloaded_at = time.monotonic()
            return self.store

    async def refresh(self, stores: Stores) -> list[asyncpg.Record]:
        """One poll: a full reload when imports or our signers changed (the trust generation moved), else
        the status changes since the last poll, whose revocations are added. Returns those changes (the
        pass cache drops what they make stale)."""
        if not self.loaded:
            await self.reload(stores)
            return []
        async with connection(stores.pool, stores.settings) as conn:
            generation = await repository.trust_generation(conn)
            started = clock.now()
            since = (self._watermark or started) - POLL_OVERLAP
            changes = await repository.status_changes_since(conn, since)
        if generation != self._generation or time.monotonic() - self._reloaded_at > FULL_RELOAD_SECONDS:
            await self.reload(stores)  # also drops retired signers whose passes have all expired
            return changes
        self._watermark = started
        fresh = revocation_entries(stores.settings.health_pass_province, changes)
        horizon = cutoff_seconds([started - revocation_window(stores)])
        added = {rid: cutoff for rid, cutoff in fresh.items() if cutoff > self._revoked.get(rid, 0)}
        expired = [rid for rid, cutoff in self._revoked.items() if cutoff < horizon]
        if added or expired:
            for rid in expired:
                del self._revoked[rid]
            self._revoked.update(added)
            self._rebuild()
        return changes


# One per process.
TRUST = TrustState()


async def load_trust_store(stores: Stores) -> TrustStore:
    """A new TrustStore with everything trusted now (our signers, imports, ours and imported revocations),
    read from the database; TRUST.current(stores) is the same kept current in this process."""
    state = TrustState()
    return await state.reload(stores)
