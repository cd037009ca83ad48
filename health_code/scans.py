"""Online scans: a checkpoint sends what it scanned, the server verifies it and records the scan durably.

- Verifying is the pure `verify(payload, trust, now)` against what this process trusts
  (venues.verify_online: the issuer's TrustStore, trustlist.TRUST, which its watcher keeps current with
  live revocations and swaps whole; then the venue signers).
- Recording is a group commit: each request adds its row to the process's ScanWriter and waits until the
  batch holding it is committed (one INSERT of the whole batch, autocommit). A scan is answered only once
  its row is in PostgreSQL, so nothing answered is lost if the process dies; many requests share one
  commit, so the database sees one statement per batch, not one per scan.
- A pass seen again by this process, while what it trusts is unchanged, reuses its verdict (VerdictCache):
  the ES256 check, most of a scan's CPU, is made once per pass; the time checks are made at every scan.
- The answer carries the verdict, the colour and the holder's masked name and ID number, never more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Final
from uuid import UUID

import asyncpg
import msgspec
import structlog

from core import clock, db
from core.errors import InvalidInput, StoreUnavailable
from core.pii.masking import mask_id_number, mask_name
from core.stores import Stores
from health_code import repository
from health_code.certs import HEALTH
from health_code.checkpoints import CheckpointPrincipal
from health_code.trustlist import TRUST
from health_code.venues import VENUE_TRUST, verify_online
from health_code.verify import DEFAULT_CLOCK_SKEW, Reason, Verdict

log = structlog.get_logger(__name__)

# The largest request body of a scan: a pass is at most 4296 characters; anything much larger is refused
# (413) before it is read into memory or decoded.
MAX_BODY_BYTES: Final = 16 * 1024
# A checkpoint may report a scan it made up to this long ago (offline for a while), or slightly ahead.
MAX_BACKDATE: Final = timedelta(hours=24)
CLOCK_SKEW: Final = timedelta(minutes=5)
# Rows per INSERT at most. One commit in flight per process: the rows that arrive meanwhile make the next
# batch (a second flusher would take them one by one and cost the database a commit each).
MAX_BATCH: Final = 2000
FLUSHERS: Final = 1
# Under load (the last batch held several rows), a batch smaller than LINGER_BELOW waits this long for
# more rows before it is committed: fewer, larger commits. A lone scan is committed at once.
LINGER_SECONDS: Final = 0.002
LINGER_BELOW: Final = 64


class ScanRequest(msgspec.Struct, kw_only=True):
    payload: str  # the scanned text, "TB1:..." or "HC1:..."
    # When the checkpoint scanned it (default: now); the pass is judged at that moment.
    scanned_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


class ScanAnswer(msgspec.Struct, kw_only=True):
    valid: bool
    reason: str  # a verify() reason: ok, bad_prefix, ..., revoked, expired (docs/checkpoints.md)
    pass_type: str | None = None  # health | venue | vaccination | test | recovery, when the pass is authentic
    colour: str | None = None
    name: str | None = None  # masked (a venue code: the venue's name)
    number: str | None = None  # masked ID number (a venue code: the venue's number)
    scanned_at: datetime


# --- recording: the group commit -------------------------------------------------------------------------

ScanRow = tuple[UUID, str | None, str | None, str | None, bool, str, datetime]


class ScanWriter:
    """Rows wait in memory only while their requests wait: `record` returns once the batch holding the
    row is committed, and raises StoreUnavailable (the scan is not answered) if that commit fails."""

    def __init__(self, stores: Stores) -> None:
        self._stores = stores
        self._pending: list[tuple[ScanRow, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._closing = False
        self._conn: asyncpg.Connection | None = None
        self._busy = False  # the last batch held more than one row
        # Counters (tests, metrics): commits made and rows they held.
        self.batches = 0
        self.rows = 0

    def _start(self) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        while len(self._tasks) < FLUSHERS:
            self._tasks.append(asyncio.create_task(self._flusher(), name="scan-writer"))

    async def record(self, row: ScanRow) -> None:
        if self._closing:
            raise StoreUnavailable("PostgreSQL", self._stores.settings.retry_after_seconds)
        if len(self._tasks) < FLUSHERS or any(t.done() for t in self._tasks):
            self._start()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, done))
        self._wake.set()
        # A request cancelled meanwhile (the client went away) cancels only `done`: its row stays in the
        # batch and is written anyway.
        await done

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            if self._busy and len(self._pending) < LINGER_BELOW:
                # Scans are arriving together: wait a moment so that more share this commit.
                await asyncio.sleep(LINGER_SECONDS)
            else:
                await asyncio.sleep(0)  # let the requests that are ready add their rows to this batch
            if not self._pending:
                self._wake.clear()
                continue
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            self._busy = len(batch) > 1
            if not self._pending:
                self._wake.clear()
            self._in_flight += 1
            try:
                await self._commit(batch)
            finally:
                self._in_flight -= 1

    async def _connection(self) -> asyncpg.Connection:
        # The writer keeps one pooled connection while it works: a batch costs one round trip, no checkout.
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._stores.pool.acquire(timeout=self._stores.settings.db_acquire_timeout)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection is closed by the pool instead
                await self._stores.pool.release(conn)

    async def _commit(self, batch: list[tuple[ScanRow, asyncio.Future[None]]]) -> None:
        settings = self._stores.settings
        try:
            await repository.insert_scans(await self._connection(), [row for row, _ in batch])
        except Exception as exc:
            if not isinstance(exc, (*db.OUTAGE_ERRORS, StoreUnavailable)):
                log.error("scans.write_failed", rows=len(batch), exc_type=type(exc).__name__)
            await self._drop_connection()
            failure = StoreUnavailable("PostgreSQL", settings.retry_after_seconds)
            for _, done in batch:
                if not done.done():
                    done.set_exception(failure)
            return
        self.batches += 1
        self.rows += len(batch)
        for _, done in batch:
            if not done.done():
                done.set_result(None)

    async def close(self) -> None:
        """Commit what is waiting, then stop the flushers."""
        self._closing = True
        deadline = time.monotonic() + 10.0
        while (self._pending or self._in_flight) and time.monotonic() < deadline and self._tasks:
            self._wake.set()
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._drop_connection()


# --- per process -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ScanState:
    pool: asyncpg.Pool  # held so that id(pool) is not reused while this state lives
    writer: ScanWriter


_states: dict[int, ScanState] = {}


def state_for(stores: Stores) -> ScanState:
    """The process's scan state for these stores (one per pool: per app in tests)."""
    state = _states.get(id(stores.pool))
    if state is None or state.pool is not stores.pool:
        state = _states[id(stores.pool)] = ScanState(pool=stores.pool, writer=ScanWriter(stores))
    return state


@asynccontextmanager
async def running(stores: Stores) -> AsyncIterator[ScanState]:
    """For the API process's lifespan: on the way out, commit the scans still waiting."""
    state = state_for(stores)
    try:
        yield state
    finally:
        await state.writer.close()
        _states.pop(id(stores.pool), None)


# --- the scan ---------------------------------------------------------------------------------------------


def _eu_name(hcert: dict[str, Any] | None) -> str | None:
    names = hcert.get("nam") if hcert else None
    if not isinstance(names, dict):
        return None
    parts = [value for key in ("fnt", "gnt") if isinstance(value := names.get(key), str) and value]
    return mask_name(" ".join(parts)) if parts else None


# What a checkpoint sees of an authentic pass: (pass_type, colour, name, number), masked.
Shown = tuple[str | None, str | None, str | None, str | None]
NOTHING_SHOWN: Final[Shown] = (None, None, None, None)


def shown_of(verdict: Verdict) -> Shown:
    """A health pass carries masked data already; it is masked again here so that no issuer's mistake can
    put a full name or ID number on a checkpoint screen."""
    claims = verdict.claims
    if claims is None:
        return NOTHING_SHOWN
    if claims.format == "eu_dcc":
        name, number = _eu_name(claims.hcert), None
    elif claims.pass_type == HEALTH:
        name = mask_name(claims.name) if claims.name else None
        number = mask_id_number(claims.number) if claims.number else None
    else:  # a venue code: the venue's own name and number
        name, number = claims.name, claims.number
    return claims.pass_type, claims.colour, name, number


def answer_of(verdict: Verdict, scanned_at: datetime, shown: Shown | None = None) -> ScanAnswer:
    """What the checkpoint sees (`shown`: shown_of(verdict), when already made)."""
    pass_type, colour, name, number = shown_of(verdict) if shown is None else shown
    return ScanAnswer(
        valid=verdict.valid,
        reason=verdict.reason,
        pass_type=pass_type,
        colour=colour,
        name=name,
        number=number,
        scanned_at=scanned_at,
    )


_ANSWER_ENCODER: Final = msgspec.json.Encoder()


def encode_answer(answer: ScanAnswer) -> bytes:
    """The answer as the JSON body of POST /v1/checkpoints/scans."""
    return _ANSWER_ENCODER.encode(answer)


def _scan_time(requested: datetime | None, now: datetime) -> datetime:
    if requested is None:
        return now
    if requested > now + CLOCK_SKEW or requested < now - MAX_BACKDATE:
        raise InvalidInput("scanned_at: within the last 24 hours (and not in the future)", field="scanned_at")
    return requested


class VerdictCache:
    """Verdicts of passes this process verified lately, valid while what it trusts has not changed.

    A pass is scanned at many gates in its lifetime (a station, then an office, then a shop). Everything
    verify() decides before its time checks depends only on the pass and the trust stores, and the stores are
    swapped whole when anything changes (a signer, a revocation: trustlist.TRUST, venues.VENUE_TRUST), so
    a verdict is reused while both stores are the very same objects; the time checks (not_yet_valid,
    expired) are made again at each scan. The ES256 check, most of a scan's CPU, is then done once per pass
    per process and trust version."""

    def __init__(self, size: int) -> None:
        self.size = size
        # payload -> (trust store, venue trust store, verdict, what a checkpoint is shown of it)
        self._entries: dict[str, tuple[object, object, Verdict, Shown]] = {}
        self.hits = 0

    @staticmethod
    def _at(base: Verdict, now: datetime) -> Verdict:
        claims = base.claims
        if claims is None or base.reason not in ("ok", "not_yet_valid", "expired"):
            return base
        moment = now.timestamp()
        reason: Reason
        if claims.iat > moment + DEFAULT_CLOCK_SKEW.total_seconds():
            reason = "not_yet_valid"
        elif moment >= claims.exp:
            reason = "expired"
        else:
            reason = "ok"
        return base if reason == base.reason else Verdict(valid=reason == "ok", reason=reason, claims=claims)

    async def verify(self, stores: Stores, payload: str, now: datetime) -> tuple[Verdict, Shown]:
        """The verdict on `payload` at `now`, and what a checkpoint is shown of the pass (shown_of)."""
        trust = TRUST.store if TRUST.loaded else await TRUST.current(stores)
        venue_trust = VENUE_TRUST.store
        entry = self._entries.get(payload)
        if entry is not None and entry[0] is trust and entry[1] is venue_trust:
            self.hits += 1
            return self._at(entry[2], now), entry[3]
        verdict = await verify_online(stores, payload, now)
        shown = shown_of(verdict)
        # Kept only when both stores are still the ones it was made with, and never for an unknown kid
        # (the next scan may find its signer) or a verifier bug.
        if (
            verdict.reason not in ("unknown_kid", "internal_error")
            and TRUST.store is trust
            and VENUE_TRUST.store is venue_trust
        ):
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[payload] = (trust, venue_trust, verdict, shown)
        return verdict, shown


# One per process: at most this many passes (about 1 KiB each).
VERDICTS = VerdictCache(20_000)


async def scan(stores: Stores, checkpoint: CheckpointPrincipal, request: ScanRequest) -> ScanAnswer:
    """Verify a scanned pass, record the scan (durably: see ScanWriter) and answer the verdict. Every
    verify() outcome is an answer; only a store outage (503) or a bad scanned_at (422) is an error."""
    at = _scan_time(request.scanned_at, clock.now())
    verdict, shown = await VERDICTS.verify(stores, request.payload, at)
    claims = verdict.claims
    await state_for(stores).writer.record(
        (
            checkpoint.id,
            claims.kid if claims else None,
            claims.rid if claims else None,
            claims.colour if claims else None,
            verdict.valid,
            verdict.reason,
            at,
        )
    )
    return answer_of(verdict, at, shown)


class ScanRecord(msgspec.Struct, kw_only=True):
    id: int
    checkpoint_id: UUID
    kid: str | None
    rid: str | None
    colour: str | None
    valid: bool
    reason: str
    scanned_at: datetime
    recorded_at: datetime


async def recent_scans(
    conn: asyncpg.Connection, checkpoint_id: UUID, *, limit: int = 50
) -> Sequence[ScanRecord]:
    """A checkpoint's scans, newest first (ops, audits)."""
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit: 1 to 1000", field="limit")
    return [
        ScanRecord(**dict(row))
        for row in await repository.scans_of_checkpoint(conn, checkpoint_id, limit=limit)
    ]
