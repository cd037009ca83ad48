"""The outbox, its relay and the job worker against the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from arq.worker import Worker
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from core import db
from core import logging as tongban_logging
from core.errors import StoreUnavailable
from core.jobs import (
    QUEUE_NAME,
    PermanentJobError,
    Ping,
    Queue,
    UnknownJobError,
    cleanup_outbox,
    close_queue,
    create_worker,
    decode_payload,
    deserialize_record,
    encode_payload,
    enqueue_in_tx,
    job,
    open_queue,
    relay_once,
    retry_delay,
    run_relay,
    serialize_record,
)
from core.settings import Settings
from core.stores import Stores, close_stores, open_stores
from tests.support.proxy import proxy_for, through_proxy

SECRET = "PAYLOAD-MARKER-7f3a"


# --- jobs these tests declare ---------------------------------------------------------------------------


class Count(msgspec.Struct, frozen=True):
    key: str


class Inner(msgspec.Struct, frozen=True):
    label: str
    weights: list[float]


class Rich(msgspec.Struct, frozen=True):
    text: str
    number: int
    when: datetime
    blob: bytes
    inner: Inner
    tags: dict[str, int]
    maybe: str | None = None


class Secretive(msgspec.Struct, frozen=True):
    key: str
    secret: str


RECEIVED: list[Rich] = []

_BUMP = """
INSERT INTO app_meta (key, value) VALUES ($1, '1'::jsonb)
ON CONFLICT (key) DO UPDATE SET value = to_jsonb((app_meta.value)::int + 1), updated_at = now()
"""


async def _bump(stores: Stores, key: str) -> None:
    async with db.connection(stores.pool, stores.settings) as conn:
        await conn.execute(_BUMP, key)


@job("tests.count")
async def count_job(stores: Stores, payload: Count) -> None:
    await _bump(stores, payload.key)


@job("tests.echo")
async def echo_job(stores: Stores, payload: Rich) -> None:
    RECEIVED.append(payload)


@job("tests.fail")
async def fail_job(stores: Stores, payload: Secretive) -> None:
    await _bump(stores, payload.key)
    raise ValueError(f"cannot handle {payload.secret}")


@job("tests.give_up")
async def give_up_job(stores: Stores, payload: Secretive) -> None:
    await _bump(stores, payload.key)
    raise PermanentJobError(payload.secret)


# --- helpers ----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def json_logging() -> None:
    # The production log pipeline, so caplog sees what the worker process would write.
    tongban_logging.configure("info", json=True)


@pytest.fixture(autouse=True)
async def clean(stores: Stores) -> None:
    async with db.connection(stores.pool, stores.settings) as conn:
        await conn.execute("TRUNCATE outbox")
        await conn.execute("DELETE FROM app_meta WHERE key LIKE 'ping.%' OR key LIKE 'count.%'")
    await stores.redis.flushdb()
    RECEIVED.clear()


@pytest.fixture()
async def queue(settings: Settings) -> AsyncIterator[Queue]:
    opened = open_queue(settings)
    yield opened
    await close_queue(opened)


async def enqueue(stores: Stores, job_name: str, payload: msgspec.Struct, **kwargs: object) -> str:
    async with db.transaction(stores.pool, stores.settings) as conn:
        return await enqueue_in_tx(conn, job_name, payload, **kwargs)  # type: ignore[arg-type]


async def meta(stores: Stores, key: str) -> object:
    async with db.connection(stores.pool, stores.settings) as conn:
        raw = await conn.fetchval("SELECT value FROM app_meta WHERE key = $1", key)
    return None if raw is None else msgspec.json.decode(raw)


async def pending(stores: Stores) -> int:
    async with db.connection(stores.pool, stores.settings) as conn:
        return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE enqueued_at IS NULL"))


async def run_burst(settings: Settings, stores: Stores) -> Worker:
    """Run the worker in this process until the queue is empty (its own queue client, closed after)."""
    worker = create_worker(settings, stores=stores, relay=False, burst=True, handle_signals=False)
    worker.poll_delay_s = 0.05
    try:
        await asyncio.wait_for(worker.async_run(), timeout=30)
    finally:
        await worker.close()
    return worker


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


# --- codecs ---------------------------------------------------------------------------------------------

_text = st.text(max_size=40)
_rich = st.builds(
    Rich,
    text=_text,
    number=st.integers(min_value=-(2**63), max_value=2**64 - 1),
    when=st.datetimes(timezones=st.just(UTC)),
    blob=st.binary(max_size=64),
    inner=st.builds(Inner, label=_text, weights=st.lists(st.floats(allow_nan=False), max_size=5)),
    tags=st.dictionaries(_text, st.integers(min_value=-1000, max_value=1000), max_size=5),
    maybe=st.none() | _text,
)


@given(_rich)
@hypothesis_settings(max_examples=200, deadline=None)
def test_payloads_round_trip_through_msgpack(payload: Rich) -> None:
    assert decode_payload(encode_payload(payload), Rich) == payload


@given(st.text(max_size=20), st.binary(max_size=64), st.integers(min_value=1, max_value=10))
@hypothesis_settings(max_examples=100, deadline=None)
def test_arq_records_round_trip_and_results_drop_the_payload(name: str, raw: bytes, job_try: int) -> None:
    record = {"t": job_try, "f": name, "a": [raw], "k": {}, "et": 1_700_000_000_000}
    assert deserialize_record(serialize_record(record)) == record
    result = {**record, "s": False, "r": ValueError(SECRET), "st": 1, "ft": 2, "q": QUEUE_NAME, "id": "x"}
    stored = deserialize_record(serialize_record(result))
    assert stored["a"] == [] and stored["r"] == "ValueError" and stored["f"] == name
    assert SECRET.encode() not in serialize_record(result)


def test_retry_delay_doubles_up_to_the_cap(settings: Settings) -> None:
    tuned = msgspec.structs.replace(settings, jobs_retry_delay=2.0, jobs_retry_max_delay=10.0)
    assert [retry_delay(tuned, n) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]


# --- the registry and enqueue_in_tx ---------------------------------------------------------------------


def test_job_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="dotted"):
        job("NoDots")

    with pytest.raises(TypeError, match=r"msgspec\.Struct"):

        @job("tests.untyped")
        async def untyped(stores: Stores, payload: dict) -> None:  # type: ignore[type-arg]
            return None

    with pytest.raises(ValueError, match="already registered"):

        @job("tests.count")
        async def impostor(stores: Stores, payload: Count) -> None:
            return None


async def test_unknown_job_names_and_wrong_payloads_are_refused_at_call_time(stores: Stores) -> None:
    async with db.transaction(stores.pool, stores.settings) as conn:
        with pytest.raises(UnknownJobError):
            await enqueue_in_tx(conn, "tests.no_such_job", Count("count.x"))
        with pytest.raises(TypeError):
            await enqueue_in_tx(conn, "tests.count", Ping(key="ping.x"))
        with pytest.raises(msgspec.ValidationError):
            await enqueue_in_tx(conn, "core.ping", Ping(key="not-a-ping-key"))
        with pytest.raises(ValueError, match="timezone"):
            await enqueue_in_tx(conn, "tests.count", Count("count.x"), defer_until=datetime(2030, 1, 1))
    async with db.connection(stores.pool, stores.settings) as conn:
        with pytest.raises(RuntimeError, match="transaction"):
            await enqueue_in_tx(conn, "tests.count", Count("count.x"))
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_rolled_back_job_is_never_enqueued_nor_run(stores: Stores, queue: Queue) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with db.transaction(stores.pool, stores.settings) as conn:
            await enqueue_in_tx(conn, "core.ping", Ping(key="ping.rolled_back", value=1))
            raise Abort
    await enqueue(stores, "core.ping", Ping(key="ping.committed", value={"ok": True}))

    assert await relay_once(stores, queue) == 1
    assert await queue.zcard(QUEUE_NAME) == 1
    await run_burst(stores.settings, stores)
    assert await meta(stores, "ping.committed") == {"ok": True}
    assert await meta(stores, "ping.rolled_back") is None


async def test_racing_relays_enqueue_each_committed_job_once_and_it_runs_once(stores: Stores) -> None:
    total = 30
    for n in range(total):
        await enqueue(stores, "tests.count", Count(f"count.{n}"))
    queues = [open_queue(stores.settings), open_queue(stores.settings)]

    async def drain(queue: Queue) -> list[int]:
        counts = []
        while relayed := await relay_once(stores, queue, batch_size=4):
            counts.append(relayed)
        return counts

    try:
        first, second = await asyncio.gather(drain(queues[0]), drain(queues[1]))
    finally:
        for opened in queues:
            await close_queue(opened)
    assert sum(first) + sum(second) == total  # no row was taken by both relays
    assert first and second  # both relays really ran at the same time
    assert await pending(stores) == 0
    assert await stores.redis.zcard(QUEUE_NAME) == total

    worker = await run_burst(stores.settings, stores)
    assert worker.jobs_complete == total and worker.jobs_failed == 0
    assert [await meta(stores, f"count.{n}") for n in range(total)] == [1] * total


async def test_a_duplicate_job_id_is_enqueued_and_run_once(stores: Stores, queue: Queue) -> None:
    first = await enqueue(stores, "tests.count", Count("count.dup"), job_id="signup:42")
    second = await enqueue(stores, "tests.count", Count("count.dup"), job_id="signup:42")
    assert first == second == "signup:42"
    assert await relay_once(stores, queue) == 1

    # A relay that enqueued but lost its mark (an outage before commit) enqueues the row again: a no-op.
    async with db.connection(stores.pool, stores.settings) as conn:
        await conn.execute("UPDATE outbox SET enqueued_at = NULL")
    assert await relay_once(stores, queue) == 1
    assert await queue.zcard(QUEUE_NAME) == 1
    await run_burst(stores.settings, stores)
    assert await meta(stores, "count.dup") == 1

    # Still a no-op once the job has run: arq keeps its record of the job id.
    async with db.connection(stores.pool, stores.settings) as conn:
        await conn.execute("UPDATE outbox SET enqueued_at = NULL")
    assert await relay_once(stores, queue) == 1
    assert await queue.zcard(QUEUE_NAME) == 0
    async with db.connection(stores.pool, stores.settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 1


async def test_redis_down_leaves_rows_pending_until_it_is_back(stores: Stores, settings: Settings) -> None:
    assert settings.redis_url
    proxy = proxy_for(settings.redis_url)
    queue = open_queue(settings, through_proxy(settings.redis_url, proxy))
    try:
        proxy.down()  # the relay's Redis is now a closed port
        for n in range(3):
            await enqueue(stores, "tests.count", Count(f"count.{n}"))
        with pytest.raises(StoreUnavailable) as info:
            await relay_once(stores, queue)
        assert info.value.store == "Redis"
        assert await pending(stores) == 3
        assert await stores.redis.zcard(QUEUE_NAME) == 0

        proxy.up()
        assert await relay_once(stores, queue) == 3
        assert await pending(stores) == 0
        assert await stores.redis.zcard(QUEUE_NAME) == 3
    finally:
        await close_queue(queue)
        proxy.close()


async def test_payloads_reach_the_job_unchanged(stores: Stores, queue: Queue) -> None:
    sent = Rich(
        text="通办 ✓ 你好",
        number=2**63 + 5,
        when=datetime(2026, 11, 22, 8, 30, 1, 123456, tzinfo=UTC),
        blob=b"\x00\xff\x10",
        inner=Inner(label="内", weights=[0.5, -1.25]),
        tags={"a": 1, "b": -2},
    )
    await enqueue(stores, "tests.echo", sent)
    assert await relay_once(stores, queue) == 1
    await run_burst(stores.settings, stores)
    assert [sent] == RECEIVED


async def test_defer_until_reaches_the_queue(stores: Stores, queue: Queue) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    job_id = await enqueue(stores, "tests.count", Count("count.later"), defer_until=later)
    assert await relay_once(stores, queue) == 1
    score = await queue.zscore(QUEUE_NAME, job_id)
    assert score is not None and abs(score - later.timestamp() * 1000) <= 1


async def test_a_failing_job_is_retried_then_logged_by_name_and_id_only(
    stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    tuned = msgspec.structs.replace(stores.settings, jobs_max_tries=3, jobs_retry_delay=0.05)
    job_id = await enqueue(stores, "tests.fail", Secretive(key="count.fail", secret=SECRET))
    quitter_id = await enqueue(stores, "tests.give_up", Secretive(key="count.give_up", secret=SECRET))
    async with asyncio.timeout(10):
        queue = open_queue(tuned)
        try:
            assert await relay_once(stores, queue) == 2
        finally:
            await close_queue(queue)
        worker = await run_burst(tuned, Stores(tuned, stores.pool, stores.redis))

    assert await meta(stores, "count.fail") == 3  # tried jobs_max_tries times
    assert await meta(stores, "count.give_up") == 1  # PermanentJobError: no retry
    assert worker.jobs_failed == 2 and worker.jobs_retried == 2
    failed = [r for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "job.failed"]
    assert {(r.msg["job"], r.msg["job_id"]) for r in failed} == {  # type: ignore[index]
        ("tests.fail", job_id),
        ("tests.give_up", quitter_id),
    }
    assert SECRET not in caplog.text
    assert all(SECRET not in str(r.msg) and SECRET not in r.getMessage() for r in caplog.records)


async def test_cleanup_deletes_only_rows_relayed_long_ago(stores: Stores) -> None:
    for key in ("old", "recent", "pending"):
        await enqueue(stores, "tests.count", Count(f"count.{key}"), job_id=key)
    async with db.connection(stores.pool, stores.settings) as conn:
        await conn.execute("UPDATE outbox SET enqueued_at = now() - interval '8 days' WHERE job_id = 'old'")
        await conn.execute("UPDATE outbox SET enqueued_at = now() - interval '1 day' WHERE job_id = 'recent'")
        await conn.execute(
            "UPDATE outbox SET created_at = now() - interval '30 days' WHERE job_id = 'pending'"
        )
    assert await cleanup_outbox(stores, keep_days=7) == 1
    async with db.connection(stores.pool, stores.settings) as conn:
        left = {row["job_id"] for row in await conn.fetch("SELECT job_id FROM outbox")}
    assert left == {"recent", "pending"}


# --- the relay loop -------------------------------------------------------------------------------------


async def test_relay_loop_wakes_on_notify_and_rides_out_a_redis_outage(
    stores: Stores, settings: Settings
) -> None:
    assert settings.redis_url
    # A poll far longer than the test: only the NOTIFY can wake the relay in time.
    slow_poll = Stores(msgspec.structs.replace(settings, jobs_relay_poll=60.0), stores.pool, stores.redis)
    proxy = proxy_for(settings.redis_url)
    queue = open_queue(settings, through_proxy(settings.redis_url, proxy))
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(slow_poll, queue, stop))
    try:
        await asyncio.sleep(0.5)  # let it drain, start listening and go to sleep
        await enqueue(stores, "tests.count", Count("count.notified"))
        assert await eventually(lambda: _is_zero(pending(stores)), timeout=3)

        proxy.down()
        await enqueue(stores, "tests.count", Count("count.during_outage"))
        await asyncio.sleep(1.5)
        assert await pending(stores) == 1
        assert not relay.done()

        proxy.up()
        assert await eventually(lambda: _is_zero(pending(stores)), timeout=10)
        assert await stores.redis.zcard(QUEUE_NAME) == 2
    finally:
        stop.set()
        await asyncio.wait_for(relay, timeout=5)
        await close_queue(queue)
        proxy.close()


async def test_relay_loop_rides_out_a_postgres_outage(
    settings: Settings, stores: Stores, queue: Queue
) -> None:
    assert settings.database_url
    proxy = proxy_for(settings.database_url)
    proxied = msgspec.structs.replace(
        settings,
        database_url=through_proxy(settings.database_url, proxy),
        jobs_relay_poll=60.0,
        db_acquire_timeout=0.5,
    )
    relay_stores = await open_stores(proxied)
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(relay_stores, queue, stop))
    try:
        await asyncio.sleep(0.5)
        proxy.down()
        await enqueue(stores, "tests.count", Count("count.during_outage"))
        await asyncio.sleep(1.5)
        assert await pending(stores) == 1
        assert not relay.done()

        proxy.up()
        assert await eventually(lambda: _is_zero(pending(stores)), timeout=15)
        # The LISTEN connection came back too: a new row is relayed long before the 60 s poll.
        await asyncio.sleep(0.5)
        await enqueue(stores, "tests.count", Count("count.after_outage"))
        assert await eventually(lambda: _is_zero(pending(stores)), timeout=3)
    finally:
        stop.set()
        await asyncio.wait_for(relay, timeout=5)
        await close_stores(relay_stores)
        proxy.close()


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0
