"""Issuing health passes and showing them from cache.

A citizen's pass is their current status (health_code.status) signed as a `TB1:` pass (docs/pass-format.md):
iss our province, sub the account's random pseudonymous subject (pass_subjects), the masked name and ID
number (auth.lookup.masked_identity), colour and since, iat and exp (health_pass_ttl_seconds, never past
the signer certificate's notAfter).

Showing it is a hot path, so a pass is signed once per status version and then cached:

- in this process (PASSES): the pass and its JSON answer, already encoded, kept until it needs re-signing
  (health_pass_refresh_seconds before exp) or the status may change by itself (valid_until). A request for
  a cached pass costs a dictionary look-up: no signature, no I/O.
- in Redis, keyed by account and status version (every process and a restart reuse it).

The cached pass of an account is dropped when its status changes: at once on the "health:status" message
(status.publish_changes), and within health_pass_poll_seconds by the watcher's poll of recent status
changes (a missed message, Redis away). The same poll gives online verification its revocations
(trustlist.TRUST): a status change revokes the subject's passes issued before it.

Degradation: PostgreSQL away, a cached pass is served until its exp; Redis away, passes are signed from
PostgreSQL on demand. Neither is a 500: a pass that cannot be made is a 503 with Retry-After.

Ordering (why a revoked pass never shows the new colour, and a new pass is never revoked): the status is
read under a shared lock on the account's status (a recompute in flight is waited for, and none starts
until the read is done), and the pass's iat is max(the read time, the status version's revocation time,
trustlist.cutoff_seconds). A change after the read has a later changed_at, so its revocation entry
covers this pass; the pass of the new status has iat at or after the entry's time, so it stays valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

import msgspec
import segno
import structlog

from auth import lookup
from core import clock
from core import redis as redis_mod
from core.db import connection, transaction
from core.errors import Forbidden, StoreUnavailable
from core.stores import Stores
from health_code import issuer, repository, status
from health_code.certs import max_exp
from health_code.codec import BASE45_ALPHABET
from health_code.status import STATUS_CHANNEL, Changed, StatusChange
from health_code.trustlist import TRUST, cutoff_seconds
from health_code.verify import PassContent, sign_pass

log = structlog.get_logger(__name__)

# Passes one process keeps at most (about 1 KiB each; the oldest go first).
MAX_CACHED = 100_000
# Between two polls that a burst of messages triggers, at least this long.
MIN_POLL_GAP = 0.5
# Expired entries are swept out this often.
SWEEP_SECONDS = 60.0
QR_ALPHANUMERIC = frozenset(BASE45_ALPHABET)
PNG_SCALE = 6
SVG_SCALE = 4
QR_BORDER = 4


class HealthPassView(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/health-pass: the QR text and what it says."""

    payload: str  # the QR text, "TB1:..."
    colour: str  # green | yellow | red
    since: datetime  # when the colour took effect
    exp: datetime  # the pass is valid until then (the app asks again before)
    kid: str  # the signer certificate's kid (base64), as in the trust list


class HistoryPage(msgspec.Struct, frozen=True, kw_only=True):
    changes: list[StatusChange]
    # Pass as before_version for the next (older) page; None on the last page.
    next_before_version: int | None = None


class _Stored(msgspec.Struct, frozen=True, array_like=True):
    """A pass as Redis keeps it."""

    payload: str
    colour: str
    since: int
    exp: int
    kid: str


@dataclass(slots=True)
class CachedPass:
    account_id: UUID
    version: int  # the status version it shows
    view: HealthPassView
    body: bytes  # view as JSON
    exp: float  # unix seconds
    fresh_until: float  # unix seconds: look again (re-sign, or the status window ends) after this
    svg: bytes | None = field(default=None, repr=False)
    png: bytes | None = field(default=None, repr=False)


class PassCache:
    """This process's passes by account. Replaced entries, never changed ones (apart from the lazily made
    QR images)."""

    def __init__(self, max_entries: int = MAX_CACHED) -> None:
        self.max_entries = max_entries
        self.entries: dict[UUID, CachedPass] = {}
        # Accounts being (re)signed now, and the newest status version an invalidation named meanwhile:
        # a pass of an older version made by that refresh is served once but not kept.
        self._refreshing: dict[UUID, int] = {}

    def get(self, account_id: UUID) -> CachedPass | None:
        return self.entries.get(account_id)

    def begin(self, account_id: UUID) -> None:
        self._refreshing.setdefault(account_id, 0)

    def put(self, entry: CachedPass) -> bool:
        """Keep `entry` unless a newer status was announced while it was made."""
        newer = self._refreshing.pop(entry.account_id, 0)
        if entry.version < newer:
            return False
        self.entries.pop(entry.account_id, None)
        self.entries[entry.account_id] = entry
        while len(self.entries) > self.max_entries:
            del self.entries[next(iter(self.entries))]
        return True

    def abandon(self, account_id: UUID) -> None:
        self._refreshing.pop(account_id, None)

    def invalidate(self, account_id: UUID, version: int) -> None:
        """The account's status is now at `version`: drop a pass of an older one."""
        entry = self.entries.get(account_id)
        if entry is not None and entry.version < version:
            del self.entries[account_id]
        if account_id in self._refreshing:
            self._refreshing[account_id] = max(self._refreshing[account_id], version)

    def sweep(self, now: float) -> None:
        for account_id in [a for a, entry in self.entries.items() if entry.exp <= now]:
            del self.entries[account_id]

    def clear(self) -> None:
        self.entries.clear()
        self._refreshing.clear()


# One per process.
PASSES = PassCache()


def _redis_key(account_id: UUID, version: int) -> str:
    return redis_mod.key("hpass", str(account_id), f"v{version}")


def new_subject() -> str:
    """A pseudonymous subject: 80 random bits, nothing derived from the person."""
    return "u_" + secrets.token_hex(10)


def _entry(account_id: UUID, version: int, stored: _Stored, fresh_until: float) -> CachedPass:
    view = HealthPassView(
        payload=stored.payload,
        colour=stored.colour,
        since=datetime.fromtimestamp(stored.since, UTC),
        exp=datetime.fromtimestamp(stored.exp, UTC),
        kid=stored.kid,
    )
    return CachedPass(
        account_id=account_id,
        version=version,
        view=view,
        body=msgspec.json.encode(view),
        exp=float(stored.exp),
        fresh_until=fresh_until,
    )


async def _from_redis(stores: Stores, key: str) -> _Stored | None:
    try:
        raw = await stores.redis.get(key)
    except redis_mod.OUTAGE_ERRORS as exc:
        log.warning("pass.redis_unavailable", exc_type=type(exc).__name__)
        return None
    if raw is None:
        return None
    try:
        return msgspec.msgpack.decode(raw, type=_Stored)
    except msgspec.DecodeError:
        return None


async def _to_redis(stores: Stores, key: str, stored: _Stored) -> None:
    ttl = stored.exp - int(time.time())
    if ttl <= 0:
        return
    try:
        await stores.redis.set(key, msgspec.msgpack.encode(stored), ex=ttl)
    except redis_mod.OUTAGE_ERRORS as exc:
        log.warning("pass.redis_unavailable", exc_type=type(exc).__name__)


async def _make(stores: Stores, account_id: UUID) -> CachedPass:
    """Read the status (under the shared status lock), take the pass of that version from Redis or sign it."""
    settings = stores.settings
    async with transaction(stores.pool, settings) as conn:
        await repository.lock_status_shared(conn, account_id)
        read_at = clock.now()
        current = await status.current_status(conn, account_id, now=read_at)
        recent = await status.status_history(conn, account_id, limit=repository.RECENT_CHANGES)
        identity = await lookup.masked_identity(conn, account_id)
        if identity is None:
            raise Forbidden("the health pass needs a verified real name (L2)", code="insufficient_level")
        sub = await repository.subject_of(conn, account_id)
        if sub is None:
            sub = await repository.insert_subject(conn, account_id, new_subject())
    refresh = settings.health_pass_refresh_seconds
    fresh_until = math.inf if current.valid_until is None else current.valid_until.timestamp()
    key = _redis_key(account_id, current.version)
    stored = await _from_redis(stores, key)
    if stored is None or stored.exp - time.time() <= refresh:
        signer = await issuer.pass_signer(stores)
        cutoff = cutoff_seconds([change.changed_at for change in reversed(recent)] or [current.changed_at])
        iat = datetime.fromtimestamp(max(math.floor(read_at.timestamp()), cutoff), UTC)
        exp = max_exp(signer.cert, iat + timedelta(seconds=settings.health_pass_ttl_seconds))
        name, number = identity
        payload = sign_pass(
            PassContent(
                iss=settings.health_pass_province,
                sub=sub,
                iat=iat,
                exp=exp,
                name=name,
                number=number,
                colour=current.colour,
                since=current.since,
            ),
            key=signer.key,
            cert=signer.cert,
        )
        stored = _Stored(
            payload=payload,
            colour=current.colour,
            since=int(current.since.timestamp()),
            exp=int(exp.timestamp()),
            kid=signer.kid_b64,
        )
        if stored.exp - iat.timestamp() <= refresh:
            log.warning("pass.signer_expiring", kid=signer.kid_b64)
        await _to_redis(stores, key, stored)
    return _entry(account_id, current.version, stored, min(fresh_until, stored.exp - refresh))


async def show_pass(stores: Stores, account_id: UUID) -> CachedPass:
    """The account's pass: from this process's cache while it is fresh, else from Redis or newly signed.
    With PostgreSQL away, a cached pass is served until its exp; without one, StoreUnavailable (503)."""
    entry = PASSES.entries.get(account_id)
    if entry is not None and time.time() < entry.fresh_until:
        return entry
    PASSES.begin(account_id)
    try:
        made = await _make(stores, account_id)
    except StoreUnavailable:
        PASSES.abandon(account_id)
        if entry is not None and time.time() < entry.exp:
            log.warning("pass.served_from_cache", reason="store_unavailable")
            return entry
        raise
    except BaseException:
        PASSES.abandon(account_id)
        raise
    PASSES.put(made)
    return made


def qr(payload: str) -> segno.QRCode:
    """The QR code of a pass: alphanumeric mode when every character allows it (Base45 passes do), error
    correction level M."""
    mode = "alphanumeric" if set(payload) <= QR_ALPHANUMERIC else "byte"
    return segno.make(payload, error="m", mode=mode, boost_error=False)


def qr_svg(entry: CachedPass) -> bytes:
    if entry.svg is None:
        out = io.BytesIO()
        qr(entry.view.payload).save(out, kind="svg", scale=SVG_SCALE, border=QR_BORDER, xmldecl=False)
        entry.svg = out.getvalue()
    return entry.svg


def qr_png(entry: CachedPass) -> bytes:
    if entry.png is None:
        out = io.BytesIO()
        qr(entry.view.payload).save(out, kind="png", scale=PNG_SCALE, border=QR_BORDER)
        entry.png = out.getvalue()
    return entry.png


async def history(
    stores: Stores, account_id: UUID, *, limit: int = 50, before_version: int | None = None
) -> HistoryPage:
    """The account's status changes, newest first."""
    async with connection(stores.pool, stores.settings) as conn:
        changes = await status.status_history(
            conn, account_id, limit=limit + 1, before_version=before_version
        )
    page = changes[:limit]
    return HistoryPage(
        changes=page, next_before_version=page[-1].version if len(changes) > limit and page else None
    )


# --- keeping caches current ----------------------------------------------------------------------------------


class PassWatcher:
    """Per API process: drops cached passes whose status changed, and keeps trustlist.TRUST's revocations
    current. Listens on "health:status" and polls recent status changes (the fallback, and the source of
    the revocation times)."""

    def __init__(self, cache: PassCache) -> None:
        self.cache = cache
        self._wake: asyncio.Event | None = None  # made in run(): an event belongs to one loop

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _listen(self, stores: Stores) -> None:
        while True:
            try:
                async with stores.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(STATUS_CHANNEL)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None or message.get("type") != "message":
                            continue
                        try:
                            change = msgspec.json.decode(message["data"], type=Changed)
                        except msgspec.DecodeError:
                            continue
                        self.cache.invalidate(change.account_id, change.version)
                        self._poke()  # its revocation time comes with the poll
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the poll covers until it is back
                log.warning("pass.listen_failed", exc_type=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def poll(self, stores: Stores) -> None:
        for row in await TRUST.refresh(stores):
            self.cache.invalidate(row["account_id"], row["version"])

    async def _poll_forever(self, stores: Stores, wake: asyncio.Event) -> None:
        swept = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=stores.settings.health_pass_poll_seconds)
            wake.clear()
            try:
                await self.poll(stores)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL away: cached passes live on until their exp
                log.warning("pass.poll_failed", exc_type=type(exc).__name__)
            if time.monotonic() - swept > SWEEP_SECONDS:
                self.cache.sweep(time.time())
                swept = time.monotonic()
            await asyncio.sleep(MIN_POLL_GAP)

    async def run(self, stores: Stores) -> None:
        """Keep the caches current until cancelled."""
        self._wake = wake = asyncio.Event()
        with contextlib.suppress(Exception):
            await TRUST.reload(stores)
        await asyncio.gather(self._listen(stores), self._poll_forever(stores, wake))
