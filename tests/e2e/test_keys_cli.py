"""`tongban keys` as a real process, as an operator runs it."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys

import pytest

from core import clock, keys
from core.masterkey import master_keyring, new_key_text
from core.settings import Settings
from core.stores import Stores
from tests.support.server import ROOT, tongban_env

pytestmark = pytest.mark.e2e


async def tongban(*args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.cli",
        *args,
        cwd=ROOT,
        env=tongban_env(COLUMNS="220", **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_rotate_then_list_print_the_keys(stores: Stores) -> None:
    purpose = "cli" + secrets.token_hex(4)

    code, out, err = await tongban("keys", "rotate", purpose)
    assert code == 0, err
    first = {k.status: k for k in await keys.list_keys(stores, purpose)}
    assert set(first) == {"active", "next"}
    assert "first keys made" in out and first["active"].kid in out and first["next"].kid in out

    code, out, err = await tongban("keys", "rotate", purpose)
    assert code == 0, err
    second = {k.status: k for k in await keys.list_keys(stores, purpose)}
    assert second["retired"].kid == first["active"].kid and second["active"].kid == first["next"].kid
    lines = {
        line.split()[1]: line for line in out.splitlines() if line.split()[1:2] and len(line.split()[1]) == 43
    }
    assert "retired" in lines[first["active"].kid] and "active" in lines[first["next"].kid]
    assert "next" in lines[second["next"].kid]

    code, out, err = await tongban("keys", "list", "--purpose", purpose)
    assert code == 0, err
    for info in second.values():
        row = next(line for line in out.splitlines() if info.kid in line)
        assert info.status in row and info.purpose in row and "ES256" in row
        assert info.master_key_id in row
        assert clock.for_display(info.created_at) in row  # Asia/Shanghai, not UTC
    assert clock.for_display(second["retired"].retired_at) in out  # type: ignore[arg-type]
    assert "Asia/Shanghai" in out
    assert "BEGIN" not in out and "PRIVATE" not in out

    code, out, err = await tongban("keys", "list", "--purpose", "nosuch" + secrets.token_hex(3))
    assert code == 0 and "no signing keys" in out


async def test_rewrap_reports_and_a_missing_master_key_is_one_line(stores: Stores) -> None:
    await keys.ensure_keys(stores, "cli" + secrets.token_hex(4))
    total = len(await keys.list_keys(stores))

    code, out, err = await tongban("keys", "rewrap")
    assert code == 0, err
    assert f"rewrapped 0 of {total} signing keys under master key" in out

    code, out, err = await tongban("keys", "rewrap", TONGBAN_MASTER_KEY=new_key_text())
    assert code == 2
    assert err.startswith("tongban: TONGBAN_MASTER_KEY:") and err.count("\n") == 1
    assert master_keyring(stores.settings).current_id in err
    assert "Traceback" not in err + out
    # Nothing moved.
    assert {k.master_key_id for k in await keys.list_keys(stores)} == {
        master_keyring(stores.settings).current_id
    }


async def test_a_bad_purpose_is_refused_in_one_line() -> None:
    code, _, err = await tongban("keys", "rotate", "Not A Purpose")
    assert code == 1
    assert err.startswith("tongban: purpose:") and "Traceback" not in err


def test_rotate_pii_makes_a_new_data_key_and_old_values_still_decrypt(settings: Settings) -> None:
    """`tongban keys rotate pii`: a new active PII data key; values sealed under the old one keep decrypting."""
    import asyncio

    from core.db import transaction
    from core.stores import close_stores, open_stores

    async def seal() -> bytes:
        stores = await open_stores(settings)
        try:
            vault = await stores.vault()
            async with transaction(stores.pool, settings) as conn:
                return await vault.encrypt(conn, "张三", table="t", column="c", row_id="r1")
        finally:
            await close_stores(stores)

    async def open_(blob: bytes) -> tuple[str, int]:
        stores = await open_stores(settings)
        try:
            vault = await stores.vault()
            async with transaction(stores.pool, settings) as conn:
                value = await vault.decrypt(
                    conn, blob, table="t", column="c", row_id="r1", actor="test", reason="test"
                )
                fresh = await vault.encrypt(conn, "李四", table="t", column="c", row_id="r2")
            return value, describe(fresh).key_id
        finally:
            await close_stores(stores)

    from core.pii.vault import describe

    old = asyncio.run(seal())
    result = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "keys", "rotate", "pii"],
        cwd=ROOT,
        env=tongban_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "is now active" in result.stdout
    value, new_key = asyncio.run(open_(old))
    assert value == "张三"
    assert new_key != describe(old).key_id
