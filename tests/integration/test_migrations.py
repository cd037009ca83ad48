"""`tongban db upgrade` is idempotent and safe to run from two machines at the same moment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from core import migrate
from tests.support.dburl import run_database_name, with_database
from tests.support.server import ROOT, tongban_env

SCHEMA_QUERY = """
    SELECT table_name, column_name, data_type FROM information_schema.columns
    WHERE table_schema = 'public' ORDER BY table_name, ordinal_position
"""


@pytest.fixture()
async def fresh_database(base_database_url: str) -> AsyncIterator[str]:
    name = run_database_name(os.environ["TONGBAN_TEST_RUN"], "_mig")
    admin = await asyncpg.connect(base_database_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(base_database_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _schema(url: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(SCHEMA_QUERY)]
    finally:
        await conn.close()


async def test_upgrade_twice_is_a_no_op(fresh_database: str) -> None:
    migrate.upgrade(fresh_database)
    first = await _schema(fresh_database)
    migrate.upgrade(fresh_database)
    assert await _schema(fresh_database) == first
    assert migrate.current(fresh_database) == migrate.head()


async def test_downgrade_to_base_and_back(fresh_database: str) -> None:
    migrate.upgrade(fresh_database)
    full = await _schema(fresh_database)
    migrate.downgrade(fresh_database, "base")
    assert migrate.current(fresh_database) is None
    assert [row for row in await _schema(fresh_database) if row[0] != "alembic_version"] == []
    migrate.upgrade(fresh_database)
    assert await _schema(fresh_database) == full


async def test_concurrent_upgrades_leave_one_correct_schema(
    fresh_database: str, base_database_url: str
) -> None:
    reference = run_database_name(os.environ["TONGBAN_TEST_RUN"], "_ref")
    env = tongban_env(TONGBAN_DATABASE_URL=fresh_database)
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "scripts.cli", "db", "upgrade"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    assert migrate.current(fresh_database) == migrate.head()

    admin = await asyncpg.connect(base_database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{reference}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{reference}"')
        reference_url = with_database(base_database_url, reference)
        migrate.upgrade(reference_url)
        assert await _schema(fresh_database) == await _schema(reference_url)
        conn = await asyncpg.connect(fresh_database)
        try:
            assert await conn.fetchval("SELECT count(*) FROM alembic_version") == 1
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{reference}" WITH (FORCE)')
        await admin.close()
