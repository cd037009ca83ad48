"""The consent ledger: grant, list, revoke, has_consent (also seen at once by other connections and
processes), account events, and the /v1/me/consents routes."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from litestar.testing import AsyncTestClient

from auth import consent, otp, service
from auth.models import Device, LoginRequest, TokenPair
from core import ids
from core.errors import InvalidInput, NotFound
from core.pii.masking import normalize_phone
from core.settings import Settings
from core.stores import Stores, close_stores, open_stores

Client = AsyncTestClient  # type: ignore[type-arg]
ROOT = Path(__file__).resolve().parents[2]

# A second, long-lived process that answers has_consent for every line it reads: it proves there is no
# per-process cache that could keep saying yes after a revocation.
CHECKER = """
import asyncio, sys, uuid
from auth import consent
from core.settings import get_settings
from core.stores import close_stores, open_stores

async def main() -> None:
    stores = await open_stores(get_settings())
    subject, recipient, scope = uuid.UUID(sys.argv[1]), sys.argv[2], sys.argv[3]
    try:
        print("ready", flush=True)
        for _ in sys.stdin:
            print(await consent.has_consent(stores, subject, recipient, scope), flush=True)
    finally:
        await close_stores(stores)

asyncio.run(main())
"""


def _phone() -> str:
    return "139" + f"{secrets.randbelow(10**8):08d}"


async def _login(stores: Stores, phone: str | None = None) -> TokenPair:
    phone = phone or _phone()
    vault = await stores.vault()
    tag = vault.blind_index(phone, purpose="accounts.phone", normalize=normalize_phone)[:12].hex()
    challenge, code = await otp.issue(
        stores.redis, stores.settings, phone_tag=tag, purpose="login", ttl_seconds=300
    )
    request = LoginRequest(phone=phone, code=code, challenge_id=challenge, device=Device(id="phone"))
    return await service.login(stores, request, f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.3")


def _bearer(tokens: TokenPair) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.access_token}"}


async def _events(stores: Stores, account_id: UUID) -> list[tuple[str, str]]:
    rows = await stores.pool.fetch(
        "SELECT kind, actor FROM account_events WHERE account_id = $1 AND kind LIKE 'consent_%' ORDER BY id",
        account_id,
    )
    return [(r["kind"], r["actor"]) for r in rows]


class _Rollback(Exception):
    pass


class Checker:
    def __init__(self, subject: UUID, recipient: str, scope: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHECKER, str(subject), recipient, scope],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self) -> bool:
        assert self.proc.stdin is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        answer = self._line()
        assert answer in ("True", "False"), answer
        return answer == "True"

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def checkers() -> Iterator[list[Checker]]:
    started: list[Checker] = []
    yield started
    for checker in started:
        checker.stop()


async def test_grant_list_and_check(stores: Stores) -> None:
    subject = (await _login(stores)).account_id
    granted = await consent.grant(
        stores, subject, "miniapp:wx-clinic", ["real_name", "phone", "phone"], "  book appointments "
    )
    assert granted.scopes == ["phone", "real_name"] and granted.purpose == "book appointments"
    assert granted.active and granted.revoked_at is None

    assert await consent.has_consent(stores, subject, "miniapp:wx-clinic", "phone")
    assert await consent.has_consent(stores, subject, "miniapp:wx-clinic", "real_name")
    assert not await consent.has_consent(stores, subject, "miniapp:wx-clinic", "id_number")
    assert not await consent.has_consent(stores, subject, "miniapp:wx-other", "phone")
    other = (await _login(stores)).account_id
    assert not await consent.has_consent(stores, other, "miniapp:wx-clinic", "phone")

    # Granting exactly the same again returns the same consent; a different purpose is a new one.
    again = await consent.grant(
        stores, subject, "miniapp:wx-clinic", ["phone", "real_name"], "book appointments"
    )
    assert again.id == granted.id
    second = await consent.grant(stores, subject, "miniapp:wx-clinic", ["phone"], "send reminders")
    assert second.id != granted.id
    assert [c.id for c in await consent.list(stores, subject)] == [granted.id, second.id]
    assert await _events(stores, subject) == [("consent_granted", "self")] * 2
    assert await consent.list_consents(stores, other) == []


async def test_revocation_is_seen_at_once_here_on_another_pool_and_in_another_process(
    stores: Stores, settings: Settings, checkers: list[Checker]
) -> None:
    subject = (await _login(stores)).account_id
    granted = await consent.grant(stores, subject, "miniapp:wx-bus", ["phone"], "bus card")
    elsewhere = await open_stores(settings)  # its own pool: other connections
    checker = await asyncio.to_thread(Checker, subject, "miniapp:wx-bus", "phone")
    checkers.append(checker)
    try:
        # Everyone has looked (and would have cached, if anything cached) before the revocation.
        assert await consent.has_consent(stores, subject, "miniapp:wx-bus", "phone")
        assert await consent.has_consent(elsewhere, subject, "miniapp:wx-bus", "phone")
        assert await asyncio.to_thread(checker.ask) is True

        revoked = await consent.revoke(stores, subject, granted.id)
        assert revoked.revoked_at is not None and not revoked.active

        assert not await consent.has_consent(stores, subject, "miniapp:wx-bus", "phone")
        assert not await consent.has_consent(elsewhere, subject, "miniapp:wx-bus", "phone")
        assert await asyncio.to_thread(checker.ask) is False

        # And a new grant is seen at once too.
        await consent.grant(stores, subject, "miniapp:wx-bus", ["phone"], "bus card")
        assert await asyncio.to_thread(checker.ask) is True
    finally:
        await close_stores(elsewhere)


async def test_has_consent_inside_the_callers_transaction(stores: Stores) -> None:
    subject = (await _login(stores)).account_id
    granted = await consent.grant(stores, subject, "dept:tax", ["real_name"], "tax filing")
    with pytest.raises(_Rollback):
        async with stores.pool.acquire() as conn, conn.transaction():
            assert await consent.has_consent(stores, subject, "dept:tax", "real_name", conn=conn)
            await conn.execute("UPDATE consents SET revoked_at = now() WHERE id = $1", granted.id)
            # The caller's own uncommitted change is seen on its connection, not elsewhere.
            assert not await consent.has_consent(stores, subject, "dept:tax", "real_name", conn=conn)
            assert await consent.has_consent(stores, subject, "dept:tax", "real_name")
            raise _Rollback
    assert await consent.has_consent(stores, subject, "dept:tax", "real_name")


async def test_revoke_is_for_the_subject_only_and_idempotent(stores: Stores) -> None:
    subject = (await _login(stores)).account_id
    stranger = (await _login(stores)).account_id
    granted = await consent.grant(stores, subject, "miniapp:wx-a", ["phone"], "p")
    with pytest.raises(NotFound):
        await consent.revoke(stores, stranger, granted.id)
    with pytest.raises(NotFound):
        await consent.revoke(stores, subject, ids.new_id())
    assert await consent.has_consent(stores, subject, "miniapp:wx-a", "phone")
    first = await consent.revoke(stores, subject, granted.id)
    second = await consent.revoke(stores, subject, granted.id)
    assert first.revoked_at == second.revoked_at
    assert await _events(stores, subject) == [("consent_granted", "self"), ("consent_revoked", "self")]


@pytest.mark.parametrize(
    ("recipient", "scopes", "purpose", "field"),
    [
        ("", ["phone"], "p", "recipient"),
        ("  ", ["phone"], "p", "recipient"),
        ("r" * 129, ["phone"], "p", "recipient"),
        ("miniapp:x", [], "p", "scopes"),
        ("miniapp:x", ["Phone"], "p", "scopes"),
        ("miniapp:x", ["phone number"], "p", "scopes"),
        ("miniapp:x", "phone", "p", "scopes"),
        ("miniapp:x", ["phone"], "", "purpose"),
        ("miniapp:x", ["phone"], "a\nb", "purpose"),
    ],
)
async def test_grant_refuses_bad_input(
    stores: Stores, recipient: str, scopes: list[str], purpose: str, field: str
) -> None:
    subject = (await _login(stores)).account_id
    with pytest.raises(InvalidInput) as caught:
        await consent.grant(stores, subject, recipient, scopes, purpose)
    assert caught.value.field == field
    assert await consent.list(stores, subject) == []


async def test_grant_for_an_unknown_account_is_not_found(stores: Stores) -> None:
    with pytest.raises(NotFound):
        await consent.grant(stores, ids.new_id(), "miniapp:x", ["phone"], "p")


async def test_consent_routes(stores: Stores, client: Client) -> None:
    tokens = await _login(stores)
    stranger = await _login(stores)
    mine = await consent.grant(stores, tokens.account_id, "miniapp:wx-a", ["phone"], "delivery")
    theirs = await consent.grant(stores, stranger.account_id, "miniapp:wx-a", ["phone"], "delivery")

    listed = await client.get("/v1/me/consents", headers=_bearer(tokens))
    assert listed.status_code == 200
    assert [c["id"] for c in listed.json()] == [str(mine.id)]
    assert listed.json()[0] == {
        "id": str(mine.id),
        "recipient": "miniapp:wx-a",
        "scopes": ["phone"],
        "purpose": "delivery",
        "granted_at": listed.json()[0]["granted_at"],
        "revoked_at": None,
    }

    # Someone else's consent, or no consent at all: 404, and theirs stays in force.
    for other in (theirs.id, ids.new_id()):
        answer = await client.delete(f"/v1/me/consents/{other}", headers=_bearer(tokens))
        assert answer.status_code == 404
    assert await consent.has_consent(stores, stranger.account_id, "miniapp:wx-a", "phone")
    bad = await client.delete("/v1/me/consents/not-a-uuid", headers=_bearer(tokens))
    assert bad.status_code in (400, 404, 422)

    gone = await client.delete(f"/v1/me/consents/{mine.id}", headers=_bearer(tokens))
    assert gone.status_code == 204
    assert not await consent.has_consent(stores, tokens.account_id, "miniapp:wx-a", "phone")
    after = (await client.get("/v1/me/consents", headers=_bearer(tokens))).json()
    assert after[0]["revoked_at"] is not None
    assert (await client.delete(f"/v1/me/consents/{mine.id}", headers=_bearer(tokens))).status_code == 204
    assert (await client.get("/v1/me/consents")).status_code == 401
