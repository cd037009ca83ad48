"""Background jobs: a registry, the transactional outbox, its relay into the queue, and the worker.

A service writes an outbox row in its own transaction (enqueue_in_tx); the relay moves committed rows into
arq, whose job id is the outbox job_id, so a second enqueue of the same row is a no-op; the worker runs the
job with the process's Stores. Delivery is at least once: jobs must be idempotent.

Periodic jobs (`periodic`) run at fixed times on the clock, once per tick however many workers are up.

arq is maintenance-only upstream, so it stays behind this module: capabilities only use `job`, `periodic`,
`enqueue_in_tx` and `PermanentJobError`.

Nothing here logs a payload: job name, job id, try and exception type only.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import asyncpg
import msgspec
import structlog
from arq.connections import ArqRedis
from arq.cron import CronJob, cron
from arq.worker import Function, Retry, Worker, func
from redis.asyncio import ConnectionPool

from core import clock, db, ids
from core import redis as redis_mod
from core.errors import StoreUnavailable
from core.settings import Settings
from core.stores import Stores, close_stores, open_stores

log = structlog.get_logger(__name__)

Queue = ArqRedis
# One hash tag for the queue and its health key; arq's own per-job keys have fixed, untagged prefixes.
QUEUE_NAME = redis_mod.key("tongban", "jobs", "queue")
NOTIFY_CHANNEL = "outbox"
# arq keeps a finished job's record this long; while it exists, enqueueing the same job id is a no-op,
# which covers a relay that enqueued a row but could not mark it before an outage.
RESULT_TTL_SECONDS = 86_400
CLEANUP_EVERY_SECONDS = 3600.0
CLEANUP_BATCH = 5000
RELAY_BACKOFF_START = 0.5
RELAY_BACKOFF_MAX = 15.0
_JOB_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_MAX_JOB_ID = 200


class UnknownJobError(LookupError):
    """enqueue_in_tx was given a job name no module has registered (a programming error)."""


class PermanentJobError(Exception):
    """Raise inside a job to fail it now, without retries (retrying cannot help, e.g. a rejected number)."""


class JobFailed(Exception):
    """What arq records for a failed job: name and tries only, never the original message."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: str
    func: Callable[[Stores, Any], Awaitable[None]]
    payload_type: type[msgspec.Struct]
    max_tries: int | None
    timeout: float | None


_REGISTRY: dict[str, JobSpec] = {}
F = TypeVar("F", bound=Callable[..., Awaitable[None]])


def job(name: str, *, max_tries: int | None = None, timeout: float | None = None) -> Callable[[F], F]:
    """Register `async def f(stores: Stores, payload: SomeStruct) -> None` as the job `name`.

    The payload type is read from the annotation, so it must be importable at run time. max_tries and
    timeout (seconds) override the TONGBAN_JOBS_* defaults for this job.
    """
    if not _JOB_NAME.match(name):
        raise ValueError(f"job name {name!r}: expected dotted lower-case words, e.g. 'auth.send_sms'")

    def register(function: F) -> F:
        declared = function  # kept as F: the check below narrows `function` to a plain callable
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"job {name}: {function.__qualname__} must be an async function")
        params = list(inspect.signature(function).parameters)
        if len(params) != 2:
            raise TypeError(f"job {name}: expected (stores, payload) parameters")
        try:
            hints = typing.get_type_hints(function)
        except NameError as exc:
            raise TypeError(f"job {name}: annotations must be importable at run time ({exc})") from None
        payload_type = hints.get(params[1])
        if not (isinstance(payload_type, type) and issubclass(payload_type, msgspec.Struct)):
            raise TypeError(f"job {name}: the payload parameter must be annotated with a msgspec.Struct")
        existing = _REGISTRY.get(name)
        if existing is not None and (
            existing.func.__module__,
            existing.func.__qualname__,
        ) != (function.__module__, function.__qualname__):
            raise ValueError(f"job {name} is already registered by {existing.func.__module__}")
        _REGISTRY[name] = JobSpec(name, function, payload_type, max_tries, timeout)
        return declared

    return register


def registered_jobs() -> dict[str, JobSpec]:
    return dict(_REGISTRY)


@dataclass(frozen=True, slots=True)
class PeriodicSpec:
    name: str
    func: Callable[[Stores], Awaitable[None]]
    every_seconds: int
    timeout: float | None


_PERIODIC: dict[str, PeriodicSpec] = {}
P = TypeVar("P", bound=Callable[[Stores], Awaitable[None]])


def _schedule(every_seconds: int) -> dict[str, Any]:
    """arq cron fields for "every N seconds at fixed times on the clock" (N divides a minute or an hour)."""
    if 0 < every_seconds < 60 and 60 % every_seconds == 0:
        return {"second": set(range(0, 60, every_seconds))}
    if every_seconds > 0 and every_seconds % 60 == 0 and 3600 % every_seconds == 0:
        return {"minute": set(range(0, 60, every_seconds // 60)), "second": 0}
    raise ValueError(
        f"every_seconds: a divisor of 60, or whole minutes dividing an hour, got {every_seconds}"
    )


def periodic(name: str, *, every_seconds: int, timeout: float | None = None) -> Callable[[P], P]:
    """Register `async def f(stores: Stores) -> None` to run every `every_seconds` at fixed times on the clock
    (300: at :00, :05, :10, ... past each hour).

    Each tick runs once however many workers are up: every worker enqueues it under the same job id (name and
    tick time) and the queue ignores a job id it holds. A failed run is logged and not retried (the next
    tick is the retry), and ticks while no worker runs are skipped, so `f` must be idempotent and catch up
    by itself.
    """
    if not _JOB_NAME.match(name):
        raise ValueError(f"job name {name!r}: expected dotted lower-case words, e.g. 'miniapps.rollup'")
    _schedule(every_seconds)

    def register(function: P) -> P:
        declared = function  # kept as P: the check below narrows `function`
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"periodic job {name}: {function.__qualname__} must be an async function")
        existing = _PERIODIC.get(name)
        if name in _REGISTRY or (
            existing is not None
            and (existing.func.__module__, existing.func.__qualname__)
            != (function.__module__, function.__qualname__)
        ):
            raise ValueError(f"job {name} is already registered")
        _PERIODIC[name] = PeriodicSpec(name, function, every_seconds, timeout)
        return declared

    return register


def registered_periodic() -> dict[str, PeriodicSpec]:
    return dict(_PERIODIC)


# --- payloads and arq's own records ----------------------------------------------------------------


def encode_payload(payload: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode(payload)


def decode_payload(raw: bytes, payload_type: type[msgspec.Struct]) -> msgspec.Struct:
    return msgspec.msgpack.decode(raw, type=payload_type)


def _enc_hook(obj: Any) -> Any:
    # arq stores a failed job's exception in its result record: keep only the type.
    if isinstance(obj, BaseException):
        return type(obj).__name__
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_RECORD_ENCODER = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def serialize_record(data: dict[str, Any]) -> bytes:
    """arq's job_serializer. A result record ('r') drops the arguments: Redis keeps the outcome for a day,
    there is no need to keep the payload with it."""
    if "r" in data:
        data = {**data, "a": [], "k": {}}
    return _RECORD_ENCODER.encode(data)


def deserialize_record(raw: bytes) -> dict[str, Any]:
    return msgspec.msgpack.decode(raw, type=dict[str, Any])


def open_queue(settings: Settings, url: str | None = None) -> Queue:
    """A Redis client that can enqueue jobs; connects lazily, so it can be made while Redis is down."""
    target = url or settings.redis_url
    if target is None:
        raise ValueError("no Redis URL for the job queue")
    pool = ConnectionPool.from_url(
        target,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=30,
        # The relay enqueues a whole batch at once while the worker's jobs and poll share this pool.
        max_connections=settings.jobs_relay_batch + 2 * settings.jobs_concurrency + 8,
    )
    return ArqRedis(
        pool,
        job_serializer=serialize_record,
        job_deserializer=deserialize_record,
        default_queue_name=QUEUE_NAME,
    )


async def close_queue(queue: Queue) -> None:
    await queue.aclose(close_connection_pool=True)


# --- the outbox ----------------------------------------------------------------------------------------

_INSERT = """
WITH inserted AS (
    INSERT INTO outbox (job_name, job_id, payload, defer_until) VALUES ($1, $2, $3, $4)
    ON CONFLICT (job_id) DO NOTHING
    RETURNING 1
)
SELECT pg_notify('outbox', '') FROM inserted
"""


async def enqueue_in_tx(
    conn: asyncpg.Connection,
    job_name: str,
    payload: msgspec.Struct,
    *,
    job_id: str | None = None,
    defer_until: datetime | None = None,
) -> str:
    """Write the job into the outbox inside the caller's transaction; it runs only if that commits.

    Returns the job id. A job_id already in the outbox is a no-op (idempotency key): pass one derived
    from the business event when a retried request must not enqueue twice. The job's module must be
    imported wherever this is called, so that the name is registered.
    """
    spec = _REGISTRY.get(job_name)
    if spec is None:
        raise UnknownJobError(f"no job named {job_name!r} is registered")
    if type(payload) is not spec.payload_type:
        raise TypeError(f"job {job_name} takes {spec.payload_type.__name__}, got {type(payload).__name__}")
    if not conn.is_in_transaction():
        raise RuntimeError("enqueue_in_tx needs the caller's open transaction")
    if defer_until is not None and defer_until.tzinfo is None:
        raise ValueError("defer_until must be timezone-aware")
    if job_id is None:
        job_id = ids.new_id().hex
    elif not job_id or len(job_id) > _MAX_JOB_ID or not job_id.isprintable() or " " in job_id:
        raise ValueError(f"job_id: 1 to {_MAX_JOB_ID} printable characters without spaces")
    raw = encode_payload(payload)
    # Decoding once here checks the Struct's constraints now, in the caller, not later in the worker.
    decode_payload(raw, spec.payload_type)
    await conn.fetch(_INSERT, job_name, job_id, raw, defer_until)
    return job_id


_PICK = """
SELECT id, job_name, job_id, payload, defer_until
FROM outbox
WHERE enqueued_at IS NULL AND job_name = ANY($2::text[])
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""


async def relay_once(stores: Stores, queue: Queue, *, batch_size: int | None = None) -> int:
    """Move one batch of committed outbox rows into the queue; returns how many were marked enqueued.

    Rows are locked (SKIP LOCKED, so relays in other workers take other rows), enqueued with the outbox
    job_id as arq's job id, and marked in the same transaction. Rows Redis refused stay pending, and
    StoreUnavailable("Redis") is raised after the rest are marked. Rows of jobs this process does not
    know stay pending for a worker that does (e.g. during a rolling deploy).
    """
    settings = stores.settings
    size = batch_size or settings.jobs_relay_batch
    failures: list[BaseException] = []
    async with db.transaction(stores.pool, settings) as conn:
        rows = await conn.fetch(_PICK, size, list(_REGISTRY))
        if not rows:
            return 0
        results = await asyncio.gather(
            *(
                queue.enqueue_job(
                    row["job_name"], row["payload"], _job_id=row["job_id"], _defer_until=row["defer_until"]
                )
                for row in rows
            ),
            return_exceptions=True,
        )
        done = [
            row["id"]
            for row, result in zip(rows, results, strict=True)
            if not isinstance(result, BaseException)
        ]
        failures = [result for result in results if isinstance(result, BaseException)]
        if done:
            await conn.execute("UPDATE outbox SET enqueued_at = now() WHERE id = ANY($1::bigint[])", done)
    if failures:
        if any(isinstance(failure, redis_mod.OUTAGE_ERRORS) for failure in failures):
            raise StoreUnavailable("Redis", settings.retry_after_seconds) from failures[0]
        raise failures[0]
    return len(done)


async def cleanup_outbox(stores: Stores, *, keep_days: float | None = None) -> int:
    """Delete rows relayed more than keep_days ago (TONGBAN_JOBS_OUTBOX_KEEP_DAYS); returns how many."""
    settings = stores.settings
    days = settings.jobs_outbox_keep_days if keep_days is None else keep_days
    cutoff = clock.now() - timedelta(days=days)
    deleted = 0
    while True:
        async with db.connection(stores.pool, settings) as conn:
            status = await conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE enqueued_at < $1 LIMIT $2)",
                cutoff,
                CLEANUP_BATCH,
            )
        count = int(status.split()[-1])
        deleted += count
        if count < CLEANUP_BATCH:
            return deleted


async def _warn_unknown_pending(stores: Stores) -> None:
    async with db.connection(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            "SELECT job_name, count(*) AS pending FROM outbox "
            "WHERE enqueued_at IS NULL AND NOT (job_name = ANY($1::text[])) GROUP BY job_name",
            list(_REGISTRY),
        )
    for row in rows:
        log.warning("relay.unknown_job_pending", job=row["job_name"], pending=row["pending"])


async def _listen(settings: Settings, wake: asyncio.Event) -> asyncpg.Connection | None:
    """A connection of its own that LISTENs on the outbox channel; None while PostgreSQL is away."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            settings.database_url,
            timeout=settings.db_acquire_timeout * 2,
            server_settings={"application_name": "tongban-relay"},
        )
    except (*db.OUTAGE_ERRORS, asyncpg.PostgresError):
        return None
    try:
        await conn.add_listener(NOTIFY_CHANNEL, lambda *_: wake.set())
        # A lost connection wakes the loop too, so it reconnects instead of sleeping out the poll.
        conn.add_termination_listener(lambda _: wake.set())
    except (*db.OUTAGE_ERRORS, asyncpg.PostgresError):
        conn.terminate()
        return None
    return conn


async def _wait(stop: asyncio.Event, wake: asyncio.Event | None, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_relay(stores: Stores, queue: Queue, stop: asyncio.Event) -> None:
    """The relay loop: wakes on NOTIFY outbox or every TONGBAN_JOBS_RELAY_POLL seconds, relays until the
    outbox is drained, and rides out PostgreSQL and Redis outages with backoff. Returns once `stop` is set."""
    settings = stores.settings
    wake = asyncio.Event()
    listener: asyncpg.Connection | None = None
    delay = RELAY_BACKOFF_START
    next_cleanup = 0.0
    try:
        while not stop.is_set():
            if listener is None or listener.is_closed():
                listener = await _listen(settings, wake)
            wake.clear()
            try:
                relayed = await relay_once(stores, queue)
                if time.monotonic() >= next_cleanup:
                    deleted = await cleanup_outbox(stores)
                    if deleted:
                        log.info("relay.cleanup", deleted=deleted)
                    await _warn_unknown_pending(stores)
                    next_cleanup = time.monotonic() + CLEANUP_EVERY_SECONDS
            except StoreUnavailable as exc:
                log.warning("relay.store_unavailable", store=exc.store, retry_in=delay)
                await _wait(stop, None, delay)
                delay = min(delay * 2, RELAY_BACKOFF_MAX)
                continue
            except Exception as exc:
                # e.g. a missing table before migrations: keep trying, never let the relay die
                log.error("relay.failed", exc_type=type(exc).__name__, retry_in=delay)
                await _wait(stop, None, delay)
                delay = min(delay * 2, RELAY_BACKOFF_MAX)
                continue
            delay = RELAY_BACKOFF_START
            if relayed >= settings.jobs_relay_batch:
                continue  # a full batch: more may be waiting
            await _wait(stop, wake, settings.jobs_relay_poll)
    finally:
        if listener is not None and not listener.is_closed():
            try:
                await asyncio.wait_for(listener.close(), timeout=2)
            except (*db.OUTAGE_ERRORS, asyncpg.PostgresError):
                listener.terminate()


# --- running jobs ---------------------------------------------------------------------------------------


def retry_delay(settings: Settings, job_try: int) -> float:
    """Wait before try job_try + 1: retry_delay doubling each try, capped at retry_max_delay."""
    return float(min(settings.jobs_retry_delay * 2 ** (job_try - 1), settings.jobs_retry_max_delay))


def _arq_function(spec: JobSpec, settings: Settings) -> Function:
    max_tries = spec.max_tries or settings.jobs_max_tries
    timeout = spec.timeout or settings.jobs_timeout

    async def run(ctx: dict[Any, Any], raw: bytes) -> None:
        job_id: str = ctx["job_id"]
        job_try: int = ctx["job_try"]
        try:
            payload = decode_payload(raw, spec.payload_type)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("job.bad_payload", job=spec.name, job_id=job_id)
            raise JobFailed(f"{spec.name}: payload does not decode") from None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await spec.func(ctx["stores"], payload)
        except PermanentJobError:
            log.error("job.failed", job=spec.name, job_id=job_id, tries=job_try, exc_type="PermanentJobError")
            raise JobFailed(f"{spec.name} gave up") from None
        except Exception as exc:
            if job_try < max_tries:
                wait = retry_delay(settings, job_try)
                log.warning(
                    "job.retry",
                    job=spec.name,
                    job_id=job_id,
                    tries=job_try,
                    exc_type=type(exc).__name__,
                    retry_in=wait,
                )
                raise Retry(defer=wait) from None
            log.error("job.failed", job=spec.name, job_id=job_id, tries=job_try, exc_type=type(exc).__name__)
            raise JobFailed(f"{spec.name} failed after {job_try} tries") from None
        log.info(
            "job.done",
            job=spec.name,
            job_id=job_id,
            tries=job_try,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    # arq's own timeout is a backstop only: ours (above) turns a slow try into a retry instead.
    return func(run, name=spec.name, max_tries=max_tries, timeout=timeout + 5)


def _arq_cron(spec: PeriodicSpec, settings: Settings) -> CronJob:
    timeout = spec.timeout or settings.jobs_timeout

    async def run(ctx: dict[Any, Any]) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await spec.func(ctx["stores"])
        except Exception as exc:
            log.error("job.failed", job=spec.name, job_id=ctx["job_id"], tries=1, exc_type=type(exc).__name__)
            raise JobFailed(f"{spec.name} failed") from None
        log.info(
            "job.done",
            job=spec.name,
            job_id=ctx["job_id"],
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    # The finished tick's record is what makes a late worker's enqueue of the same tick a no-op: keep it a
    # while past the tick.
    return cron(
        run,
        name=spec.name,
        unique=True,
        timeout=timeout + 5,
        max_tries=1,
        keep_result=max(60, 2 * spec.every_seconds),
        **_schedule(spec.every_seconds),
    )


class _Worker(Worker):
    """arq's worker, made to ride out Redis outages instead of exiting on the first error."""

    _outage_delay = RELAY_BACKOFF_START

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except redis_mod.OUTAGE_ERRORS as exc:
            log.warning("worker.redis_unavailable", exc_type=type(exc).__name__, retry_in=self._outage_delay)
            await asyncio.sleep(self._outage_delay)
            self._outage_delay = min(self._outage_delay * 2, RELAY_BACKOFF_MAX)
        else:
            self._outage_delay = RELAY_BACKOFF_START

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        for job_id in job_ids:
            if self.job_counter >= self.max_jobs:
                return
            before = self.tasks.get(job_id.decode())
            try:
                await super().start_jobs([job_id])
            except redis_mod.OUTAGE_ERRORS:
                # arq took a slot before its Redis call failed and never gives it back: give it back.
                if self.tasks.get(job_id.decode()) is before:
                    self.job_counter -= 1
                    self.sem.release()
                raise

    async def close(self) -> None:
        # A job the stop signal cancelled ends in CancelledError, and arq's close gathers the tasks without
        # return_exceptions, so it would raise that out of the worker. Wait for them here and drop the
        # cancelled ones: arq runs an interrupted job again (its in-progress key expires).
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for job_id, task in list(self.tasks.items()):
            if task.cancelled():
                log.warning("worker.job_interrupted", job_id=job_id)
                del self.tasks[job_id]
        try:
            await super().close()
        except redis_mod.OUTAGE_ERRORS as exc:
            log.warning("worker.closed_without_redis", exc_type=type(exc).__name__)
            if self.on_shutdown is not None:
                await self.on_shutdown(self.ctx)


def create_worker(
    settings: Settings,
    *,
    stores: Stores | None = None,
    queue: Queue | None = None,
    relay: bool = True,
    burst: bool = False,
    handle_signals: bool = True,
) -> Worker:
    """The arq worker for every registered job. On start it opens Stores (unless given; given ones are
    left open) and starts the relay loop; on shutdown it stops the relay and closes what it opened."""
    # arq's info lines print job arguments (our payloads): keep only its warnings and errors.
    logging.getLogger("arq").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))

    async def on_startup(ctx: dict[Any, Any]) -> None:
        ctx["stores"] = stores if stores is not None else await open_stores(settings)
        if relay:
            stop = asyncio.Event()
            ctx["relay_stop"] = stop
            ctx["relay_task"] = asyncio.create_task(run_relay(ctx["stores"], ctx["redis"], stop))
        log.info(
            "worker.started",
            queue=QUEUE_NAME,
            jobs=sorted(_REGISTRY),
            periodic=sorted(_PERIODIC),
            relay=relay,
        )

    async def on_shutdown(ctx: dict[Any, Any]) -> None:
        task: asyncio.Task[None] | None = ctx.pop("relay_task", None)
        if task is not None:
            ctx.pop("relay_stop").set()
            try:
                await asyncio.wait_for(task, timeout=10)
            except TimeoutError:
                log.warning("worker.relay_stop_timeout")
        opened: Stores | None = ctx.pop("stores", None)
        if opened is not None and stores is None:
            await close_stores(opened)
        log.info("worker.stopped")

    return _Worker(
        [_arq_function(spec, settings) for spec in _REGISTRY.values()],
        cron_jobs=[_arq_cron(spec, settings) for spec in _PERIODIC.values()],
        queue_name=QUEUE_NAME,
        redis_pool=queue if queue is not None else open_queue(settings),
        burst=burst,
        handle_signals=handle_signals,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        max_jobs=settings.jobs_concurrency,
        job_timeout=settings.jobs_timeout + 5,
        keep_result=RESULT_TTL_SECONDS,
        max_tries=settings.jobs_max_tries,
        job_serializer=serialize_record,
        job_deserializer=deserialize_record,
    )


# --- core's own jobs ---------------------------------------------------------------------------------


class Ping(msgspec.Struct, frozen=True, kw_only=True):
    """core.ping: proves the outbox -> relay -> worker path end to end (health checks, tests)."""

    key: Annotated[str, msgspec.Meta(pattern=r"^ping\.[A-Za-z0-9_.:-]{1,100}$")]
    value: Any = None
    # Seconds the job stays running after writing: a long job, to check a worker stops cleanly mid-job.
    hold_seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0


@job("core.ping")
async def ping(stores: Stores, payload: Ping) -> None:
    async with db.connection(stores.pool, stores.settings) as conn:
        await conn.execute(
            "INSERT INTO app_meta (key, value, updated_at) VALUES ($1, $2::jsonb, now()) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            payload.key,
            msgspec.json.encode(payload.value).decode(),
        )
    if payload.hold_seconds:
        await asyncio.sleep(payload.hold_seconds)
