"""Master-key rotation (rewrap) and the data-key cache, in a database of their own: these tests change the
master keyring, which the rest of the suite's database must not see."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import pytest

from core import migrate
from core.masterkey import key_id, new_key_text
from core.pii import PiiError, describe, list_keys, normalize_id_number, open_vault, rewrap, rotate_data_key
from core.settings import Settings, SettingsError
from core.stores import Stores, close_stores, open_stores
from tests.support.dburl import with_database, worker_name

OLD_KEY, NEW_KEY = new_key_text(), new_key_text()
READ = {"actor": "test:rotation", "reason": "integration test"}
OpenWith = Callable[..., Awaitable[Stores]]


@pytest.fixture(scope="module")
async def database_url(base_database_url: str) -> AsyncIterator[str]:
    name = f"tb_{os.environ['TONGBAN_TEST_RUN']}_{worker_name()}_pii"
    admin = await asyncpg.connect(base_database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = with_database(base_database_url, name)
        await asyncio.to_thread(migrate.upgrade, url)
        yield url
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def open_with(database_url: str, settings: Settings) -> AsyncIterator[OpenWith]:
    """open_with(master_key=..., **settings) -> Stores on the private database; all closed afterwards."""
    opened: list[Stores] = []

    async def make(master_key: str, **changes: object) -> Stores:
        configured = msgspec.structs.replace(
            settings, database_url=database_url, master_key=master_key, master_key_file=None, **changes
        )
        stores = await open_stores(configured)
        opened.append(stores)
        return stores

    yield make
    for stores in opened:
        await close_stores(stores)


async def test_rewrap_moves_every_key_to_the_new_master_key(open_with: OpenWith) -> None:
    old = await open_with(OLD_KEY)
    aes_vault = await open_vault(old)
    sm_vault = await open_vault(await open_with(OLD_KEY, pii_cipher="sm4-gcm"))
    async with old.pool.acquire() as conn:
        await conn.execute("CREATE TABLE people (id int PRIMARY KEY, name_enc bytea, id_bidx bytea)")
        for row_id, vault, name in ((1, aes_vault, "张三"), (2, sm_vault, "欧阳娜娜")):
            blob = await vault.encrypt(conn, name, table="people", column="name_enc", row_id=row_id)
            index = vault.blind_index(
                "21010219900101123X", purpose="people.id", normalize=normalize_id_number
            )
            await conn.execute("INSERT INTO people VALUES ($1, $2, $3)", row_id, blob, index)
        stored_before = await conn.fetch("SELECT * FROM people ORDER BY id")
        keys_before = await list_keys(conn)
    assert {key.master_key_id for key in keys_before} == {key_id(_raw(OLD_KEY))}
    assert {key.wrapped_with for key in keys_before} == {"aes-256-gcm", "sm4-gcm"}

    # A keyring without the old key cannot rewrap: the run stops and changes nothing.
    with pytest.raises(SettingsError):
        await rewrap(await open_with(NEW_KEY))
    async with old.pool.acquire() as conn:
        assert await list_keys(conn) == keys_before

    rotating = await open_with(f"{NEW_KEY},{OLD_KEY}")
    result = await rewrap(rotating)
    assert (result.rewrapped, result.unchanged) == (len(keys_before), 0)
    assert result.master_key_id == key_id(_raw(NEW_KEY))
    again = await rewrap(rotating)
    assert (again.rewrapped, again.unchanged) == (0, len(keys_before))

    new_only = await open_with(NEW_KEY)
    async with new_only.pool.acquire() as conn:
        keys_after = await list_keys(conn)
        assert {key.master_key_id for key in keys_after} == {result.master_key_id}
        assert all(key.rewrapped_at is not None for key in keys_after)
        assert [(k.id, k.algorithm, k.status) for k in keys_after] == [
            (k.id, k.algorithm, k.status) for k in keys_before
        ]
        # The encrypted values were not touched, and they decrypt with only the new master key.
        assert await conn.fetch("SELECT * FROM people ORDER BY id") == stored_before
        for new_vault in (
            await open_vault(new_only),
            await open_vault(await open_with(NEW_KEY, pii_cipher="sm4-gcm")),
        ):
            for row in stored_before:
                name = await new_vault.decrypt(
                    conn, row["name_enc"], table="people", column="name_enc", row_id=row["id"], **READ
                )
                assert name == {1: "张三", 2: "欧阳娜娜"}[row["id"]]
            index = new_vault.blind_index(
                "21010219900101123x", purpose="people.id", normalize=normalize_id_number
            )
            assert index in {row["id_bidx"] for row in stored_before}
    # The old master key alone no longer opens anything.
    with pytest.raises(SettingsError):
        await open_vault(await open_with(OLD_KEY))

    rotated = await rotate_data_key(new_only)
    assert rotated.master_key_id == result.master_key_id
    assert rotated.id not in {key.id for key in keys_before}


async def test_data_keys_are_cached_for_the_configured_time(open_with: OpenWith) -> None:
    stores = await open_with(NEW_KEY, pii_key_cache_seconds=0.5)
    vault = await open_vault(stores)
    context: dict[str, Any] = {"table": "people", "column": "name_enc", "row_id": 1, **READ}
    async with stores.pool.acquire() as conn:
        blob = await vault.encrypt(conn, "张三", table="people", column="name_enc", row_id=1)
        with pytest.raises(_Rollback):
            async with conn.transaction():
                # Spoil the stored key in a transaction that rolls back: only a cached copy can decrypt now.
                await conn.execute(
                    "UPDATE pii_keys SET wrapped_key = '\\x00'::bytea WHERE id = $1", describe(blob).key_id
                )
                assert await vault.decrypt(conn, blob, **context) == "张三"
                uncached = await open_vault(await open_with(NEW_KEY, pii_key_cache_seconds=0))
                with pytest.raises(PiiError, match="does not unwrap"):
                    await uncached.decrypt(conn, blob, **context)
                await asyncio.sleep(0.6)
                with pytest.raises(PiiError, match="does not unwrap"):  # the cached copy has expired
                    await vault.decrypt(conn, blob, **context)
                raise _Rollback
        assert await vault.decrypt(conn, blob, **context) == "张三"


class _Rollback(Exception):
    pass


def _raw(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
