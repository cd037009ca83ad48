"""Real-name verification through the API (in process), against real PostgreSQL and Redis, the sandbox SMS
gateway, population registry and face check as a real process, and the job worker delivering the SMS."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import jwt
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from stdnum.cn import ric

from core.pii.masking import mask_id_number, mask_name
from core.settings import Settings
from core.stores import Stores
from tests.support.auth import last_message_id, read_code
from tests.support.sandbox import Sandbox, start_sandbox
from tests.support.server import Process, free_port, start
from tests.unit.test_realname_validation import random_id_number, random_name

MAX_IMAGE = 2 * 1024 * 1024
FACE = base64.b64encode(b"\xff\xd8\xff\xe0 a live face").decode()
SPOOF = base64.b64encode(b"SPOOF: a printed photo").decode()


@dataclass
class Person:
    name: str
    id_number: str

    @property
    def body(self) -> dict[str, str]:
        return {"name": self.name, "id_number": self.id_number}


@dataclass
class Citizen:
    phone: str
    tokens: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens['access_token']}"}

    @property
    def account_id(self) -> UUID:
        return UUID(self.tokens["account_id"])


class Stack:
    def __init__(self, client: AsyncTestClient, sandbox: Sandbox) -> None:  # type: ignore[type-arg]
        self.client, self.sandbox = client, sandbox

    def url(self, provider: str) -> str:
        return self.sandbox.urls[provider]

    def person(self, *, registered: bool = True) -> Person:
        person = Person(random_name(), random_id_number())
        if registered:
            rows = [msgspec.to_builtins(person)]
            httpx.post(self.url("population") + "/registry/import", json={"rows": rows}).raise_for_status()
        return person

    async def citizen(self) -> Citizen:
        phone = "137" + f"{secrets.randbelow(10**8):08d}"
        before = last_message_id(self.url("sms"), phone)
        sent = await self.client.post("/v1/auth/sms-codes", json={"phone": phone})
        assert sent.status_code == 202, sent.text
        code = await asyncio.to_thread(read_code, self.url("sms"), phone, after=before)
        login = await self.client.post(
            "/v1/auth/login",
            json={
                "phone": phone,
                "code": code,
                "challenge_id": sent.json()["challenge_id"],
                "device": {"id": "it"},
            },
        )
        assert login.status_code == 200, login.text
        return Citizen(phone, login.json())

    async def verify(self, citizen: Citizen, person: Person) -> httpx.Response:
        return await self.client.post("/v1/me/real-name", json=person.body, headers=citizen.headers)

    async def face(self, citizen: Citizen, image: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else citizen.headers
        return await self.client.post("/v1/me/face", json={"image": image}, headers=headers)

    async def verified(self, person: Person | None = None) -> tuple[Citizen, Person, str]:
        """A citizen at L2: (citizen, identity, the L2 access token)."""
        citizen, person = await self.citizen(), person or self.person()
        answer = await self.verify(citizen, person)
        assert answer.status_code == 200, answer.text
        return citizen, person, answer.json()["access_token"]


@pytest.fixture(scope="module")
def sandbox(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    running = start_sandbox(tmp_path_factory.mktemp("realname"), only=["sms", "population", "face"])
    try:
        yield running
    finally:
        running.process.stop()


@pytest.fixture(scope="module")
def worker(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = start(["worker"], sandbox.env, tmp_path_factory.mktemp("worker") / "worker.log", free_port())
    yield process
    process.stop()


@pytest.fixture(scope="module")
async def stack(settings: Settings, sandbox: Sandbox, worker: Process) -> AsyncIterator[Stack]:
    from api.app import create_app

    app_settings = msgspec.structs.replace(
        settings,
        sms_gateway_url=sandbox.urls["sms"],
        population_registry_url=sandbox.urls["population"],
        face_check_url=sandbox.urls["face"],
        realname_provider_timeout=1.0,
        auth_sms_per_ip_hour=10_000,
        auth_realname_per_hour=5,
        auth_face_per_hour=5,
    )
    async with AsyncTestClient(app=create_app(app_settings)) as client:
        yield Stack(client, sandbox)


@pytest.fixture(autouse=True)
def no_faults_left(sandbox: Sandbox) -> Iterator[None]:
    yield
    for provider in ("population", "face"):
        httpx.delete(sandbox.urls[provider] + "/sandbox/faults").raise_for_status()


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


async def account_row(stores: Stores, account_id: UUID) -> Any:
    return await stores.pool.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)


async def events(stores: Stores, account_id: UUID) -> list[tuple[str, str, str]]:
    rows = await stores.pool.fetch(
        "SELECT kind, actor, detail::text AS detail FROM account_events WHERE account_id = $1 ORDER BY id",
        account_id,
    )
    return [(row["kind"], row["actor"], row["detail"]) for row in rows]


# --- L2 ---------------------------------------------------------------------------------------------------


async def test_real_name_raises_the_session_to_l2(stack: Stack, stores: Stores) -> None:
    citizen, person = await stack.citizen(), stack.person()
    answer = await stack.verify(citizen, person)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["level"] == 2 and body["amr"] == ["sms", "idcard"] and body["token_type"] == "Bearer"
    assert set(body) == {"access_token", "token_type", "expires_in", "level", "amr"}
    old, new = claims(citizen.tokens["access_token"]), claims(body["access_token"])
    assert (old["acr"], new["acr"]) == ("L1", "L2") and new["amr"] == ["sms", "idcard"]
    assert new["sid"] == old["sid"] and new["sub"] == old["sub"]

    # The new token works; the old refresh token keeps working and now yields L2 too.
    me = await stack.client.get("/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.json()["level"] == 2
    refreshed = await stack.client.post(
        "/v1/auth/refresh", json={"refresh_token": citizen.tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200 and refreshed.json()["level"] == 2
    assert claims(refreshed.json()["access_token"])["acr"] == "L2"

    # Stored encrypted (bound to this account's row), with the blind index and masked forms.
    row = await account_row(stores, citizen.account_id)
    vault = await stores.vault()
    async with stores.pool.acquire() as conn:
        for column, plain in (("name", person.name), ("id_number", person.id_number)):
            decrypted = await vault.decrypt(
                conn,
                row[f"{column}_enc"],
                table="accounts",
                column=column,
                row_id=citizen.account_id,
                actor="test",
                reason="check storage",
            )
            assert decrypted == plain
    assert row["id_number_bidx"] == vault.blind_index(
        person.id_number, purpose="accounts.id_number", normalize=lambda v: v
    )
    assert row["name_masked"] == mask_name(person.name)
    assert row["id_number_masked"] == mask_id_number(person.id_number)
    assert row["level"] == 2 and list(row["amr"]) == ["sms", "idcard"] and row["real_name_at"] is not None
    assert ("real_name_verified", "self", '{"level": 2}') in await events(stores, citizen.account_id)


async def test_repeating_the_same_identity_is_idempotent_another_is_refused(
    stack: Stack, stores: Stores
) -> None:
    citizen, person, _ = await stack.verified()
    # Same identity, spelled differently (lower-case x, full-width digits, spaces): same answer.
    spelled = Person(f" {person.name} ", "".join(chr(ord(c) + 0xFEE0) for c in person.id_number))
    for again in (person, spelled):
        answer = await stack.verify(citizen, again)
        assert answer.status_code == 200 and answer.json()["level"] == 2
    before = await account_row(stores, citizen.account_id)

    for other in (stack.person(), Person(person.name + "某", person.id_number)):
        refused = await stack.verify(citizen, other)
        assert refused.status_code == 409 and refused.json()["code"] == "already_verified"
    after = await account_row(stores, citizen.account_id)
    assert after["id_number_enc"] == before["id_number_enc"] and after["name_enc"] == before["name_enc"]
    # Each comparison with the stored name decrypted it, and every decrypt is logged, the refused one too.
    reasons = await stores.pool.fetch(
        "SELECT actor, reason FROM pii_access_log WHERE table_name = 'accounts' AND row_id = $1",
        str(citizen.account_id),
    )
    assert [tuple(r) for r in reasons] == [("self", "repeat real-name verification")] * 3


async def test_parallel_requests_of_one_account_both_succeed(stack: Stack) -> None:
    citizen, person = await stack.citizen(), stack.person()
    answers = await asyncio.gather(*(stack.verify(citizen, person) for _ in range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    assert {a.json()["level"] for a in answers} == {2}


def _check(body: str) -> str:
    """`body` (17 digits) with its GB 11643 check digit: only the part under test is wrong."""
    return body + ric.calc_check_digit(body + "0")


@pytest.mark.parametrize(
    ("body", "field", "code", "reason"),
    [
        ({"id_number": "110101199001011230"}, "id_number", "invalid_id_number", "check digit"),
        ({"id_number": _check("11010119900230123")}, "id_number", "invalid_id_number", "birth date"),
        ({"id_number": _check("99999919900101123")}, "id_number", "invalid_id_number", "region code"),
        ({"id_number": "1101011990"}, "id_number", "invalid_id_number", "18 characters"),
        ({"name": "张"}, "name", "invalid_name", "2 to 30"),
        ({"name": "Zhang San"}, "name", "invalid_name", "Chinese characters"),
        ({"name": "阿卜杜拉··艾则孜"}, "name", "invalid_name", "Chinese characters"),
        ({"name": "王" * 31}, "name", "invalid_name", "2 to 30"),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    stack: Stack, body: dict[str, str], field: str, code: str, reason: str
) -> None:
    citizen = await stack.citizen()
    good = stack.person(registered=False)
    answer = await stack.client.post("/v1/me/real-name", json={**good.body, **body}, headers=citizen.headers)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert (problem["field"], problem["code"]) == (field, code) and reason in problem["detail"]
    assert answer.headers["content-type"].startswith("application/problem+json")


async def test_missing_field_is_a_malformed_request(stack: Stack) -> None:
    citizen = await stack.citizen()
    answer = await stack.client.post("/v1/me/real-name", json={"name": "张三"}, headers=citizen.headers)
    assert answer.status_code == 400 and answer.json()["field"] == "id_number"


async def test_no_registry_match_is_real_name_mismatch(stack: Stack, stores: Stores) -> None:
    citizen, person = await stack.citizen(), stack.person()
    for attempt in (Person(person.name + "某", person.id_number), stack.person(registered=False)):
        answer = await stack.verify(citizen, attempt)
        assert answer.status_code == 422 and answer.json()["code"] == "real_name_mismatch"
    row = await account_row(stores, citizen.account_id)
    assert row["level"] == 1 and row["id_number_bidx"] is None and row["name_enc"] is None
    assert ("real_name_failed", "self", '{"reason": "mismatch"}') in await events(stores, citizen.account_id)


async def test_a_taken_id_number_is_409_and_its_holder_is_told(stack: Stack, stores: Stores) -> None:
    holder, person, _ = await stack.verified()
    intruder = await stack.citizen()
    before = last_message_id(stack.url("sms"), holder.phone)
    refused = await stack.verify(intruder, person)
    assert refused.status_code == 409
    assert (refused.json()["code"], refused.json()["field"]) == ("id_number_taken", "id_number")
    row = await account_row(stores, intruder.account_id)
    assert row["level"] == 1 and row["id_number_bidx"] is None

    # The worker sends the holder a notice; it carries no ID number, no name.
    def notice() -> dict[str, Any]:
        import time

        for _ in range(150):
            messages = httpx.get(
                stack.url("sms") + "/sms/outbox", params={"phone": holder.phone, "limit": 1}
            ).json()["messages"]
            if messages and messages[0]["message_id"] != before:
                message: dict[str, Any] = messages[0]
                return message
            time.sleep(0.1)
        raise TimeoutError("no notice reached the holder")

    message = await asyncio.to_thread(notice)
    assert message["template"] == "notice" and "身份证号码" in message["text"]
    for secret in (person.id_number, person.id_number[-4:], person.name, intruder.phone):
        assert secret not in message["text"]
    # The holder's phone was decrypted by "system", with a reason, in the PII access log.
    logged = await stores.pool.fetch(
        """SELECT actor, reason FROM pii_access_log
           WHERE table_name = 'accounts' AND column_name = 'phone' AND row_id = $1""",
        str(holder.account_id),
    )
    assert [(r["actor"], bool(r["reason"])) for r in logged] == [("system", True)]
    assert ("id_number_claim_refused", "system", "{}") in await events(stores, holder.account_id)


async def test_two_accounts_racing_for_one_id_number_one_wins(stack: Stack, stores: Stores) -> None:
    first, second, person = await stack.citizen(), await stack.citizen(), stack.person()
    answers = await asyncio.gather(stack.verify(first, person), stack.verify(second, person))
    assert sorted(a.status_code for a in answers) == [200, 409]
    assert [a.json()["code"] for a in answers if a.status_code == 409] == ["id_number_taken"]
    holders = await stores.pool.fetchval(
        "SELECT count(*) FROM accounts WHERE id = ANY($1::uuid[]) AND level = 2",
        [first.account_id, second.account_id],
    )
    assert holders == 1


async def test_registry_down_or_slow_is_503_and_nothing_changes(stack: Stack, stores: Stores) -> None:
    citizen, person = await stack.citizen(), stack.person()
    registry = stack.url("population")
    httpx.post(registry + "/sandbox/faults", json={"fail_next": 1}).raise_for_status()
    down = await stack.verify(citizen, person)
    assert down.status_code == 503 and down.json()["code"] == "provider_unavailable"
    assert down.headers["retry-after"] == "1"

    httpx.post(
        registry + "/sandbox/faults", json={"latency_ms": 1500}
    ).raise_for_status()  # > the 1 s timeout
    slow = await stack.verify(citizen, person)
    assert slow.status_code == 503 and slow.json()["code"] == "provider_unavailable"
    assert (await account_row(stores, citizen.account_id))["level"] == 1

    httpx.delete(registry + "/sandbox/faults").raise_for_status()
    assert (await stack.verify(citizen, person)).status_code == 200


async def test_attempts_are_limited_per_account(stack: Stack) -> None:
    citizen, other = await stack.citizen(), await stack.citizen()
    answers = [(await stack.verify(citizen, stack.person(registered=False))).status_code for _ in range(6)]
    assert answers == [422] * 5 + [429]
    limited = await stack.verify(citizen, stack.person())
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert 0 < int(limited.headers["retry-after"]) <= 3600
    # Typos caught before any lookup do not count, and other accounts are not affected.
    typos = [(await stack.verify(other, Person("张", random_id_number()))).status_code for _ in range(6)]
    assert typos == [422] * 6
    assert (await stack.verify(other, stack.person())).status_code == 200


async def test_real_name_needs_a_citizen_token(stack: Stack) -> None:
    answer = await stack.client.post("/v1/me/real-name", json=stack.person(registered=False).body)
    assert answer.status_code == 401


# --- L3 ---------------------------------------------------------------------------------------------------


async def test_face_check_raises_to_l3(stack: Stack, stores: Stores) -> None:
    citizen, person, l2_token = await stack.verified()
    answer = await stack.face(citizen, FACE, token=l2_token)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["level"] == 3 and body["amr"] == ["sms", "idcard", "face"]
    token = claims(body["access_token"])
    assert token["acr"] == "L3" and token["amr"] == ["sms", "idcard", "face"]
    assert token["sid"] == claims(l2_token)["sid"]
    row = await account_row(stores, citizen.account_id)
    assert row["level"] == 3 and row["face_verified_at"] is not None
    logged = await stores.pool.fetch(
        """SELECT column_name, actor, reason FROM pii_access_log
           WHERE table_name = 'accounts' AND row_id = $1 ORDER BY id""",
        str(citizen.account_id),
    )
    assert [tuple(r) for r in logged] == [("name", "self", "face check"), ("id_number", "self", "face check")]
    refreshed = await stack.client.post(
        "/v1/auth/refresh", json={"refresh_token": citizen.tokens["refresh_token"]}
    )
    assert claims(refreshed.json()["access_token"])["acr"] == "L3"
    # Real-name again at L3 with the same identity is idempotent and keeps L3.
    again = await stack.client.post(
        "/v1/me/real-name", json=person.body, headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert again.status_code == 200 and again.json()["level"] == 3
    assert claims(again.json()["access_token"])["acr"] == "L3"


async def test_face_below_threshold_is_face_mismatch(stack: Stack, stores: Stores) -> None:
    citizen, _person, l2_token = await stack.verified()
    answer = await stack.face(citizen, SPOOF, token=l2_token)
    assert answer.status_code == 422
    assert (answer.json()["code"], answer.json()["field"]) == ("face_mismatch", "image")
    assert (await account_row(stores, citizen.account_id))["level"] == 2
    kinds = [kind for kind, _, _ in await events(stores, citizen.account_id)]
    assert kinds[-1] == "face_check_failed"


async def test_face_without_l2_is_403(stack: Stack) -> None:
    citizen = await stack.citizen()
    answer = await stack.face(citizen, FACE)
    assert answer.status_code == 403 and answer.json()["code"] == "insufficient_level"


@pytest.mark.parametrize(
    ("image", "code"),
    [
        (base64.b64encode(b"\xff" * (MAX_IMAGE + 1)).decode(), "image_too_large"),
        ("this is not base64!", "invalid_image"),
        ("", "invalid_image"),
    ],
    ids=["too-large", "not-base64", "empty"],
)
async def test_bad_images_are_422(stack: Stack, image: str, code: str) -> None:
    citizen, _person, l2_token = await stack.verified()
    answer = await stack.face(citizen, image, token=l2_token)
    assert answer.status_code == 422
    assert (answer.json()["code"], answer.json()["field"]) == (code, "image")


async def test_face_provider_down_is_503(stack: Stack) -> None:
    citizen, _person, l2_token = await stack.verified()
    httpx.post(stack.url("face") + "/sandbox/faults", json={"fail_next": 1}).raise_for_status()
    answer = await stack.face(citizen, FACE, token=l2_token)
    assert answer.status_code == 503 and answer.json()["code"] == "provider_unavailable"


# --- GET /v1/me and what is stored ------------------------------------------------------------------------


async def test_me_shows_only_masked_values(stack: Stack) -> None:
    citizen = await stack.citizen()
    before = await stack.client.get("/v1/me", headers=citizen.headers)
    assert before.status_code == 200
    first = before.json()
    assert first["level"] == 1 and first["name"] is None and first["id_number"] is None
    assert first["phone"] == citizen.phone[:3] + "****" + citizen.phone[-4:]
    assert first["id"] == str(citizen.account_id) and first["status"] == "active"

    person = stack.person()
    token = (await stack.verify(citizen, person)).json()["access_token"]
    after = await stack.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    me = after.json()
    assert me["name"] == mask_name(person.name) and me["id_number"] == mask_id_number(person.id_number)
    assert me["amr"] == ["sms", "idcard"]
    for secret in (person.name, person.id_number, person.id_number[4:14], citizen.phone):
        assert secret not in after.text
    assert (await stack.client.get("/v1/me")).status_code == 401


async def test_no_plaintext_name_or_id_number_anywhere_in_the_database(stack: Stack, stores: Stores) -> None:
    citizen, person, token = await stack.verified()
    await stack.face(citizen, FACE, token=token)
    needles = [person.name, person.id_number]
    needles += [value.encode().hex() for value in needles]  # as bytea prints
    tables = await stores.pool.fetch(
        """SELECT table_name FROM information_schema.tables
           WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"""
    )
    assert "accounts" in {t["table_name"] for t in tables}
    for table in tables:
        rows = await stores.pool.fetch(f'SELECT t::text AS row FROM "{table["table_name"]}" t')  # noqa: S608
        for row in rows:
            for needle in needles:
                assert needle not in row["row"], table["table_name"]
    # Redis too (rate limits, queued jobs): keys and string values.
    async for key in stores.redis.scan_iter(count=500):
        values = [key]
        if await stores.redis.type(key) in (b"string", "string"):
            values.append(await stores.redis.get(key) or b"")
        for value in values:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            for needle in needles[:2]:
                assert needle not in text
