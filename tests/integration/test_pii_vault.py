"""The PII vault against the real PostgreSQL: round trips, AAD binding, tampering, the access log, SM4,
rotation and re-encryption, and a scan of the stored bytes for plaintext."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.pii import (
    PiiDecryptError,
    PiiError,
    PiiKeyInfo,
    Vault,
    describe,
    list_keys,
    normalize_id_number,
    open_vault,
    reencrypt_batch,
    rotate_data_key,
)
from core.stores import Stores

READ = {"actor": "test:pii", "reason": "integration test"}


@pytest.fixture(scope="module")
async def vault(stores: Stores) -> Vault:
    return await open_vault(stores)


@pytest.fixture
async def conn(stores: Stores) -> AsyncIterator[asyncpg.Connection]:
    async with stores.pool.acquire() as connection:
        yield connection


@pytest.fixture
async def sample_table(stores: Stores) -> AsyncIterator[str]:
    """A table shaped like a caller's: encrypted columns and a blind index next to plain ones."""
    async with stores.pool.acquire() as connection:
        await connection.execute(
            "CREATE TABLE pii_sample (id bigint PRIMARY KEY, name_enc bytea, id_number_enc bytea,"
            " id_number_bidx bytea, note text)"
        )
    yield "pii_sample"
    async with stores.pool.acquire() as connection:
        await connection.execute("DROP TABLE pii_sample")


def _sm(stores: Stores) -> Stores:
    return Stores(
        settings=msgspec.structs.replace(stores.settings, pii_cipher="sm4-gcm"),
        pool=stores.pool,
        redis=stores.redis,
    )


async def _log_rows(conn: asyncpg.Connection, actor: str) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT * FROM pii_access_log WHERE actor = $1 ORDER BY id", actor))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.text(),
    row_id=st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.uuids(),
        # Row ids are text PostgreSQL can store: no NUL, no lone surrogates (not UTF-8 encodable).
        st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), min_size=1).filter(
            str.strip
        ),
    ),
)
async def test_round_trip_of_any_unicode(
    vault: Vault, conn: asyncpg.Connection, value: str, row_id: Any
) -> None:
    blob = await vault.encrypt(conn, value, table="people", column="name_enc", row_id=row_id)
    assert describe(blob).algorithm == "aes-256-gcm"
    assert await vault.decrypt(conn, blob, table="people", column="name_enc", row_id=row_id, **READ) == value


async def test_large_values_round_trip_off_the_event_loop(vault: Vault, conn: asyncpg.Connection) -> None:
    value = "长" * 100_000  # 300 KB of UTF-8: sealed and opened in a worker thread
    blob = await vault.encrypt(conn, value, table="documents", column="body_enc", row_id=1)
    assert await vault.decrypt(conn, blob, table="documents", column="body_enc", row_id=1, **READ) == value


async def test_same_value_encrypts_differently_each_time(vault: Vault, conn: asyncpg.Connection) -> None:
    one = await vault.encrypt(conn, "张三", table="people", column="name_enc", row_id=1)
    two = await vault.encrypt(conn, "张三", table="people", column="name_enc", row_id=1)
    assert one != two


async def test_ciphertext_is_bound_to_table_column_and_row(
    vault: Vault, conn: asyncpg.Connection, sample_table: str
) -> None:
    first = await vault.encrypt(conn, "张三", table=sample_table, column="name_enc", row_id=1)
    second = await vault.encrypt(conn, "李四", table=sample_table, column="name_enc", row_id=2)
    await conn.executemany("INSERT INTO pii_sample (id, name_enc) VALUES ($1, $2)", [(1, first), (2, second)])
    # Someone with write access copies row 1's name over row 2's, and into the ID number column.
    await conn.execute("UPDATE pii_sample SET name_enc = $1, id_number_enc = $1 WHERE id = 2", first)
    moved = await conn.fetchval("SELECT name_enc FROM pii_sample WHERE id = 2")
    assert moved == first
    with pytest.raises(PiiDecryptError):
        await vault.decrypt(conn, moved, table=sample_table, column="name_enc", row_id=2, **READ)
    with pytest.raises(PiiDecryptError):
        await vault.decrypt(conn, moved, table=sample_table, column="id_number_enc", row_id=2, **READ)
    with pytest.raises(PiiDecryptError):
        await vault.decrypt(conn, moved, table="other_table", column="name_enc", row_id=1, **READ)
    assert await vault.decrypt(conn, moved, table=sample_table, column="name_enc", row_id=1, **READ) == "张三"


async def test_tampering_with_any_byte_fails(vault: Vault, conn: asyncpg.Connection) -> None:
    blob = await vault.encrypt(conn, "210102199001011234", table="people", column="id_number_enc", row_id=5)
    context: dict[str, Any] = {"table": "people", "column": "id_number_enc", "row_id": 5, **READ}
    header = 6  # version, cipher, key id: every value tried there (e.g. relabelled as SM4 or another key)
    for position in range(len(blob)):
        for flip in range(1, 256) if position < header else (0x01, 0x80):
            tampered = blob[:position] + bytes([blob[position] ^ flip]) + blob[position + 1 :]
            with pytest.raises(PiiDecryptError):
                await vault.decrypt(conn, tampered, **context)
    for broken in (blob[:-1], blob + b"\x00", b"", blob[:18]):
        with pytest.raises(PiiDecryptError):
            await vault.decrypt(conn, broken, **context)
    assert await vault.decrypt(conn, blob, **context) == "210102199001011234"


async def test_every_decrypt_writes_exactly_one_log_row(vault: Vault, conn: asyncpg.Connection) -> None:
    actor = f"staff:{secrets.token_hex(4)}"
    blob = await vault.encrypt(conn, "欧阳娜娜", table="people", column="name_enc", row_id=77)
    assert await _log_rows(conn, actor) == []  # encrypting is not an access
    for number in range(3):
        value = await vault.decrypt(
            conn, blob, table="people", column="name_enc", row_id=77, actor=actor, reason=f"appeal {number}"
        )
        assert value == "欧阳娜娜"
        assert len(await _log_rows(conn, actor)) == number + 1
    with pytest.raises(PiiDecryptError):
        await vault.decrypt(
            conn, blob, table="people", column="name_enc", row_id=78, actor=actor, reason="probe"
        )
    rows = await _log_rows(conn, actor)
    assert [row["reason"] for row in rows] == ["appeal 0", "appeal 1", "appeal 2", "probe"]
    assert [row["succeeded"] for row in rows] == [True, True, True, False]
    assert {(row["table_name"], row["column_name"]) for row in rows} == {("people", "name_enc")}
    assert [row["row_id"] for row in rows] == ["77", "77", "77", "78"]
    assert {row["key_id"] for row in rows} == {describe(blob).key_id}


@pytest.mark.parametrize("missing", ["actor", "reason"])
async def test_decrypt_requires_actor_and_reason(
    vault: Vault, conn: asyncpg.Connection, missing: str
) -> None:
    actor = f"staff:{secrets.token_hex(4)}"
    blob = await vault.encrypt(conn, "张三", table="people", column="name_enc", row_id=1)
    who = {"actor": actor, "reason": "support ticket", missing: "  "}
    with pytest.raises(PiiError):
        await vault.decrypt(conn, blob, table="people", column="name_enc", row_id=1, **who)
    assert await _log_rows(conn, actor) == []


@pytest.mark.parametrize("row_id", ["", "  ", "1\x002"])
async def test_blank_or_nul_row_ids_are_refused(vault: Vault, conn: asyncpg.Connection, row_id: str) -> None:
    with pytest.raises(PiiError):
        await vault.encrypt(conn, "张三", table="people", column="name_enc", row_id=row_id)


async def test_blind_index_key_is_stored_and_stable_across_processes(stores: Stores, vault: Vault) -> None:
    again = await open_vault(stores)  # as another process would
    value = "21010219900101123x"
    index = vault.blind_index(value, purpose="accounts.id_number", normalize=normalize_id_number)
    assert (
        again.blind_index(value.upper(), purpose="accounts.id_number", normalize=normalize_id_number) == index
    )
    assert again.index_key_id == vault.index_key_id
    kinds = {(key.kind, key.algorithm) for key in await _keys(stores) if key.status == "active"}
    assert ("index", "hmac-sha256") in kinds


async def _keys(stores: Stores) -> list[PiiKeyInfo]:
    async with stores.pool.acquire() as connection:
        return await list_keys(connection)


async def test_sm4_round_trip_and_readable_by_an_aes_process(
    stores: Stores, vault: Vault, conn: asyncpg.Connection
) -> None:
    sm_vault = await open_vault(_sm(stores))
    blob = await sm_vault.encrypt(conn, "欧阳娜娜", table="people", column="name_enc", row_id=9)
    assert describe(blob).algorithm == "sm4-gcm"
    assert (
        await sm_vault.decrypt(conn, blob, table="people", column="name_enc", row_id=9, **READ) == "欧阳娜娜"
    )
    # Values carry their key id, so a process configured for AES still reads them (and vice versa).
    assert await vault.decrypt(conn, blob, table="people", column="name_enc", row_id=9, **READ) == "欧阳娜娜"
    aes_blob = await vault.encrypt(conn, "张三", table="people", column="name_enc", row_id=9)
    assert (
        await sm_vault.decrypt(conn, aes_blob, table="people", column="name_enc", row_id=9, **READ) == "张三"
    )
    with pytest.raises(PiiDecryptError):
        await sm_vault.decrypt(conn, blob, table="people", column="name_enc", row_id=10, **READ)
    sm_keys = {key.id: key for key in await _keys(stores)}
    data_key = sm_keys[describe(blob).key_id]
    assert (data_key.algorithm, data_key.wrapped_with) == ("sm4-gcm", "sm4-gcm")
    assert sm_keys[sm_vault.index_key_id].algorithm == "hmac-sm3"
    assert sm_vault.blind_index("张三", purpose="p") != vault.blind_index("张三", purpose="p")


async def test_rotation_keeps_old_values_readable(
    stores: Stores, vault: Vault, conn: asyncpg.Connection
) -> None:
    other_process = await open_vault(stores)
    before = await vault.encrypt(conn, "张三", table="people", column="name_enc", row_id=3)
    rotated = await rotate_data_key(stores)
    after = await vault.encrypt(conn, "李四", table="people", column="name_enc", row_id=3)
    assert describe(after).key_id == rotated.id != describe(before).key_id
    assert (
        await other_process.decrypt(conn, before, table="people", column="name_enc", row_id=3, **READ)
        == "张三"
    )
    assert (
        await other_process.decrypt(conn, after, table="people", column="name_enc", row_id=3, **READ)
        == "李四"
    )
    statuses = {key.id: key.status for key in await _keys(stores)}
    assert statuses[describe(before).key_id] == "retired"
    assert statuses[rotated.id] == "active"


async def test_reencrypt_batches_move_values_to_the_active_key(
    stores: Stores, vault: Vault, conn: asyncpg.Connection, sample_table: str
) -> None:
    names = {row_id: f"名字{row_id}" for row_id in range(1, 8)}
    for row_id, name in names.items():
        blob = await vault.encrypt(conn, name, table=sample_table, column="name_enc", row_id=row_id)
        await conn.execute("INSERT INTO pii_sample (id, name_enc) VALUES ($1, $2)", row_id, blob)
    await conn.execute("INSERT INTO pii_sample (id) VALUES (100)")  # a row without the value
    # One value someone corrupted: it must be skipped, logged as failed, and not stop the job.
    await conn.execute("UPDATE pii_sample SET name_enc = name_enc || '\\x00'::bytea WHERE id = 4")
    old = await conn.fetch("SELECT id, name_enc FROM pii_sample ORDER BY id")
    rotated = await rotate_data_key(stores)
    actor = f"job:{secrets.token_hex(4)}"

    batches, after = [], None
    while True:
        batch = await reencrypt_batch(
            stores, vault, table=sample_table, column="name_enc", after=after, limit=3, actor=actor
        )
        batches.append(batch)
        after = batch.last_row_id
        if batch.done:
            break
    assert sum(b.reencrypted for b in batches) == 6
    assert sum(b.failed for b in batches) == 1
    rows = {row["id"]: row["name_enc"] for row in await conn.fetch("SELECT id, name_enc FROM pii_sample")}
    for row_id, name in names.items():
        if row_id == 4:
            assert rows[4] == next(r["name_enc"] for r in old if r["id"] == 4)
            continue
        assert describe(rows[row_id]).key_id == rotated.id
        decrypted = await vault.decrypt(
            conn, rows[row_id], table=sample_table, column="name_enc", row_id=row_id, **READ
        )
        assert decrypted == name
    assert rows[100] is None
    logged = await _log_rows(conn, actor)
    assert sorted(row["row_id"] for row in logged) == sorted(str(i) for i in names)
    assert [row["row_id"] for row in logged if not row["succeeded"]] == ["4"]
    # Nothing left to do: a second pass scans only the corrupted row and changes nothing.
    again = await reencrypt_batch(stores, vault, table=sample_table, column="name_enc", actor=actor)
    assert (again.scanned, again.reencrypted, again.done) == (1, 0, True)
    assert await vault.reencrypt(conn, rows[1], table=sample_table, column="name_enc", row_id=1) is None


async def test_reencrypt_batch_refuses_odd_identifiers(stores: Stores, vault: Vault) -> None:
    with pytest.raises(PiiError):
        await reencrypt_batch(stores, vault, table="people; DROP TABLE pii_keys", column="name_enc")


async def test_stored_bytes_contain_no_plaintext(
    stores: Stores, vault: Vault, conn: asyncpg.Connection, sample_table: str
) -> None:
    marker = secrets.token_hex(6)
    people = [(1, f"欧阳{marker}", "21010219900101123X"), (2, f"Zhang {marker}", "110101200001018888")]
    sm_vault = await open_vault(_sm(stores))
    for row_id, name, id_number in people:
        encrypting = vault if row_id == 1 else sm_vault
        await conn.execute(
            "INSERT INTO pii_sample (id, name_enc, id_number_enc, id_number_bidx, note) VALUES ($1, $2, $3, $4, $5)",
            row_id,
            await encrypting.encrypt(conn, name, table=sample_table, column="name_enc", row_id=row_id),
            await encrypting.encrypt(
                conn, id_number, table=sample_table, column="id_number_enc", row_id=row_id
            ),
            vault.blind_index(id_number, purpose="sample.id_number", normalize=normalize_id_number),
            "plain note",
        )
        stored = await conn.fetchrow("SELECT name_enc, id_number_enc FROM pii_sample WHERE id = $1", row_id)
        for column in ("name_enc", "id_number_enc"):
            await vault.decrypt(
                conn, stored[column], table=sample_table, column=column, row_id=row_id, **READ
            )

    secrets_in_clear = [value for _, name, id_number in people for value in (name, id_number, marker)]
    secrets_in_clear += [id_number.lower() for _, _, id_number in people]
    needles = [value.encode() for value in secrets_in_clear]
    needles += [value.encode("utf-16-le") for value in secrets_in_clear]
    needles += [value.encode().hex().encode() for value in secrets_in_clear]
    # The unwrapped key material must not be stored either.
    needles += [cached.material for v in (vault, sm_vault) for cached, _ in v._keys.values()]
    needles += [vault._index_key, sm_vault._index_key]
    assert len(needles) > 3 * len(secrets_in_clear)

    scanned = 0
    every_column = {
        "pii_keys": "SELECT t.*, t::text AS row_text FROM pii_keys t",
        "pii_access_log": "SELECT t.*, t::text AS row_text FROM pii_access_log t",
        "pii_sample": "SELECT t.*, t::text AS row_text FROM pii_sample t",
    }
    for table, query in every_column.items():
        for row in await conn.fetch(query):
            for value in row.values():
                raw = value if isinstance(value, bytes) else str(value).encode()
                scanned += 1
                for needle in needles:
                    assert needle not in raw, f"plaintext found in {table}"
    assert scanned > 20
    assert "plain note" in str(await conn.fetch("SELECT note FROM pii_sample"))  # the scan can see text
