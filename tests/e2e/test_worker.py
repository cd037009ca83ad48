"""`tongban worker` as a real process: outbox rows written here are relayed and run there; SIGTERM stops it."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from core import db
from core.jobs import Ping, enqueue_in_tx
from core.settings import Settings
from core.stores import Stores
from tests.support.proxy import proxy_for, through_proxy
from tests.support.server import Process, free_port, start, tongban_env

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
async def clean(stores: Stores) -> None:
    async with db.connection(stores.pool, stores.settings) as conn:
        await conn.execute("TRUNCATE outbox")
        await conn.execute("DELETE FROM app_meta WHERE key LIKE 'ping.%'")
    await stores.redis.flushdb()


async def ping(stores: Stores, key: str, value: object, hold_seconds: float = 0.0) -> None:
    async with db.transaction(stores.pool, stores.settings) as conn:
        await enqueue_in_tx(conn, "core.ping", Ping(key=key, value=value, hold_seconds=hold_seconds))


async def meta(stores: Stores, key: str, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        async with db.connection(stores.pool, stores.settings) as conn:
            raw = await conn.fetchval("SELECT value FROM app_meta WHERE key = $1", key)
        if raw is not None or time.monotonic() > deadline:
            return None if raw is None else msgspec.json.decode(raw)
        await asyncio.sleep(0.1)


async def wait_started(process: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while "worker.started" not in process.log():
        if process.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {process.proc.returncode}:\n{process.log()}")
        if time.monotonic() > deadline:
            process.stop()
            raise TimeoutError(f"worker not started after {timeout}s:\n{process.log()}")
        await asyncio.sleep(0.1)


@pytest.fixture()
async def worker(tmp_path: Path, stores: Stores) -> AsyncIterator[Process]:
    # A row committed before the worker starts is picked up on start.
    await ping(stores, "ping.before_start", "early")
    process = start(["worker"], tongban_env(), tmp_path / "worker.log", free_port())
    try:
        await wait_started(process)
        yield process
    finally:
        process.stop()


async def test_sigterm_in_the_middle_of_a_job_stops_cleanly(worker: Process, stores: Stores) -> None:
    # The job writes, then holds for 30 s: SIGTERM arrives while it runs (arq cancels it and runs it again
    # later); the worker must still exit 0 without a traceback.
    await ping(stores, "ping.long", "running", hold_seconds=30)
    assert await meta(stores, "ping.long", timeout=10) == "running", worker.log()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0, worker.log()
    log = worker.log()
    assert "worker.stopped" in log and "Traceback" not in log


async def test_worker_runs_outbox_jobs_and_stops_cleanly_on_sigterm(worker: Process, stores: Stores) -> None:
    assert await meta(stores, "ping.before_start", timeout=10) == "early"
    started = time.monotonic()
    await ping(stores, "ping.e2e", {"hello": "通办"})
    assert await meta(stores, "ping.e2e", timeout=10) == {"hello": "通办"}, worker.log()
    assert time.monotonic() - started < 5

    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0, worker.log()
    log = worker.log()
    assert "worker.stopped" in log
    assert "Traceback" not in log
    async with db.connection(stores.pool, stores.settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE enqueued_at IS NULL") == 0


async def test_worker_rides_out_a_redis_outage(tmp_path: Path, settings: Settings, stores: Stores) -> None:
    assert settings.redis_url
    proxy = proxy_for(settings.redis_url)
    env = tongban_env(TONGBAN_REDIS_URL=through_proxy(settings.redis_url, proxy))
    process = start(["worker"], env, tmp_path / "worker.log", free_port())
    try:
        await wait_started(process)
        await ping(stores, "ping.before_outage", 1)
        assert await meta(stores, "ping.before_outage", timeout=10) == 1, process.log()

        proxy.down()
        await ping(stores, "ping.during_outage", 2)
        await asyncio.sleep(2)
        assert process.proc.poll() is None, process.log()
        assert await meta(stores, "ping.during_outage", timeout=0) is None

        proxy.up()
        assert await meta(stores, "ping.during_outage", timeout=20) == 2, process.log()
        assert process.stop() == 0, process.log()
        assert "worker.redis_unavailable" in process.log() or "relay.store_unavailable" in process.log()
    finally:
        process.stop()
        proxy.close()
