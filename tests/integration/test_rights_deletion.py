"""PIPL art. 47 deletion: request, cancel, and the erase job, against the real PostgreSQL and Redis."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from auth import consent, rights, service
from auth.models import TokenPair
from auth.revocation import REVOKED
from core import clock, jobs
from core.errors import NotFound
from core.pii.masking import mask_id_number, mask_name, normalize_id_number, normalize_phone
from core.stores import Stores
from tests.support.accounts import login_in_process, verify_in_process

Client = AsyncTestClient  # type: ignore[type-arg]


def _phone() -> str:
    return "139" + f"{secrets.randbelow(10**8):08d}"


def _id_number() -> str:
    from stdnum.cn import ric

    stem = f"110105{1960 + secrets.randbelow(40)}0{1 + secrets.randbelow(9)}1{secrets.randbelow(10)}" + (
        f"{secrets.randbelow(1000):03d}"
    )
    return next(stem + c for c in "0123456789X" if ric.is_valid(stem + c))


def _bearer(tokens: TokenPair) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.access_token}"}


async def _erase_jobs(stores: Stores, account_id: UUID) -> list[Any]:
    return await stores.pool.fetch(
        "SELECT job_id, payload, defer_until FROM outbox WHERE job_name = 'auth.erase_account' "
        "AND job_id LIKE $1 ORDER BY id",
        f"%{account_id}%",
    )


async def test_request_is_pending_with_a_deferred_job_and_repeats_add_nothing(
    stores: Stores, client: Client
) -> None:
    tokens = await login_in_process(stores, _phone())
    before = clock.now()
    assert (await client.get("/v1/me/deletion", headers=_bearer(tokens))).json()["state"] == "none"

    answer = await client.delete("/v1/me", headers=_bearer(tokens))
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["state"] == "pending"
    state = msgspec.json.decode(answer.content, type=rights.DeletionState)
    due_at = state.due_at
    assert due_at is not None and state.requested_at is not None
    assert timedelta(days=15) <= due_at - before <= timedelta(days=15, seconds=30)

    account = await stores.pool.fetchrow("SELECT status FROM accounts WHERE id = $1", tokens.account_id)
    assert account["status"] == "deleting"
    kinds = await stores.pool.fetch(
        "SELECT kind, detail::text FROM account_events WHERE account_id = $1 ORDER BY id", tokens.account_id
    )
    assert [k["kind"] for k in kinds][-1] == "deletion_requested"

    queued = await _erase_jobs(stores, tokens.account_id)
    assert len(queued) == 1
    assert queued[0]["defer_until"] == due_at
    assert queued[0]["job_id"] == rights.erase_job_id(tokens.account_id, state.requested_at)
    payload = jobs.decode_payload(queued[0]["payload"], rights.EraseAccount)
    assert payload == rights.EraseAccount(account_id=tokens.account_id)

    again = await client.delete("/v1/me", headers=_bearer(tokens))
    assert again.status_code == 202 and again.json() == body
    assert len(await _erase_jobs(stores, tokens.account_id)) == 1
    shown = await client.get("/v1/me/deletion", headers=_bearer(tokens))
    assert shown.status_code == 200 and shown.json() == body


async def test_cancel_makes_the_account_active_and_the_job_then_does_nothing(
    stores: Stores, client: Client
) -> None:
    phone = _phone()
    tokens = await login_in_process(stores, phone)
    requested = (await client.delete("/v1/me", headers=_bearer(tokens))).json()

    cancelled = await client.delete("/v1/me/deletion", headers=_bearer(tokens))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["cancelled_at"]
    assert (await client.get("/v1/me/deletion", headers=_bearer(tokens))).json()["state"] == "cancelled"
    status = await stores.pool.fetchval("SELECT status FROM accounts WHERE id = $1", tokens.account_id)
    assert status == "active"
    last = await stores.pool.fetchval(
        "SELECT kind FROM account_events WHERE account_id = $1 ORDER BY id DESC LIMIT 1", tokens.account_id
    )
    assert last == "deletion_cancelled"

    # Nothing left to cancel.
    again = await client.delete("/v1/me/deletion", headers=_bearer(tokens))
    assert again.status_code == 404

    # The job fires (long after the old due time): the account stays as it is.
    later = clock.now() + timedelta(days=30)
    assert await rights.erase_account(stores, tokens.account_id, now=later) is False
    row = await stores.pool.fetchrow(
        "SELECT status, phone_masked FROM accounts WHERE id = $1", tokens.account_id
    )
    assert row["status"] == "active" and row["phone_masked"] != ""
    assert (await client.get("/v1/me/sessions", headers=_bearer(tokens))).status_code == 200
    assert requested["state"] == "pending"


async def test_a_new_request_after_cancel_gets_its_own_job_and_the_old_one_finds_nothing_due(
    stores: Stores, client: Client
) -> None:
    tokens = await login_in_process(stores, _phone())
    first = (await client.delete("/v1/me", headers=_bearer(tokens))).json()
    await client.delete("/v1/me/deletion", headers=_bearer(tokens))
    second = (await client.delete("/v1/me", headers=_bearer(tokens))).json()
    assert second["state"] == "pending" and second["requested_at"] != first["requested_at"]
    queued = await _erase_jobs(stores, tokens.account_id)
    assert len(queued) == 2 and queued[0]["job_id"] != queued[1]["job_id"]

    # The first job's time comes (before the second request is due): nothing happens.
    first_due = queued[0]["defer_until"]
    assert await rights.erase_account(stores, tokens.account_id, now=first_due) is False
    assert await stores.pool.fetchval("SELECT status FROM accounts WHERE id = $1", tokens.account_id) == (
        "deleting"
    )


async def test_the_job_does_nothing_before_the_due_time(stores: Stores, client: Client) -> None:
    tokens = await login_in_process(stores, _phone())
    await client.delete("/v1/me", headers=_bearer(tokens))
    assert await rights.erase_account(stores, tokens.account_id) is False
    assert (
        await rights.erase_account(stores, tokens.account_id, now=clock.now() + timedelta(days=14)) is False
    )
    assert await stores.pool.fetchval("SELECT status FROM accounts WHERE id = $1", tokens.account_id) == (
        "deleting"
    )
    # Without any request, nothing either.
    other = await login_in_process(stores, _phone())
    assert await rights.erase_account(stores, other.account_id, now=clock.now() + timedelta(days=99)) is False


async def test_erasure_when_due(stores: Stores, client: Client) -> None:
    phone, name, id_number = _phone(), "欧阳娜娜", _id_number()
    tokens = await login_in_process(stores, phone, "phone-of-nana")
    other_device = await login_in_process(stores, phone, "tablet-of-nana")
    account_id = tokens.account_id
    await verify_in_process(stores, account_id, name, id_number)
    vault = await stores.vault()
    old_phone_bidx = vault.blind_index(phone, purpose="accounts.phone", normalize=normalize_phone)
    old_id_bidx = vault.blind_index(id_number, purpose="accounts.id_number", normalize=normalize_id_number)
    granted = await consent.grant(stores, account_id, "miniapp:wx-clinic", ["phone"], "book appointments")

    requested = await rights.request_deletion(stores, account_id)
    assert requested.due_at is not None
    assert await rights.erase_account(stores, account_id, now=requested.due_at + timedelta(seconds=1)) is True

    row = await stores.pool.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)
    assert row["status"] == "deleted"
    assert bytes(row["phone_enc"]) == b"" and row["phone_masked"] == ""
    assert len(row["phone_bidx"]) == 32 and bytes(row["phone_bidx"]) != old_phone_bidx
    for column in ("name_enc", "name_masked", "id_number_enc", "id_number_bidx", "id_number_masked"):
        assert row[column] is None, column
    # No plaintext, mask or old blind index anywhere in the account's rows.
    texts = await stores.pool.fetch(
        """SELECT a::text AS t FROM accounts a WHERE id = $1
           UNION ALL SELECT s::text FROM sessions s WHERE account_id = $1
           UNION ALL SELECT e::text FROM account_events e WHERE account_id = $1
           UNION ALL SELECT c::text FROM consents c WHERE subject_id = $1""",
        account_id,
    )
    dump = "\n".join(r["t"] for r in texts)
    for secret in (phone, name, id_number, mask_name(name), mask_id_number(id_number), "nana"):
        assert secret not in dump, secret
    assert (
        await stores.pool.fetchval(
            "SELECT count(*) FROM accounts WHERE phone_bidx = $1 OR id_number_bidx = $2",
            old_phone_bidx,
            old_id_bidx,
        )
        == 0
    )

    # Sessions ended (and known to this process's revocation set), refresh tokens gone, consents revoked.
    sessions = await stores.pool.fetch(
        "SELECT id, revoked_at FROM sessions WHERE account_id = $1", account_id
    )
    assert len(sessions) == 2 and all(s["revoked_at"] is not None for s in sessions)
    assert all(str(s["id"]) in REVOKED for s in sessions)
    assert (
        await stores.pool.fetchval(
            "SELECT count(*) FROM refresh_tokens WHERE session_id = ANY($1::uuid[])",
            [s["id"] for s in sessions],
        )
        == 0
    )
    assert not await consent.has_consent(stores, account_id, "miniapp:wx-clinic", "phone")
    assert (await consent.list_consents(stores, account_id))[0].revoked_at is not None
    assert granted.revoked_at is None
    assert (await client.get("/v1/me/sessions", headers=_bearer(tokens))).status_code == 401
    refused = await client.post("/v1/auth/refresh", json={"refresh_token": other_device.refresh_token})
    assert refused.status_code == 401
    with pytest.raises(Exception, match="not valid"):
        await service.refresh(stores, other_device.refresh_token)

    state = await rights.get_deletion(stores, account_id)
    assert state.state == "completed" and state.completed_at is not None
    events = [
        r["kind"]
        for r in await stores.pool.fetch(
            "SELECT kind FROM account_events WHERE account_id = $1 ORDER BY id", account_id
        )
    ]
    assert events[-1] == "erased"

    # Idempotent: a second run changes nothing.
    assert await rights.erase_account(stores, account_id, now=requested.due_at + timedelta(days=1)) is False

    # The phone registers again as a NEW account; the ID number can be bound to another account again.
    again = await login_in_process(stores, phone)
    assert again.account_id != account_id
    await verify_in_process(stores, again.account_id, name, id_number)
    assert (
        await stores.pool.fetchval("SELECT id FROM accounts WHERE id_number_bidx = $1", old_id_bidx)
        == again.account_id
    )

    # The erased account's id is still there as a pseudonym; it can neither export nor delete again.
    with pytest.raises(NotFound):
        await rights.export_personal_data(stores, account_id)
    with pytest.raises(NotFound):
        await rights.request_deletion(stores, account_id)


async def test_the_registered_job_erases_with_a_zero_grace_period(stores: Stores) -> None:
    """The job as the worker runs it (looked up by name, payload decoded from the outbox row)."""
    zero_grace = Stores(
        settings=msgspec.structs.replace(stores.settings, auth_deletion_grace_days=0.0),
        pool=stores.pool,
        redis=stores.redis,
        _vault=await stores.vault(),
    )
    tokens = await login_in_process(stores, _phone())
    await rights.request_deletion(zero_grace, tokens.account_id)
    [queued] = await _erase_jobs(stores, tokens.account_id)
    spec = jobs._REGISTRY["auth.erase_account"]
    await spec.func(stores, jobs.decode_payload(queued["payload"], spec.payload_type))
    assert await stores.pool.fetchval("SELECT status FROM accounts WHERE id = $1", tokens.account_id) == (
        "deleted"
    )
    # At-least-once delivery: the same job again is harmless.
    await spec.func(stores, jobs.decode_payload(queued["payload"], spec.payload_type))


async def test_erase_due_backstop_erases_only_what_is_due(stores: Stores) -> None:
    due = await login_in_process(stores, _phone())
    not_due = await login_in_process(stores, _phone())
    cancelled = await login_in_process(stores, _phone())
    for tokens in (due, not_due, cancelled):
        await rights.request_deletion(stores, tokens.account_id)
    await rights.cancel_deletion(stores, cancelled.account_id)
    await stores.pool.execute(
        "UPDATE account_deletions SET due_at = now() - interval '1 minute' WHERE account_id = ANY($1::uuid[])",
        [due.account_id, cancelled.account_id],
    )
    assert await rights.erase_due_accounts(stores) >= 1
    statuses = {
        r["id"]: r["status"]
        for r in await stores.pool.fetch(
            "SELECT id, status FROM accounts WHERE id = ANY($1::uuid[])",
            [due.account_id, not_due.account_id, cancelled.account_id],
        )
    }
    assert statuses == {
        due.account_id: "deleted",
        not_due.account_id: "deleting",
        cancelled.account_id: "active",
    }


async def test_deletion_routes_need_a_token(client: Client) -> None:
    for method, path in (("DELETE", "/v1/me"), ("GET", "/v1/me/deletion"), ("DELETE", "/v1/me/deletion")):
        answer = await client.request(method, path)
        assert answer.status_code == 401, (method, path)


async def test_a_banned_account_cannot_request_deletion_through_the_service(stores: Stores) -> None:
    tokens = await login_in_process(stores, _phone())
    await rights.ban_account(stores, tokens.account_id, "fraud report 7", "ops:test")
    with pytest.raises(Exception, match="suspended"):
        await rights.request_deletion(stores, tokens.account_id)


async def test_an_hourly_sweep_erases_what_a_lost_job_would_have(stores: Stores) -> None:
    """The deferred job lives in Redis; if it is lost, the periodic sweep erases from account_deletions."""
    spec = jobs.registered_periodic()[rights.ERASE_DUE_JOB]
    assert spec.every_seconds == 3600
    tokens = await login_in_process(stores, _phone())
    async with stores.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO account_deletions (account_id, due_at) VALUES ($1, now() - interval '1 minute')",
            tokens.account_id,
        )
        await conn.execute("UPDATE accounts SET status = 'deleting' WHERE id = $1", tokens.account_id)
    await spec.func(stores)
    async with stores.pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT status FROM accounts WHERE id = $1", tokens.account_id) == "deleted"
        )


async def test_erasure_also_clears_the_inbox_and_revokes_one_code_devices(stores: Stores) -> None:
    from miniapps import inbox
    from onecode import client, devices

    zero_grace = Stores(
        settings=msgspec.structs.replace(stores.settings, auth_deletion_grace_days=0.0),
        pool=stores.pool,
        redis=stores.redis,
        _vault=await stores.vault(),
    )
    tokens = await login_in_process(stores, _phone())
    account_id = tokens.account_id
    await verify_in_process(stores, account_id, "王五", _id_number())
    device, _ = await devices.register(
        stores, account_id, client.public_key_b64(client.generate_device_key())
    )
    async with stores.pool.acquire() as conn:
        await inbox.deliver(conn, account_id, title="通知", body="您的业务已办结", source="health")
    await rights.request_deletion(zero_grace, account_id)
    assert await rights.erase_account(zero_grace, account_id)
    statuses = await stores.pool.fetch("SELECT status FROM onecode_devices WHERE account_id = $1", account_id)
    assert [row["status"] for row in statuses] == ["revoked"] and device.id
    assert (
        await stores.pool.fetchval("SELECT count(*) FROM inbox_messages WHERE account_id = $1", account_id)
        == 0
    )
    [erased] = await stores.pool.fetch(
        "SELECT detail FROM account_events WHERE account_id = $1 AND kind = 'erased'", account_id
    )
    assert msgspec.json.decode(erased["detail"])["messages"] >= 1
