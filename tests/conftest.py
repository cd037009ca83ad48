"""Test stores: real PostgreSQL and Redis. With TONGBAN_DATABASE_URL / TONGBAN_REDIS_URL set those servers
are used; otherwise an embedded PostgreSQL and Valkey are started once for the run. Each xdist worker gets
its own migrated database and its own Redis database index."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis as sync_redis
from litestar.testing import AsyncTestClient

from core import migrate
from core.embedded import EmbeddedStores, ensure_stores
from core.settings import Settings, get_settings
from core.stores import Stores, close_stores, open_stores
from tests.support.dburl import redis_index, run_database_name, with_database, with_redis_db, worker_number

ROOT = Path(__file__).resolve().parents[1]
_embedded: EmbeddedStores | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _embedded
    if hasattr(config, "workerinput"):
        return  # xdist workers inherit the controller's environment
    os.environ.setdefault("TONGBAN_TEST_RUN", secrets.token_hex(3))
    os.environ.setdefault("TONGBAN_LOG_JSON", "true")
    if not os.environ.get("TONGBAN_DATABASE_URL") or not os.environ.get("TONGBAN_REDIS_URL"):
        _embedded = ensure_stores(
            os.environ.get("TONGBAN_DATABASE_URL") or None,
            os.environ.get("TONGBAN_REDIS_URL") or None,
            str(ROOT / ".tongban" / "test"),
        )
        os.environ["TONGBAN_TEST_EMBEDDED"] = "1"
    os.environ["TONGBAN_BASE_DATABASE_URL"] = os.environ["TONGBAN_DATABASE_URL"]
    os.environ["TONGBAN_BASE_REDIS_URL"] = os.environ["TONGBAN_REDIS_URL"]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _embedded is not None and not hasattr(config, "workerinput"):
        _embedded.stop()


async def _recreate_database(base_url: str, name: str) -> None:
    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(base_url: str, name: str) -> None:
    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def base_database_url() -> str:
    return os.environ["TONGBAN_BASE_DATABASE_URL"]


@pytest.fixture(scope="session")
def base_redis_url() -> str:
    return os.environ["TONGBAN_BASE_REDIS_URL"]


@pytest.fixture(scope="session", autouse=True)
def test_environment(base_database_url: str, base_redis_url: str) -> Iterator[Settings]:
    """This worker's database (migrated) and Redis index, exported so that get_settings() and any server
    process a test starts use them."""
    name = run_database_name(os.environ["TONGBAN_TEST_RUN"])
    asyncio.run(_recreate_database(base_database_url, name))
    database_url = with_database(base_database_url, name)
    migrate.upgrade(database_url)
    redis_url = with_redis_db(base_redis_url, redis_index())
    sync_redis.Redis.from_url(redis_url).flushdb()
    os.environ["TONGBAN_DATABASE_URL"] = database_url
    os.environ["TONGBAN_REDIS_URL"] = redis_url
    os.environ["TONGBAN_DATA_DIR"] = str(ROOT / ".tongban" / "test" / f"data-{worker_number()}")
    os.environ.setdefault("TONGBAN_MASTER_KEY_FILE", str(ROOT / ".tongban" / "test" / "master.key"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    asyncio.run(_drop_database(base_database_url, name))


@pytest.fixture
def own_database(base_database_url: str, test_environment: Settings) -> Iterator[str]:
    """A fresh migrated database for one test whose servers must see no other test's rows (a whole-day
    reconciliation compares everything of that day). Pass it as TONGBAN_DATABASE_URL to the processes."""
    name = run_database_name(os.environ["TONGBAN_TEST_RUN"], "_own")
    asyncio.run(_recreate_database(base_database_url, name))
    database_url = with_database(base_database_url, name)
    migrate.upgrade(database_url)
    yield database_url
    asyncio.run(_drop_database(base_database_url, name))


@pytest.fixture(scope="session")
def settings(test_environment: Settings) -> Settings:
    return test_environment


@pytest.fixture(scope="session")
async def stores(settings: Settings) -> AsyncIterator[Stores]:
    opened = await open_stores(settings)
    yield opened
    await close_stores(opened)


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The app in process (same handlers, middleware and error mapping as the server)."""
    from api.app import create_app

    app = create_app(settings)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client
