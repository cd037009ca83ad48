"""The sandbox enterprise registry and our adapter to it, in process: seeding and lookups, refusals, injected
faults, answers the adapter cannot use, and log lines without personal data."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from stdnum.cn import ric, uscc
from structlog.testing import capture_logs

from auth.enterprise_registry import HttpEnterpriseRegistry, RegistryEnterprise, registry_for
from core.errors import ProviderUnavailable
from core.settings import load_settings
from sandbox.enterprise import create_app
from tests.support.server import free_port

BASE = "http://registry.test"


def a_uscc(serial: int) -> str:
    body = f"91210100{serial:09d}"
    return body + uscc.calc_check_digit(body)


def an_id_number(serial: int) -> str:
    body = f"21010219850304{serial % 1000:03d}"
    return body + ric.calc_check_digit(body + "0")


def row(code: str, **overrides: str) -> dict[str, str]:
    return {
        "uscc": code,
        "name": "沈阳通办科技有限公司",
        "status": "active",
        "legal_rep_name": "王小明",
        "legal_rep_id_number": an_id_number(7),
        **overrides,
    }


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A fresh sandbox registry app, spoken to over ASGI."""
    transport = httpx.ASGITransport(app=create_app())  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


@pytest.fixture
def registry(http: httpx.AsyncClient) -> HttpEnterpriseRegistry:
    return HttpEnterpriseRegistry(BASE, timeout=2.0, retry_after=7, client=http)


async def test_seeded_enterprise_is_found(http: httpx.AsyncClient, registry: HttpEnterpriseRegistry) -> None:
    code = a_uscc(1)
    seeded = await http.post("/registry/enterprises", json=[row(code), row(a_uscc(2), status="cancelled")])
    assert seeded.status_code == 200 and seeded.json() == {"stored": 2}

    raw = await http.get(f"/registry/enterprises/{code}")
    assert raw.json() == row(code)
    assert await registry.lookup(code) == RegistryEnterprise(**row(code))
    cancelled = await registry.lookup(a_uscc(2))
    assert cancelled is not None and cancelled.status == "cancelled"
    assert await registry.lookup(a_uscc(3)) is None


async def test_seeding_again_replaces_and_delete_clears(
    http: httpx.AsyncClient, registry: HttpEnterpriseRegistry
) -> None:
    code = a_uscc(4)
    await http.post("/registry/enterprises", json=[row(code)])
    # Codes are stored in canonical form, whatever the spelling seeded.
    await http.post("/registry/enterprises", json=[row(code.lower(), legal_rep_name="李四")])
    found = await registry.lookup(code)
    assert found is not None and found.legal_rep_name == "李四"
    assert (await http.delete("/registry/enterprises")).json() == {"deleted": 1}
    assert await registry.lookup(code) is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"uscc": "91210100000000001X"}, "uscc"),
        ({"legal_rep_id_number": "210102198503040071"}, "legal_rep_id_number"),
    ],
)
async def test_bad_rows_are_refused_all_or_nothing(
    http: httpx.AsyncClient, overrides: dict[str, str], field: str
) -> None:
    good = row(a_uscc(5))
    answer = await http.post("/registry/enterprises", json=[good, row(a_uscc(6), **overrides)])
    assert answer.status_code == 400
    assert answer.json()["code"] == "isv.INVALID_PARAMETERS" and answer.json()["message"].startswith(field)
    assert overrides[field] not in answer.text  # the refusal does not echo the value
    assert (await http.get(f"/registry/enterprises/{good['uscc']}")).status_code == 404


async def test_injected_faults_make_the_adapter_say_unavailable(
    http: httpx.AsyncClient, registry: HttpEnterpriseRegistry
) -> None:
    code = a_uscc(8)
    await http.post("/registry/enterprises", json=[row(code)])
    await http.post("/sandbox/faults", json={"fail_next": 1})
    with pytest.raises(ProviderUnavailable) as failed:
        await registry.lookup(code)
    assert failed.value.retry_after == 1  # the registry's own Retry-After
    assert failed.value.status == 503
    assert await registry.lookup(code) is not None  # the fault passed


async def test_nobody_listening_is_unavailable() -> None:
    registry = HttpEnterpriseRegistry(f"http://127.0.0.1:{free_port()}", timeout=1.0, retry_after=9)
    with pytest.raises(ProviderUnavailable) as failed:
        await registry.lookup(a_uscc(10))
    assert failed.value.retry_after == 9


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"not json"),
        (200, b'{"uscc": "x"}'),  # fields missing
        (400, b'{"code": "isv.INVALID_PARAMETERS", "message": "?"}'),
        (429, b"{}"),
        (500, b"oops"),
    ],
)
async def test_answers_we_cannot_use_are_unavailable(status: int, body: bytes) -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(status, content=body))
    async with httpx.AsyncClient(transport=transport) as client:
        registry = HttpEnterpriseRegistry(BASE, timeout=1.0, client=client)
        with pytest.raises(ProviderUnavailable):
            await registry.lookup(a_uscc(11))


async def test_no_personal_data_in_log_lines(
    http: httpx.AsyncClient, registry: HttpEnterpriseRegistry
) -> None:
    code = a_uscc(12)
    record = row(code)
    with capture_logs() as logs:
        await http.post("/registry/enterprises", json=[record])
        await registry.lookup(code)
        await http.post("/sandbox/faults", json={"fail_next": 1})
        with pytest.raises(ProviderUnavailable):
            await registry.lookup(code)
    assert [entry["event"] for entry in logs] == [
        "enterprise.seeded",
        "enterprise.lookup",
        "enterprise_registry.unavailable",
    ]
    text = json.dumps(logs, ensure_ascii=False, default=str)
    for personal in (record["legal_rep_name"], record["legal_rep_id_number"]):
        assert personal not in text


def test_settings_point_the_adapter_at_the_registry() -> None:
    settings = load_settings(
        {
            "TONGBAN_ENTERPRISE_REGISTRY_URL": "http://10.0.0.5:9000/",
            "TONGBAN_ENTERPRISE_REGISTRY_TIMEOUT": "1.5",
        }
    )
    registry: Any = registry_for(settings)
    assert isinstance(registry, HttpEnterpriseRegistry)
    assert registry.base_url == "http://10.0.0.5:9000"
    assert registry.timeout.read == 1.5
    assert load_settings({}).sandbox_enterprise_port == 8103
