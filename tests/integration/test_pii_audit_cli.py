"""`tongban audit pii` reads the access log that decrypts write, with its filters."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import pytest
import typer
from typer.testing import CliRunner

from core.pii import open_vault
from core.stores import Stores
from scripts import audit_cmd

# Mounted as the integrator will: `tongban audit pii`.
cli = typer.Typer()
cli.add_typer(audit_cmd.app, name="audit")


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["audit", "pii", *args])
    assert result.exit_code == 0, result.output
    return result.output


async def test_audit_pii_lists_decrypts_with_filters(stores: Stores) -> None:
    actor = f"cs{secrets.token_hex(3)}"
    vault = await open_vault(stores)
    async with stores.pool.acquire() as conn:
        blob = await vault.encrypt(conn, "张三", table="people", column="name_enc", row_id=41)
        await vault.decrypt(
            conn, blob, table="people", column="name_enc", row_id=41, actor=actor, reason="r1"
        )
        await vault.decrypt(
            conn, blob, table="people", column="name_enc", row_id=41, actor=actor, reason="[b]r2"
        )
        with pytest.raises(Exception, match="cannot decrypt"):
            await vault.decrypt(
                conn, blob, table="people", column="name_enc", row_id=42, actor=actor, reason="r3"
            )
        # An entry from three days ago, to test --since.
        await conn.execute(
            """INSERT INTO pii_access_log (at, actor, reason, table_name, column_name, row_id, succeeded)
               VALUES (now() - interval '3 days', $1, 'old', 'people', 'name_enc', '40', true)""",
            actor,
        )

    # The command runs its own event loop (asyncio.run), so it goes to a thread off this test's loop.
    everything = await asyncio.to_thread(_run, "--actor", actor)
    for expected in (actor, "r1", "[b]r2", "r3", "old", "41", "42", "FAILED", "ok", "4 entries"):
        assert expected in everything
    assert "张三" not in everything

    recent = await asyncio.to_thread(_run, "--actor", actor, "--since", "1d")
    assert "r3" in recent
    assert "old" not in recent
    assert "3 entries" in recent

    newest = await asyncio.to_thread(_run, "--actor", actor, "--limit", "1")
    assert "r3" in newest
    assert "r1" not in newest
    assert "1 entry," in newest

    nobody = await asyncio.to_thread(_run, "--actor", f"nobody{secrets.token_hex(3)}")
    assert "no PII access recorded" in nobody


def test_since_accepts_ages_and_shanghai_dates() -> None:
    at = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert audit_cmd.parse_since("24h", at) == at - timedelta(hours=24)
    assert audit_cmd.parse_since("7d", at) == at - timedelta(days=7)
    assert audit_cmd.parse_since("30m", at) == at - timedelta(minutes=30)
    # A bare date is midnight in Asia/Shanghai, i.e. 16:00 UTC the day before.
    assert audit_cmd.parse_since("2026-11-22", at) == datetime(2026, 11, 21, 16, 0, tzinfo=UTC)
    assert audit_cmd.parse_since("2026-11-22T08:00+00:00", at) == datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    with pytest.raises(typer.BadParameter):
        audit_cmd.parse_since("yesterday", at)


def test_bad_since_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["audit", "pii", "--since", "yesterday"])
    assert result.exit_code == 2
