"""`tongban users` and `tongban sessions` against the real stores: masked look-ups, logged reveals, bans that
end sessions at once, unbans, session revocation, and one clear line for every bad input."""

from __future__ import annotations

import asyncio
import secrets
from uuid import UUID

import pytest
from click.testing import Result
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from auth.revocation import REVOKED
from core import ids
from core.errors import Forbidden
from core.pii.masking import mask_id_number, mask_name, mask_phone
from core.stores import Stores
from scripts.cli import app
from scripts.users_cmd import ops_actor
from tests.support.accounts import login_in_process, verify_in_process

Client = AsyncTestClient  # type: ignore[type-arg]


def _phone() -> str:
    return "139" + f"{secrets.randbelow(10**8):08d}"


def _id_number() -> str:
    from stdnum.cn import ric

    stem = f"110105{1960 + secrets.randbelow(40)}0{1 + secrets.randbelow(9)}1{secrets.randbelow(10)}"
    stem += f"{secrets.randbelow(1000):03d}"
    return next(stem + c for c in "0123456789X" if ric.is_valid(stem + c))


async def _cli(*args: str) -> Result:
    # The command runs its own event loop (asyncio.run), so it goes to a thread off this test's loop.
    # A wide terminal, so that tables do not fold ids and values.
    runner = CliRunner(env={"COLUMNS": "200"})
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def _ops_log(stores: Stores, account_id: UUID) -> list[tuple[str, str, str]]:
    rows = await stores.pool.fetch(
        """SELECT actor, reason, column_name FROM pii_access_log
           WHERE table_name = 'accounts' AND row_id = $1 AND actor LIKE 'ops:%' ORDER BY id""",
        str(account_id),
    )
    return [(r["actor"], r["reason"], r["column_name"]) for r in rows]


def _one_line_error(result: Result, text: str) -> None:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("tongban: ") and text in lines[0], result.output
    assert "Traceback" not in result.output


async def test_show_is_masked_and_reveal_is_logged(stores: Stores) -> None:
    phone, name, id_number = _phone(), "李小龙", _id_number()
    tokens = await login_in_process(stores, phone, "pixel-7")
    await verify_in_process(stores, tokens.account_id, name, id_number)

    for lookup in (
        ["--phone", phone],
        ["--id-number", id_number.lower()],
        ["--account", str(tokens.account_id)],
    ):
        masked = await _cli("users", "show", *lookup)
        assert masked.exit_code == 0, masked.output
        for shown in (str(tokens.account_id), mask_phone(phone), mask_name(name), mask_id_number(id_number)):
            assert shown in masked.output, (lookup, shown)
        for secret in (phone, name, id_number):
            assert secret not in masked.output
        assert "pixel-7" in masked.output and str(tokens.session_id) in masked.output
    assert await _ops_log(stores, tokens.account_id) == []

    revealed = await _cli("users", "show", "--phone", phone, "--reveal", "--reason", "ticket CS-1042")
    assert revealed.exit_code == 0, revealed.output
    for secret in (phone, name, id_number):
        assert secret in revealed.output
    assert "REVEALED" in revealed.output
    actor = ops_actor()
    assert actor.startswith("ops:")
    assert sorted(await _ops_log(stores, tokens.account_id)) == [
        (actor, "ticket CS-1042", "id_number"),
        (actor, "ticket CS-1042", "name"),
        (actor, "ticket CS-1042", "phone"),
    ]


async def test_reveal_without_a_reason_is_refused_and_logs_nothing(stores: Stores) -> None:
    phone = _phone()
    tokens = await login_in_process(stores, phone)
    for args in (["--reveal"], ["--reveal", "--reason", "   "]):
        result = await _cli("users", "show", "--phone", phone, *args)
        _one_line_error(result, "--reveal needs --reason")
        assert phone not in result.output
    assert await _ops_log(stores, tokens.account_id) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["users", "show"], "exactly one of --phone, --id-number or --account"),
        (["users", "show", "--account", "x1"], "--account: 'x1' is not an id"),
        (["users", "show", "--account", str(ids.new_id())], "no account with that id"),
        (["users", "show", "--phone", "13800000000", "--id-number", "x"], "exactly one of"),
        (["users", "show", "--phone", "12345"], "not a mainland China mobile number"),
        (["users", "show", "--id-number", "110105199003071238"], "id_number: the check digit does not match"),
        (["users", "show", "--phone", "13000000000"], "no account with that phone"),
        (["users", "show", "--id-number", "110105199003071239"], "no account with that ID number"),
        (["users", "ban", "not-an-id", "--reason", "x"], "ACCOUNT_ID"),
        (["users", "ban", str(ids.new_id()), "--reason", "x"], "no such account"),
        (["users", "unban", str(ids.new_id())], "no such account"),
        (["sessions", "revoke"], "exactly one of SESSION_ID or --account"),
        (["sessions", "revoke", str(ids.new_id()), "--account", str(ids.new_id())], "exactly one of"),
        (["sessions", "revoke", "nope"], "SESSION_ID"),
        (["sessions", "revoke", str(ids.new_id())], "no such active session"),
        (["sessions", "revoke", "--account", str(ids.new_id())], "no such account"),
    ],
)
async def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    _one_line_error(await _cli(*args), message)


async def test_ban_ends_sessions_at_once_and_refuses_login_until_unban(
    stores: Stores, client: Client
) -> None:
    phone = _phone()
    first = await login_in_process(stores, phone, "phone-a")
    second = await login_in_process(stores, phone, "phone-b")
    headers = {"Authorization": f"Bearer {first.access_token}"}
    assert (await client.get("/v1/me/sessions", headers=headers)).status_code == 200

    empty = await _cli("users", "ban", str(first.account_id), "--reason", "  ")
    _one_line_error(empty, "reason")
    banned = await _cli("users", "ban", str(first.account_id), "--reason", "fraud report 88")
    assert banned.exit_code == 0, banned.output
    assert "banned" in banned.output and "2 sessions ended" in banned.output

    row = await stores.pool.fetchrow(
        "SELECT status, banned_reason FROM accounts WHERE id = $1", first.account_id
    )
    assert (row["status"], row["banned_reason"]) == ("banned", "fraud report 88")
    assert str(first.session_id) in REVOKED and str(second.session_id) in REVOKED
    answer = await client.get("/v1/me/sessions", headers=headers)
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_token"
    refresh = await client.post("/v1/auth/refresh", json={"refresh_token": second.refresh_token})
    assert refresh.status_code == 401
    with pytest.raises(Forbidden) as refused:
        await login_in_process(stores, phone)
    assert refused.value.code == "account_banned"
    events = await stores.pool.fetch(
        "SELECT kind, actor FROM account_events WHERE account_id = $1 ORDER BY id", first.account_id
    )
    assert ("banned", ops_actor()) in [(e["kind"], e["actor"]) for e in events]
    assert ("sessions_revoked", ops_actor()) in [(e["kind"], e["actor"]) for e in events]

    shown = await _cli("users", "show", "--phone", phone)
    assert "banned" in shown.output and "fraud report 88" in shown.output

    unbanned = await _cli("users", "unban", str(first.account_id))
    assert unbanned.exit_code == 0 and "status active" in unbanned.output
    again = await login_in_process(stores, phone)
    assert again.account_id == first.account_id
    _one_line_error(await _cli("users", "unban", str(first.account_id)), "not banned")


async def test_unban_returns_a_deleting_account_to_deleting(stores: Stores) -> None:
    from auth import rights

    tokens = await login_in_process(stores, _phone())
    await rights.request_deletion(stores, tokens.account_id)
    assert (await _cli("users", "ban", str(tokens.account_id), "--reason", "r")).exit_code == 0
    unbanned = await _cli("users", "unban", str(tokens.account_id))
    assert "status deleting" in unbanned.output


async def test_sessions_revoke_one_or_all(stores: Stores, client: Client) -> None:
    phone = _phone()
    one = await login_in_process(stores, phone, "a")
    two = await login_in_process(stores, phone, "b")
    three = await login_in_process(stores, phone, "c")

    result = await _cli("sessions", "revoke", str(one.session_id))
    assert result.exit_code == 0, result.output
    assert f"session {one.session_id} of account {one.account_id} revoked" in " ".join(result.output.split())
    assert str(one.session_id) in REVOKED
    ended = await client.get("/v1/me/sessions", headers={"Authorization": f"Bearer {one.access_token}"})
    assert ended.status_code == 401
    alive = await client.get("/v1/me/sessions", headers={"Authorization": f"Bearer {two.access_token}"})
    assert alive.status_code == 200
    _one_line_error(await _cli("sessions", "revoke", str(one.session_id)), "no such active session")

    result = await _cli("sessions", "revoke", "--account", str(one.account_id))
    assert result.exit_code == 0 and "2 sessions" in result.output, result.output
    for tokens in (two, three):
        assert str(tokens.session_id) in REVOKED
    left = await stores.pool.fetchval(
        "SELECT count(*) FROM sessions WHERE account_id = $1 AND revoked_at IS NULL", one.account_id
    )
    assert left == 0
    reasons = await stores.pool.fetch(
        "SELECT DISTINCT revoked_reason FROM sessions WHERE account_id = $1", one.account_id
    )
    assert {r["revoked_reason"] for r in reasons} == {"revoked_by_ops"}


async def test_erase_due_command(stores: Stores) -> None:
    from auth import rights

    tokens = await login_in_process(stores, _phone())
    await rights.request_deletion(stores, tokens.account_id)
    await stores.pool.execute(
        "UPDATE account_deletions SET due_at = now() - interval '1 second' WHERE account_id = $1",
        tokens.account_id,
    )
    result = await _cli("users", "erase-due")
    assert result.exit_code == 0 and "erased" in result.output, result.output
    assert (
        await stores.pool.fetchval("SELECT status FROM accounts WHERE id = $1", tokens.account_id)
        == "deleted"
    )


async def test_audit_is_mounted(stores: Stores) -> None:
    phone = _phone()
    tokens = await login_in_process(stores, phone)
    reason = f"audit-{secrets.token_hex(3)}"
    await _cli("users", "show", "--phone", phone, "--reveal", "--reason", reason)
    audit = await _cli("audit", "pii", "--actor", ops_actor())
    assert audit.exit_code == 0, audit.output
    assert reason in audit.output and str(tokens.account_id)[:8] in audit.output
