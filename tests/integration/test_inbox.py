"""The citizen inbox: deliver() writes in the caller's transaction, list_messages() pages newest first, and
GET /v1/me/messages shows a citizen their own messages only."""

from __future__ import annotations

import secrets
from uuid import UUID

import pytest
from litestar.testing import AsyncTestClient

from auth import otp, service
from auth.models import Device, LoginRequest, TokenPair
from core import ids
from core.errors import InvalidInput
from core.pii.masking import normalize_phone
from core.stores import Stores
from miniapps import inbox

Client = AsyncTestClient  # type: ignore[type-arg]


async def login(stores: Stores) -> TokenPair:
    phone = "139" + f"{secrets.randbelow(10**8):08d}"
    vault = await stores.vault()
    tag = vault.blind_index(phone, purpose="accounts.phone", normalize=normalize_phone)[:12].hex()
    challenge, code = await otp.issue(
        stores.redis, stores.settings, phone_tag=tag, purpose="login", ttl_seconds=300
    )
    request = LoginRequest(phone=phone, code=code, challenge_id=challenge, device=Device(id="phone-1"))
    return await service.login(stores, request, f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.9")


async def deliver_many(stores: Stores, account_id: UUID, count: int) -> list[UUID]:
    async with stores.pool.acquire() as conn:
        return [
            await inbox.deliver(conn, account_id, title=f"title {n}", body=f"body {n}", source="health")
            for n in range(count)
        ]


async def test_messages_page_newest_first(stores: Stores) -> None:
    account = (await login(stores)).account_id
    delivered = await deliver_many(stores, account, 5)
    async with stores.pool.acquire() as conn:
        first = await inbox.list_messages(conn, account, limit=2)
        assert [m.id for m in first.messages] == delivered[:-3:-1]
        assert first.next_before == delivered[3]
        second = await inbox.list_messages(conn, account, limit=2, before=first.next_before)
        assert [m.id for m in second.messages] == [delivered[2], delivered[1]]
        last = await inbox.list_messages(conn, account, limit=2, before=second.next_before)
        assert [m.id for m in last.messages] == [delivered[0]] and last.next_before is None
        exact = await inbox.list_messages(conn, account, limit=5)
        assert len(exact.messages) == 5 and exact.next_before is None
        assert (exact.messages[0].title, exact.messages[0].body, exact.messages[0].source) == (
            "title 4",
            "body 4",
            "health",
        )


async def test_a_message_is_delivered_only_if_the_transaction_commits(stores: Stores) -> None:
    account = (await login(stores)).account_id
    async with stores.pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await inbox.deliver(conn, account, title="t", body="b", source="health")
                raise RuntimeError("the change it tells about failed")
        assert (await inbox.list_messages(conn, account)).messages == []


async def test_bad_messages_are_refused(stores: Stores) -> None:
    account = (await login(stores)).account_id
    async with stores.pool.acquire() as conn:
        for kwargs in (
            {"title": " ", "body": "b", "source": "health"},
            {"title": "t" * 201, "body": "b", "source": "health"},
            {"title": "t", "body": "b" * 4001, "source": "health"},
            {"title": "t", "body": "b", "source": "Health Dept"},
        ):
            with pytest.raises(InvalidInput):
                await inbox.deliver(conn, account, **kwargs)
        with pytest.raises(InvalidInput):
            await inbox.list_messages(conn, account, limit=0)


async def test_the_api_lists_the_callers_messages_only(stores: Stores, client: Client) -> None:
    tokens, other = await login(stores), await login(stores)
    mine = await deliver_many(stores, tokens.account_id, 3)
    theirs = await deliver_many(stores, other.account_id, 2)
    headers = {"Authorization": f"Bearer {tokens.access_token}"}

    page = await client.get("/v1/me/messages", params={"limit": 2}, headers=headers)
    assert page.status_code == 200, page.text
    body = page.json()
    assert [m["id"] for m in body["messages"]] == [str(mine[2]), str(mine[1])]
    assert body["next_before"] == str(mine[1])
    rest = await client.get("/v1/me/messages", params={"before": body["next_before"]}, headers=headers)
    assert [m["id"] for m in rest.json()["messages"]] == [str(mine[0])]
    assert rest.json()["next_before"] is None

    # a cursor that is not one of the caller's messages gives an empty page
    for cursor in (theirs[0], ids.new_id()):
        foreign = await client.get("/v1/me/messages", params={"before": str(cursor)}, headers=headers)
        assert foreign.status_code == 200 and foreign.json() == {"messages": [], "next_before": None}

    assert (await client.get("/v1/me/messages")).status_code == 401
    too_many = await client.get("/v1/me/messages", params={"limit": 101}, headers=headers)
    assert too_many.status_code == 400
    assert too_many.headers["content-type"].startswith("application/problem+json")
