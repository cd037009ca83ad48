"""Rides: bus validators upload the rides they accepted offline; the fares are charged later, in the
background, through the transit operator, and posted to the ledger.

- An upload (`POST /v1/terminals/rides`, at most onecode_rides_batch_max rides) is loaded with binary COPY
  into a temporary table and merged with INSERT ... ON CONFLICT (terminal, ride id) DO NOTHING, in one
  transaction: uploading the same rides again (a validator that never saw the answer) stores nothing new,
  and the answer counts the rides accepted now and those already there.
- A (code id, counter) reported by two different terminals is a copied code: the authorisation is revoked
  at once (its code id goes into the revocation list every terminal downloads), and only the first ride of
  that (code id, counter) is charged.
- The new rides' settlement is enqueued through the outbox in the same transaction (onecode.jobs), so an
  accepted ride is never lost: a transit operator that is down makes the job retry later, and a periodic
  sweep settles anything still pending after that.
- An online validator's ride (a transit resolve) is written by RideWriter, a group commit: the resolves in
  flight share one transaction (their rides and one fare job), and each is answered once it is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Final
from uuid import UUID

import asyncpg
import msgspec
import structlog

from core import clock, db
from core.errors import InvalidInput, ProviderUnavailable, StoreUnavailable
from core.jobs import enqueue_in_tx
from core.stores import Stores
from onecode import authorisations, codec, ledger, repository
from onecode.jobs import SETTLE_BATCH, SETTLE_RIDES, SettleRides
from onecode.providers import ProviderRejected, transit_operator
from onecode.terminal_auth import TerminalPrincipal

log = structlog.get_logger(__name__)

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
RideId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
MAX_FARE_FEN: Final = 1_000_000  # 10,000 yuan: no bus ride costs more
# An upload's request body at most: about 200 bytes of JSON per ride.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
# Rides whose clock says they happened this far ahead of ours are refused (a validator with a wrong clock).
FUTURE_SLACK: Final = timedelta(minutes=5)
# Fares charged at once by one settlement job (each one an HTTP call to the transit operator).
SETTLE_CONCURRENCY: Final = 16
REVOKE_REASON: Final = "code_reused"


class RideIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    ride_id: RideId  # the validator's own id of the ride: uploading it again changes nothing
    code_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$")]
    counter: Annotated[int, msgspec.Meta(ge=0, le=codec.UINT32_MAX)]
    generated_at: AwareTime  # the code's generation time
    ridden_at: AwareTime  # when the validator accepted it
    fare_fen: Annotated[int, msgspec.Meta(ge=0, le=MAX_FARE_FEN)]


class RidesUpload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rides: Annotated[list[RideIn], msgspec.Meta(min_length=1)]


class UploadAnswer(msgspec.Struct, kw_only=True):
    received: int
    accepted: int  # new rides, to be charged
    duplicates: int  # rides this terminal had uploaded before (or twice in this upload)
    revoked_codes: int  # authorisations revoked because another terminal reported the same code use


class SettleOutcome(msgspec.Struct, kw_only=True):
    settled: int = 0
    failed: int = 0
    waiting: int = 0  # left pending: the transit operator was unavailable


def _records(rides: Sequence[RideIn], now: datetime) -> list[tuple[object, ...]]:
    latest = now + FUTURE_SLACK
    records: list[tuple[object, ...]] = []
    for index, ride in enumerate(rides):
        if ride.ridden_at > latest or ride.generated_at > latest:
            raise InvalidInput(
                "a ride is in the future (is the validator's clock right?)", field=f"rides[{index}].ridden_at"
            )
        records.append(
            (
                ride.ride_id,
                bytes.fromhex(ride.code_id),
                ride.counter,
                ride.generated_at,
                ride.ridden_at,
                ride.fare_fen,
            )
        )
    return records


async def revoke_copied(conn: asyncpg.Connection, code_ids: Sequence[bytes]) -> int:
    """Revoke the authorisations whose codes two terminals reported; how many were still active."""
    revoked = 0
    for code_id in code_ids:
        if await authorisations.revoke(conn, code_id, REVOKE_REASON):
            revoked += 1
    return revoked


async def upload(stores: Stores, terminal: TerminalPrincipal, rides: Sequence[RideIn]) -> UploadAnswer:
    """Store a validator's rides (idempotently) and enqueue the new ones' settlement; see the module doc."""
    limit = stores.settings.onecode_rides_batch_max
    if len(rides) > limit:
        raise InvalidInput(f"rides: at most {limit} per upload", field="rides")
    records = _records(rides, clock.now())
    async with db.transaction(stores.pool, stores.settings) as conn:
        await repository.stage_rides(conn, records)
        new_ids = await repository.merge_staged_rides(conn, terminal.id)
        revoked = 0
        if new_ids:
            copied = await repository.staged_codes_used_elsewhere(conn, terminal.id)
            revoked = await revoke_copied(conn, copied)
            for start in range(0, len(new_ids), SETTLE_BATCH):
                chunk = new_ids[start : start + SETTLE_BATCH]
                await enqueue_in_tx(conn, SETTLE_RIDES, SettleRides(ride_ids=chunk))
    if revoked:
        _forget_bundle(stores)
    return UploadAnswer(
        received=len(rides),
        accepted=len(new_ids),
        duplicates=len(rides) - len(new_ids),
        revoked_codes=revoked,
    )


def _forget_bundle(stores: Stores) -> None:
    from onecode.resolve import BUNDLES  # resolve imports this module

    BUNDLES.forget(stores)


# --- online rides: a group commit -----------------------------------------------------------------------

OnlineRide = tuple[UUID, str, bytes, int, datetime, datetime, int]
# Rides per transaction at most. One commit in flight per process: the rides that arrive meanwhile make the
# next batch, so under load many resolves share one commit (and one fare job) instead of one each.
MAX_WRITE_BATCH: Final = 1000
# Under load (the last batch held several rides), a batch smaller than LINGER_BELOW waits this long for more.
LINGER_SECONDS: Final = 0.002
LINGER_BELOW: Final = 32


class RideWriter:
    """Online validators' rides, written by group commit: `record` returns once the transaction holding the
    ride and its fare job is committed (True), or the ride id was recorded before (False), and raises
    StoreUnavailable when that commit failed (the resolve is then not answered as approved)."""

    def __init__(self, stores: Stores) -> None:
        self._stores = stores
        self._pending: list[tuple[OnlineRide, asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = False
        self._closing = False
        self._busy = False
        # Counters (tests, metrics): commits made and rides they held.
        self.batches = 0
        self.rides = 0

    async def record(self, ride: OnlineRide) -> bool:
        if self._closing:
            raise StoreUnavailable("PostgreSQL", self._stores.settings.retry_after_seconds)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flusher(), name="ride-writer")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((ride, done))
        self._wake.set()
        # A request cancelled meanwhile cancels only `done`: its ride stays in the batch and is written.
        return await done

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            if self._busy and len(self._pending) < LINGER_BELOW:
                await asyncio.sleep(
                    LINGER_SECONDS
                )  # resolves are arriving together: let more share this commit
            else:
                await asyncio.sleep(0)
            if not self._pending:
                self._wake.clear()
                continue
            batch = self._pending[:MAX_WRITE_BATCH]
            del self._pending[:MAX_WRITE_BATCH]
            self._busy = len(batch) > 1
            if not self._pending:
                self._wake.clear()
            self._in_flight = True
            try:
                await self._commit(batch)
            finally:
                self._in_flight = False

    async def _commit(self, batch: list[tuple[OnlineRide, asyncio.Future[bool]]]) -> None:
        stores = self._stores
        try:
            async with db.transaction(stores.pool, stores.settings) as conn:
                recorded = await repository.insert_rides(conn, [ride for ride, _ in batch])
                if recorded:
                    ride_ids = [row["id"] for row in recorded]
                    await enqueue_in_tx(conn, SETTLE_RIDES, SettleRides(ride_ids=ride_ids))
        except Exception as exc:
            if not isinstance(exc, (*db.OUTAGE_ERRORS, StoreUnavailable)):
                log.error("rides.write_failed", rides=len(batch), exc_type=type(exc).__name__)
            failure = StoreUnavailable("PostgreSQL", stores.settings.retry_after_seconds)
            for _, done in batch:
                if not done.done():
                    done.set_exception(failure)
            return
        new = {(row["terminal_id"], row["ride_id"]) for row in recorded}
        self.batches += 1
        self.rides += len(recorded)
        for ride, done in batch:
            if not done.done():
                key = (ride[0], ride[1])
                done.set_result(key in new)
                new.discard(key)  # the same ride id twice in one batch: the second was not recorded

    async def close(self) -> None:
        """Commit what is waiting, then stop."""
        self._closing = True
        deadline = time.monotonic() + 10.0
        while (self._pending or self._in_flight) and self._task is not None and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@dataclass(slots=True)
class _WriterState:
    pool: asyncpg.Pool  # held so that id(pool) is not reused while this state lives
    writer: RideWriter


_writers: dict[int, _WriterState] = {}


def writer_for(stores: Stores) -> RideWriter:
    """The process's ride writer for these stores (one per pool: per app in tests)."""
    state = _writers.get(id(stores.pool))
    if state is None or state.pool is not stores.pool:
        state = _writers[id(stores.pool)] = _WriterState(stores.pool, RideWriter(stores))
    return state.writer


@asynccontextmanager
async def running(stores: Stores) -> AsyncIterator[RideWriter]:
    """For the API process's lifespan: on the way out, commit the rides still waiting."""
    writer = writer_for(stores)
    try:
        yield writer
    finally:
        await writer.close()
        _writers.pop(id(stores.pool), None)


async def record_online_ride(
    stores: Stores, terminal: TerminalPrincipal, code: codec.Code, *, ride_id: str, fare_fen: int
) -> bool:
    """An online validator's ride, resolved and accepted now, recorded with its fare job (group commit);
    False when the terminal recorded this ride id before."""
    now = clock.now()
    generated_at = datetime.fromtimestamp(code.generated_at, now.tzinfo)
    return await writer_for(stores).record(
        (terminal.id, ride_id, code.code_id, code.counter, generated_at, now, fare_fen)
    )


# --- settlement ------------------------------------------------------------------------------------------


def ride_reference(ride: int) -> str:
    """The reference the transit operator charges a ride under: the same on every try (idempotent)."""
    return f"tbr-{ride}"


class _Payer(msgspec.Struct, frozen=True, gc=False):
    """What charging the rides of one code id needs: whose, up to how much, to which transit account."""

    account_id: UUID
    ride_cap_fen: int
    transit_account: str | None  # None: the authorisation carried no transit


async def _payers(stores: Stores, code_ids: set[bytes]) -> dict[bytes, _Payer]:
    payers: dict[bytes, _Payer] = {}
    async with db.connection(stores.pool, stores.settings) as conn:
        for code_id in code_ids:
            record = await authorisations.by_code_id(conn, code_id)
            if record is None:
                continue
            # The link the authorisation was made for, even if revoked or unlinked since: the ride was taken.
            target = await authorisations.transit_target(conn, code_id)
            payers[code_id] = _Payer(
                account_id=record.account_id,
                ride_cap_fen=record.ride_cap_fen,
                transit_account=target.provider_ref if target is not None else None,
            )
    return payers


async def _settle_one(stores: Stores, row: asyncpg.Record, payer: _Payer | None) -> str:
    """'settled', 'failed' or 'waiting' (the operator is unavailable: the ride stays pending)."""
    ride: int = row["id"]
    failure: str | None = None
    if payer is None:
        failure = "unknown_code"
    elif row["first_id"] != ride:
        failure = REVOKE_REASON  # a second use of one (code id, counter): only the first is charged
    elif payer.transit_account is None:
        failure = "not_linked"
    elif row["fare_fen"] > payer.ride_cap_fen:
        failure = "over_cap"
    provider_ref: str | None = None
    if failure is None and row["fare_fen"] > 0:
        assert payer is not None and payer.transit_account is not None
        try:
            provider_ref = await transit_operator(stores.settings).charge_fare(
                payer.transit_account, row["fare_fen"], ride_reference(ride)
            )
        except ProviderRejected as exc:
            failure = exc.reason
        except ProviderUnavailable:
            return "waiting"
    async with db.transaction(stores.pool, stores.settings) as conn:
        if failure is not None or payer is None:
            await repository.mark_ride_failed(conn, ride, failure or "unknown_code")
            return "failed"
        if provider_ref is None:  # a free ride: nothing to charge or post
            await repository.mark_ride_settled(conn, ride, ride_reference(ride))
            return "settled"
        await ledger.post(
            conn,
            reference=provider_ref,
            kind=ledger.FARE,
            entries=ledger.fare_entries(payer.account_id, row["fare_fen"]),
        )
        await repository.mark_ride_settled(conn, ride, provider_ref)
    return "settled"


async def settle(stores: Stores, ride_ids: Sequence[int]) -> SettleOutcome:
    """Charge the pending rides among `ride_ids` (each at most once: the operator is idempotent by the
    ride's reference and the ledger by the operator's); rides already settled or failed are skipped."""
    async with db.connection(stores.pool, stores.settings) as conn:
        rows = await repository.rides_to_settle(conn, ride_ids)
    payers = await _payers(stores, {bytes(row["code_id"]) for row in rows})
    gate = asyncio.Semaphore(SETTLE_CONCURRENCY)
    operator_down = asyncio.Event()

    async def one(row: asyncpg.Record) -> str:
        async with gate:
            if operator_down.is_set():
                return "waiting"  # no point in waiting out a timeout per ride: the job tries again later
            outcome = await _settle_one(stores, row, payers.get(bytes(row["code_id"])))
            if outcome == "waiting":
                operator_down.set()
            return outcome

    outcomes = await asyncio.gather(*(one(row) for row in rows))
    return SettleOutcome(
        settled=outcomes.count("settled"), failed=outcomes.count("failed"), waiting=outcomes.count("waiting")
    )


async def pending_before(stores: Stores, before: datetime, limit: int) -> list[int]:
    async with db.connection(stores.pool, stores.settings) as conn:
        return await repository.pending_ride_ids(conn, before, limit)


class Ride(msgspec.Struct, kw_only=True):
    id: int
    terminal_id: UUID
    ride_id: str
    code_id: str
    counter: int
    generated_at: datetime
    ridden_at: datetime
    fare_fen: int
    status: str
    provider_ref: str | None
    failure: str | None
    uploaded_at: datetime
    settled_at: datetime | None


async def rides_of(stores: Stores, terminal_id: UUID, *, limit: int = 100) -> list[Ride]:
    """A terminal's rides, newest first (ops, tests)."""
    async with db.connection(stores.pool, stores.settings) as conn:
        rows = await repository.rides_of_terminal(conn, terminal_id, limit)
    return [Ride(**{**dict(row), "code_id": bytes(row["code_id"]).hex()}) for row in rows]
