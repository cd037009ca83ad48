"""Legal persons over the API (the app in process), with the real PostgreSQL and Redis and the sandbox
enterprise registry running as a real process: registering, members and roles, acting identity, and every
refusal.

Accounts are made directly in the database through the PII vault, as login and real-name verification would
leave them (phone encrypted + blind index; for L2, name and ID number encrypted + the ID number's blind
index), with a session and tokens from auth.service: these tests are about what comes after."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from unittest.mock import ANY
from uuid import UUID

import httpx
import jwt
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from stdnum.cn import ric, uscc

from api.app import create_app
from auth import enterprises, repository, service
from auth.enterprises import ActAs
from auth.tokens import AccessClaims
from core import clock, ids
from core.db import transaction
from core.errors import Unauthorized
from core.pii.masking import mask_id_number, mask_name, mask_phone, normalize_id_number, normalize_phone
from core.settings import Settings
from core.stores import Stores
from tests.support.sandbox import Sandbox, running_sandbox

ApiClient = AsyncTestClient[Litestar]
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def new_phone() -> str:
    return "137" + f"{secrets.randbelow(10**8):08d}"


def new_id_number() -> str:
    born = date(1985, 1, 1) + timedelta(days=secrets.randbelow(7000))  # region 210102 exists since 1983
    body = f"210102{born:%Y%m%d}{secrets.randbelow(1000):03d}"
    return body + ric.calc_check_digit(body + "0")


def new_uscc() -> str:
    body = "91210100" + "".join(secrets.choice(USCC_ALPHABET) for _ in range(9))
    return body + uscc.calc_check_digit(body)


@dataclass
class Person:
    account_id: UUID
    session_id: UUID
    phone: str
    id_number: str | None
    access_token: str
    refresh_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def make_person(stores: Stores, *, id_number: str | None = None, name: str = "王小明") -> Person:
    """An account (L2 with this identity when `id_number` is given) with one live session."""
    vault = await stores.vault()
    phone = new_phone()
    account_id, session_id = ids.new_id(), ids.new_id()
    async with transaction(stores.pool, stores.settings) as conn:
        phone_enc = await vault.encrypt(conn, phone, table="accounts", column="phone", row_id=account_id)
        phone_bidx = vault.blind_index(phone, purpose="accounts.phone", normalize=normalize_phone)
        assert await repository.insert_account(conn, account_id, phone_enc, phone_bidx, mask_phone(phone))
        level, amr = 1, ["sms"]
        if id_number is not None:
            level, amr = 2, ["sms", "idcard"]
            await conn.execute(
                """UPDATE accounts SET level = 2, amr = $2, name_enc = $3, name_masked = $4,
                       id_number_enc = $5, id_number_bidx = $6, id_number_masked = $7, real_name_at = now()
                   WHERE id = $1""",
                account_id,
                amr,
                await vault.encrypt(conn, name, table="accounts", column="name", row_id=account_id),
                mask_name(name),
                await vault.encrypt(conn, id_number, table="accounts", column="id_number", row_id=account_id),
                vault.blind_index(id_number, purpose="accounts.id_number", normalize=normalize_id_number),
                mask_id_number(id_number),
            )
        await repository.insert_session(
            conn, session_id, account_id, "test-device", "phone", clock.now() + timedelta(days=1)
        )
        tokens = await service._new_session_tokens(
            stores, conn, session_id=session_id, account_id=account_id, level=level, amr=amr
        )
    return Person(account_id, session_id, phone, id_number, tokens.access_token, tokens.refresh_token)


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


@pytest.fixture(scope="module")
def registry_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("enterprise"), only=["enterprise"]) as sandbox:
        yield sandbox


@pytest.fixture
async def registry(registry_sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    """Straight to the sandbox registry (seeding, faults); faults never leak into the next test."""
    async with httpx.AsyncClient(base_url=registry_sandbox.urls["enterprise"]) as client:
        yield client
        (await client.delete("/sandbox/faults")).raise_for_status()


@pytest.fixture(scope="module")
async def api(settings: Settings, registry_sandbox: Sandbox) -> AsyncIterator[ApiClient]:
    configured = msgspec.structs.replace(
        settings, enterprise_registry_url=registry_sandbox.urls["enterprise"], enterprise_registry_timeout=1.0
    )
    async with AsyncTestClient(app=create_app(configured)) as client:
        yield client


async def seed(registry: httpx.AsyncClient, legal_rep: Person, **overrides: str) -> str:
    """A new enterprise in the registry with `legal_rep` as its legal representative; its credit code."""
    assert legal_rep.id_number is not None
    code = new_uscc()
    row = {
        "uscc": code,
        "name": "沈阳通办科技有限公司",
        "status": "active",
        "legal_rep_name": "王小明",
        "legal_rep_id_number": legal_rep.id_number,
        **overrides,
    }
    (await registry.post("/registry/enterprises", json=[row])).raise_for_status()
    return code


async def register(api: ApiClient, person: Person, code: str) -> httpx.Response:
    response: httpx.Response = await api.post("/v1/me/enterprises", json={"uscc": code}, headers=person.auth)
    return response


async def registered(api: ApiClient, registry: httpx.AsyncClient, stores: Stores) -> tuple[Person, str]:
    """An L2 legal representative and the id of the enterprise they registered."""
    legal_rep = await make_person(stores, id_number=new_id_number())
    answer = await register(api, legal_rep, await seed(registry, legal_rep))
    assert answer.status_code == 201, answer.text
    return legal_rep, answer.json()["id"]


async def grant(api: ApiClient, by: Person, enterprise_id: str, phone: str, role: str) -> httpx.Response:
    response: httpx.Response = await api.post(
        f"/v1/enterprises/{enterprise_id}/members", json={"phone": phone, "role": role}, headers=by.auth
    )
    return response


async def refresh(api: ApiClient, person: Person) -> dict[str, Any]:
    answer = await api.post("/v1/auth/refresh", json={"refresh_token": person.refresh_token})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    person.refresh_token, person.access_token = body["refresh_token"], body["access_token"]
    return claims(body["access_token"])


# --- registering --------------------------------------------------------------------------------------


async def test_legal_representative_registers_the_enterprise(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
) -> None:
    legal_rep = await make_person(stores, id_number=new_id_number())
    code = await seed(registry, legal_rep, name="辽宁测试商贸有限公司")
    # Written the way people write it: lower case, spaces.
    answer = await register(api, legal_rep, f"{code[:8].lower()} {code[8:].lower()}")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["uscc"] == code and body["name"] == "辽宁测试商贸有限公司"
    assert body["role"] == "legal_representative"
    assert legal_rep.id_number is not None and legal_rep.id_number not in answer.text

    mine = await api.get("/v1/me/enterprises", headers=legal_rep.auth)
    assert mine.status_code == 200
    assert [(e["id"], e["role"]) for e in mine.json()] == [(body["id"], "legal_representative")]

    async with transaction(stores.pool, stores.settings) as conn:
        row = await conn.fetchrow(
            "SELECT uscc, legal_rep_account FROM enterprises WHERE id = $1", UUID(body["id"])
        )
        events = await conn.fetch(
            "SELECT kind, actor, detail FROM account_events WHERE account_id = $1", legal_rep.account_id
        )
    assert row["uscc"] == code and row["legal_rep_account"] == legal_rep.account_id
    assert [(e["kind"], e["actor"], msgspec.json.decode(e["detail"])) for e in events] == [
        ("enterprise_registered", "self", {"enterprise": body["id"]})
    ]


@pytest.mark.parametrize(
    "bad",
    ["", "91210100MA0XXXXX", "91210100600037341L0", "9121O100600037341L", "91110000600037341A", "不是代码"],
)
async def test_a_bad_credit_code_is_422_on_uscc(
    api: ApiClient,
    stores: Stores,
    bad: str,
) -> None:
    legal_rep = await make_person(stores, id_number=new_id_number())
    answer = await register(api, legal_rep, bad)
    assert answer.status_code == 422
    assert answer.json()["field"] == "uscc" and answer.json()["code"] == "invalid_uscc"


async def test_unknown_enterprise_is_404(api: ApiClient, stores: Stores) -> None:
    legal_rep = await make_person(stores, id_number=new_id_number())
    answer = await register(api, legal_rep, new_uscc())
    assert answer.status_code == 404 and answer.json()["code"] == "enterprise_not_found"


async def test_someone_else_than_the_legal_representative_is_403(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
) -> None:
    legal_rep = await make_person(stores, id_number=new_id_number())
    other = await make_person(stores, id_number=new_id_number())
    code = await seed(registry, legal_rep)
    answer = await register(api, other, code)
    assert answer.status_code == 403 and answer.json()["code"] == "not_legal_representative"
    # The refusal says nothing about whose the enterprise is.
    assert legal_rep.id_number is not None
    assert legal_rep.id_number not in answer.text and legal_rep.id_number[:6] + "*" not in answer.text
    # The rightful one still can.
    assert (await register(api, legal_rep, code)).status_code == 201


async def test_registering_twice_is_409(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
) -> None:
    legal_rep = await make_person(stores, id_number=new_id_number())
    code = await seed(registry, legal_rep)
    assert (await register(api, legal_rep, code)).status_code == 201
    again = await register(api, legal_rep, code)
    assert again.status_code == 409 and again.json()["code"] == "enterprise_registered"


async def test_two_registrations_at_once_make_one_enterprise(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
) -> None:
    legal_rep = await make_person(stores, id_number=new_id_number())
    code = await seed(registry, legal_rep)
    answers = await asyncio.gather(*(register(api, legal_rep, code) for _ in range(4)))
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409]
    async with transaction(stores.pool, stores.settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM enterprises WHERE uscc = $1", code) == 1


async def test_an_l1_caller_is_403(api: ApiClient, registry: httpx.AsyncClient, stores: Stores) -> None:
    identity = await make_person(stores, id_number=new_id_number())
    code = await seed(registry, identity)
    l1 = await make_person(stores)
    answer = await register(api, l1, code)
    assert answer.status_code == 403 and answer.json()["code"] == "insufficient_level"
    assert (await api.post("/v1/me/enterprises", json={"uscc": code})).status_code == 401


async def test_an_enterprise_no_longer_in_business_is_409(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
) -> None:
    legal_rep = await make_person(stores, id_number=new_id_number())
    answer = await register(api, legal_rep, await seed(registry, legal_rep, status="cancelled"))
    assert answer.status_code == 409 and answer.json()["code"] == "enterprise_inactive"


@pytest.mark.parametrize("faults", [{"fail_next": 1}, {"latency_ms": 1500}])
async def test_registry_down_is_503_and_nothing_is_written(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
    faults: dict[str, int],
) -> None:
    legal_rep = await make_person(stores, id_number=new_id_number())
    code = await seed(registry, legal_rep)
    (await registry.post("/sandbox/faults", json=faults)).raise_for_status()
    answer = await register(api, legal_rep, code)
    assert answer.status_code == 503 and answer.json()["code"] == "provider_unavailable"
    assert int(answer.headers["retry-after"]) >= 1
    async with transaction(stores.pool, stores.settings) as conn:
        assert await conn.fetchval("SELECT count(*) FROM enterprises WHERE uscc = $1", code) == 0
    (await registry.delete("/sandbox/faults")).raise_for_status()
    assert (await register(api, legal_rep, code)).status_code == 201


# --- members ------------------------------------------------------------------------------------------


async def test_granting_listing_and_revoking_members(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
) -> None:
    legal_rep, enterprise_id = await registered(api, registry, stores)
    admin, agent = (
        await make_person(stores),
        await make_person(stores, id_number=new_id_number(), name="李四"),
    )

    # The phone as people type it.
    spaced = f"+86 {admin.phone[:3]}-{admin.phone[3:7]}-{admin.phone[7:]}"
    granted = await grant(api, legal_rep, enterprise_id, spaced, "admin")
    assert granted.status_code == 201, granted.text
    assert granted.json()["account_id"] == str(admin.account_id) and granted.json()["role"] == "admin"
    assert granted.json()["phone"] == mask_phone(admin.phone) and admin.phone not in granted.text
    assert granted.json()["granted_by"] == str(legal_rep.account_id)
    # An admin grants agents.
    by_admin = await grant(api, admin, enterprise_id, agent.phone, "agent")
    assert by_admin.status_code == 201 and by_admin.json()["name"] == "李*"

    listed = await api.get(f"/v1/enterprises/{enterprise_id}/members", headers=admin.auth)
    assert listed.status_code == 200
    assert [(m["account_id"], m["role"]) for m in listed.json()] == [
        (str(legal_rep.account_id), "legal_representative"),
        (str(admin.account_id), "admin"),
        (str(agent.account_id), "agent"),
    ]
    for person in (legal_rep, admin, agent):
        assert person.phone not in listed.text and mask_phone(person.phone) in listed.text
    assert [
        (e["id"], e["role"]) for e in (await api.get("/v1/me/enterprises", headers=agent.auth)).json()
    ] == [(enterprise_id, "agent")]

    revoked = await api.delete(
        f"/v1/enterprises/{enterprise_id}/members/{agent.account_id}", headers=admin.auth
    )
    assert revoked.status_code == 204
    assert (await api.get("/v1/me/enterprises", headers=agent.auth)).json() == []
    async with transaction(stores.pool, stores.settings) as conn:
        events = await conn.fetch(
            "SELECT kind, actor, detail FROM account_events WHERE account_id = $1 ORDER BY id",
            agent.account_id,
        )
    assert [(e["kind"], e["actor"], msgspec.json.decode(e["detail"])) for e in events] == [
        (
            "enterprise_role_granted",
            f"account:{admin.account_id}",
            {"enterprise": enterprise_id, "role": "agent"},
        ),
        (
            "enterprise_role_revoked",
            f"account:{admin.account_id}",
            {"enterprise": enterprise_id, "role": "agent"},
        ),
    ]


async def test_who_may_grant_what(api: ApiClient, registry: httpx.AsyncClient, stores: Stores) -> None:
    legal_rep, enterprise_id = await registered(api, registry, stores)
    admin = await make_person(stores)
    agent = await make_person(stores)
    outsider = await make_person(stores)
    assert (await grant(api, legal_rep, enterprise_id, admin.phone, "admin")).status_code == 201
    assert (await grant(api, legal_rep, enterprise_id, agent.phone, "agent")).status_code == 201

    cases = [
        (agent, outsider.phone, "agent", 403, "not_enterprise_admin"),  # an agent grants nothing
        (admin, outsider.phone, "admin", 403, "role_not_grantable"),  # an admin grants agents only
        (admin, admin.phone, "agent", 403, "role_not_grantable"),  # nor demotes an admin, itself included
        (outsider, agent.phone, "agent", 404, "enterprise_not_found"),  # not a member: no such enterprise
        (legal_rep, legal_rep.phone, "admin", 409, "is_legal_representative"),
        (legal_rep, new_phone(), "agent", 404, "account_not_found"),
    ]
    for by, phone, role, status, code in cases:
        answer = await grant(api, by, enterprise_id, phone, role)
        assert (answer.status_code, answer.json()["code"]) == (status, code), (role, code)
    unknown = await grant(api, legal_rep, enterprise_id, new_phone(), "agent")
    assert unknown.json()["detail"] == "no account with this phone"
    # A suspended account answers exactly like an unknown phone.
    banned = await make_person(stores)
    async with transaction(stores.pool, stores.settings) as conn:
        await conn.execute("UPDATE accounts SET status = 'banned' WHERE id = $1", banned.account_id)
    suspended = await grant(api, legal_rep, enterprise_id, banned.phone, "agent")
    assert (suspended.status_code, suspended.json()) == (404, {**unknown.json(), "request_id": ANY})

    # The legal representative changes roles both ways.
    assert (await grant(api, legal_rep, enterprise_id, agent.phone, "admin")).json()["role"] == "admin"
    assert (await grant(api, legal_rep, enterprise_id, agent.phone, "agent")).json()["role"] == "agent"
    # An enterprise that does not exist at all answers like one the caller is not in.
    nowhere = await grant(api, legal_rep, str(ids.new_id()), agent.phone, "agent")
    assert (nowhere.status_code, nowhere.json()["code"]) == (404, "enterprise_not_found")


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"phone": "12345", "role": "agent"}, 422, "phone"),
        ({"phone": "13812345678", "role": "owner"}, 400, "role"),
        ({"phone": "13812345678", "role": "legal_representative"}, 400, "role"),
        ({"role": "agent"}, 400, "phone"),
    ],
)
async def test_malformed_grants_name_the_field(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
    body: dict[str, str],
    status: int,
    field: str,
) -> None:
    legal_rep, enterprise_id = await registered(api, registry, stores)
    answer = await api.post(f"/v1/enterprises/{enterprise_id}/members", json=body, headers=legal_rep.auth)
    assert answer.status_code == status and answer.json()["field"] == field


async def test_who_may_revoke_and_list(api: ApiClient, registry: httpx.AsyncClient, stores: Stores) -> None:
    legal_rep, enterprise_id = await registered(api, registry, stores)
    admin, agent, outsider = await make_person(stores), await make_person(stores), await make_person(stores)
    await grant(api, legal_rep, enterprise_id, admin.phone, "admin")
    await grant(api, legal_rep, enterprise_id, agent.phone, "agent")
    members = f"/v1/enterprises/{enterprise_id}/members"

    cases = [
        (admin, legal_rep, 403, "cannot_revoke_legal_representative"),
        (legal_rep, legal_rep, 403, "cannot_revoke_legal_representative"),
        (admin, admin, 403, "role_not_grantable"),  # admins revoke agents only
        (agent, agent, 403, "not_enterprise_admin"),
        (outsider, agent, 404, "enterprise_not_found"),
        (legal_rep, outsider, 404, "member_not_found"),
    ]
    for by, whom, status, code in cases:
        answer = await api.delete(f"{members}/{whom.account_id}", headers=by.auth)
        assert (answer.status_code, answer.json()["code"]) == (status, code), code
    for by, status in ((agent, 403), (outsider, 404)):
        assert (await api.get(members, headers=by.auth)).status_code == status
    # The legal representative revokes admins too.
    assert (await api.delete(f"{members}/{admin.account_id}", headers=legal_rep.auth)).status_code == 204
    assert [m["role"] for m in (await api.get(members, headers=legal_rep.auth)).json()] == [
        "legal_representative",
        "agent",
    ]


# --- acting identity ----------------------------------------------------------------------------------


async def test_agent_acts_for_the_enterprise_until_revoked(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
) -> None:
    legal_rep, enterprise_id = await registered(api, registry, stores)
    agent = await make_person(stores)
    await grant(api, legal_rep, enterprise_id, agent.phone, "agent")

    acting = await api.post("/v1/me/acting", json={"enterprise_id": enterprise_id}, headers=agent.auth)
    assert acting.status_code == 200, acting.text
    body = acting.json()
    assert body["enterprise"] == {"id": enterprise_id, "role": "agent"} and body["token_type"] == "Bearer"
    token = claims(body["access_token"])
    assert token["ent"] == {"id": enterprise_id, "role": "agent"}
    assert (token["sub"], token["sid"], token["acr"]) == (str(agent.account_id), str(agent.session_id), "L1")
    agent.access_token = body["access_token"]
    sessions = (await api.get("/v1/me/sessions", headers=agent.auth)).json()
    assert [s["acting_enterprise"] for s in sessions] == [enterprise_id]

    # Refreshing keeps acting for the enterprise while the membership lasts...
    assert (await refresh(api, agent))["ent"] == {"id": enterprise_id, "role": "agent"}
    # ... and a change of role shows at the next refresh.
    await grant(api, legal_rep, enterprise_id, agent.phone, "admin")
    assert (await refresh(api, agent))["ent"] == {"id": enterprise_id, "role": "admin"}
    await grant(api, legal_rep, enterprise_id, agent.phone, "agent")

    revoked = await api.delete(
        f"/v1/enterprises/{enterprise_id}/members/{agent.account_id}", headers=legal_rep.auth
    )
    assert revoked.status_code == 204
    assert "ent" not in await refresh(api, agent)
    sessions = (await api.get("/v1/me/sessions", headers=agent.auth)).json()
    assert [s["acting_enterprise"] for s in sessions] == [None]
    # Granted again later, the session does not silently act for the enterprise again.
    await grant(api, legal_rep, enterprise_id, agent.phone, "agent")
    assert "ent" not in await refresh(api, agent)


async def test_acting_as_oneself_again_and_refusals(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
) -> None:
    legal_rep, enterprise_id = await registered(api, registry, stores)
    _, other_enterprise = await registered(api, registry, stores)

    acting = await api.post("/v1/me/acting", json={"enterprise_id": enterprise_id}, headers=legal_rep.auth)
    token = claims(acting.json()["access_token"])
    assert token["ent"] == {"id": enterprise_id, "role": "legal_representative"} and token["acr"] == "L2"

    myself = await api.post("/v1/me/acting", json={"enterprise_id": None}, headers=legal_rep.auth)
    assert myself.status_code == 200 and myself.json()["enterprise"] is None
    assert "ent" not in claims(myself.json()["access_token"])
    assert "ent" not in await refresh(api, legal_rep)

    for enterprise in (other_enterprise, str(ids.new_id())):
        refused = await api.post("/v1/me/acting", json={"enterprise_id": enterprise}, headers=legal_rep.auth)
        assert refused.status_code == 404 and refused.json()["code"] == "enterprise_not_found"
    for body, field in (({}, "enterprise_id"), ({"enterprise_id": "not-a-uuid"}, "enterprise_id")):
        malformed = await api.post("/v1/me/acting", json=body, headers=legal_rep.auth)
        assert malformed.status_code == 400 and malformed.json()["field"] == field
    assert (await api.post("/v1/me/acting", json={"enterprise_id": enterprise_id})).status_code == 401


async def test_an_ended_session_cannot_switch(
    api: ApiClient,
    registry: httpx.AsyncClient,
    stores: Stores,
) -> None:
    """Even before a process has heard of the revocation (its token still passes the guard), no new token
    comes out of an ended session: the switch itself checks the session."""
    legal_rep, enterprise_id = await registered(api, registry, stores)
    token_claims = msgspec.convert(claims(legal_rep.access_token), AccessClaims)
    async with transaction(stores.pool, stores.settings) as conn:
        assert await repository.revoke_session(conn, legal_rep.session_id, "test")
    with pytest.raises(Unauthorized):
        await enterprises.act_as(stores, token_claims, ActAs(enterprise_id=UUID(enterprise_id)))
    answer = await api.post("/v1/me/acting", json={"enterprise_id": enterprise_id}, headers=legal_rep.auth)
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_token"
