"""Helpers for the one-code terminal tests (no tests here): the sandbox providers as a real process, stores
and an app wired to them, registered terminals and signed requests, and citizens holding codes."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest
from httpx import Response
from litestar import Litestar
from litestar.testing import AsyncTestClient
from stdnum import luhn

from auth.tokens import authenticate
from core import db
from core.settings import Settings
from core.stores import Stores
from onecode import authorisations, devices, links, terminals
from onecode.client import OneCodeClient, generate_device_key, public_key_b64
from onecode.links import LinkRequest
from onecode.providers import close_providers
from onecode.terminal_auth import signed_headers
from tests.integration.test_miniapps_support import make_person
from tests.support.sandbox import Sandbox, running_sandbox

Client = AsyncTestClient[Litestar]
PROVIDERS = ["transit", "medical", "acquirer"]
BUNDLE = "/v1/terminals/bundle"
RESOLVE = "/v1/terminals/resolve"
RIDES = "/v1/terminals/rides"


# --- fixtures (imported by the test modules) -------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("terminals"), only=PROVIDERS) as running:
        yield running


@pytest.fixture(scope="module")
def provider_settings(settings: Settings, sandbox: Sandbox) -> Settings:
    return msgspec.structs.replace(
        settings,
        transit_operator_url=sandbox.urls["transit"],
        medical_insurance_url=sandbox.urls["medical"],
        payment_acquirer_url=sandbox.urls["acquirer"],
    )


@pytest.fixture(scope="module")
def wired(stores: Stores, provider_settings: Settings) -> Stores:
    """The session's stores, with settings pointing at this module's sandbox providers (the in-process app
    runs on its own event loop, and onecode.providers keeps each loop's adapters apart)."""
    return Stores(settings=provider_settings, pool=stores.pool, redis=stores.redis, _vault=stores._vault)


@pytest.fixture(scope="module")
async def api(provider_settings: Settings) -> AsyncIterator[Client]:
    """The app in process, its providers this module's sandbox."""
    from api.app import create_app

    async with AsyncTestClient(app=create_app(provider_settings)) as test_client:
        yield test_client
    await close_providers()  # the adapters' shared connection pools of this loop


_knobs = httpx.Client(timeout=5.0)


def knob(sandbox: Sandbox, name: str, path: str, body: dict[str, Any] | None = None) -> Any:
    url = sandbox.urls[name] + path
    response = _knobs.get(url) if body is None else _knobs.post(url, json=body)
    response.raise_for_status()
    return response.json()


def provider_down(sandbox: Sandbox, name: str) -> None:
    """Every call to the provider answers 503 until provider_up."""
    knob(sandbox, name, "/sandbox/faults", {"fail_next": 1_000_000})


def provider_up(sandbox: Sandbox, name: str) -> None:
    _knobs.delete(sandbox.urls[name] + "/sandbox/faults").raise_for_status()


# --- terminals -------------------------------------------------------------------------------------------


@dataclass
class Term:
    """A registered terminal and its secret (64 hex digits)."""

    id: UUID
    secret: str
    kind: str

    def headers(self, method: str, path: str, body: bytes = b"", now: float | None = None) -> dict[str, str]:
        return signed_headers(self.id, self.secret, method, path, body, now)


async def make_terminal(stores: Stores, kind: str = "validator", *, org_code: str | None = None) -> Term:
    if kind == "counter" and org_code is None:
        org_code = "H21010200001"
    async with db.connection(stores.pool, stores.settings) as conn:
        made = await terminals.register(
            conn,
            stores.settings,
            kind=kind,
            name=f"测试终端 {secrets.token_hex(3)}",
            owner="测试运营方",
            org_code=org_code,
        )
    return Term(made.terminal.id, made.secret, kind)


async def signed_call(
    client: Client,
    term: Term,
    method: str,
    path: str,
    json: Any = None,
    *,
    now: float | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """One request signed by `term` over exactly the bytes sent."""
    body = b"" if json is None else msgspec.json.encode(json)
    sent = {**term.headers(method, path, body, now), **(headers or {})}
    if json is not None:
        sent["Content-Type"] = "application/json"
    return await client.request(method, path, content=body or None, headers=sent)


# --- citizens holding codes --------------------------------------------------------------------------------


def card_number() -> str:
    body = "6222" + "".join(secrets.choice("0123456789") for _ in range(11))
    return body + luhn.calc_check_digit(body)


@dataclass
class Holder:
    """An L3 citizen with linked providers, a device key and an authorisation: a phone making codes."""

    account_id: UUID
    device_id: UUID
    phone: OneCodeClient

    def code(self, now: float | None = None) -> str:
        return self.phone.make_code(time.time() if now is None else now)

    @property
    def code_id(self) -> bytes:
        return self.phone.code_id


async def make_holder(stores: Stores, kinds: tuple[str, ...] = ("transit", "medical", "payment")) -> Holder:
    """Linked through the real services (the sandbox providers answer), authorised for `kinds`."""
    person = await make_person(stores, level=3)
    claims = await authenticate(stores, person.access_token)
    key = generate_device_key()
    device, _ = await devices.register(stores, person.account_id, public_key_b64(key))
    for kind in kinds:
        request = LinkRequest(kind=kind, card_number=card_number() if kind == "payment" else None)  # type: ignore[arg-type]
        await links.link(stores, person.account_id, claims.level, request)
    issued = await authorisations.issue(stores, person.account_id, device.id)
    return Holder(person.account_id, device.id, OneCodeClient(key, issued.authorisation))
