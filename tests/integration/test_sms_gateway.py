"""The SMS adapter against the sandbox gateway running as a real process, as it would reach a real provider."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from structlog.testing import capture_logs

from core.errors import InvalidInput, ProviderUnavailable
from core.settings import Settings
from core.sms import HttpSmsGateway, SmsRejected, close_sms_gateway, get_sms_gateway
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.server import ROOT, free_port, tongban_env


def new_phone() -> str:
    return "139" + "".join(secrets.choice("0123456789") for _ in range(8))


def new_code() -> str:
    return f"{secrets.randbelow(900000) + 100000}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox"), only=["sms"]) as running:
        yield running


@pytest.fixture
def sms_url(sandbox: Sandbox) -> Iterator[str]:
    url = sandbox.urls["sms"]
    yield url
    httpx.delete(url + "/sandbox/faults").raise_for_status()  # faults never leak into the next test


@pytest.fixture
async def gateway(sms_url: str) -> AsyncIterator[HttpSmsGateway]:
    client = HttpSmsGateway(sms_url, sign="通办", timeout=2.0)
    yield client
    await client.aclose()


@pytest.fixture
async def http(sms_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Straight to the gateway, as a test or a developer looks into it."""
    async with httpx.AsyncClient(base_url=sms_url) as client:
        yield client


async def outbox(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await http.get("/sms/outbox", params=params)
    response.raise_for_status()
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def test_sent_message_shows_in_outbox(gateway: HttpSmsGateway, http: httpx.AsyncClient) -> None:
    phone, code = new_phone(), new_code()
    before = time.time()
    message_id = await gateway.send(phone, "login_code", {"code": code, "minutes": "5"})

    [message] = await outbox(http, phone=phone)
    assert message["message_id"] == message_id
    assert message["phone"] == phone
    assert message["template"] == "login_code"
    assert message["params"] == {"code": code, "minutes": "5"}
    assert message["text"].startswith("【通办】")
    assert code in message["text"] and "5分钟" in message["text"]
    sent_at = datetime.fromisoformat(message["sent_at"])
    assert sent_at.utcoffset() == timedelta(0)
    assert before - 1 <= sent_at.timestamp() <= time.time() + 1


async def test_outbox_is_newest_first_filtered_and_limited(
    gateway: HttpSmsGateway, http: httpx.AsyncClient
) -> None:
    phone, other = new_phone(), new_phone()
    ids = [await gateway.send(phone, "notice", {"text": f"第{n}条"}) for n in range(3)]
    other_id = await gateway.send(other, "notice", {"text": "别人的"})

    assert [m["message_id"] for m in await outbox(http, phone=phone)] == ids[::-1]
    assert [m["message_id"] for m in await outbox(http, phone=phone, limit=2)] == [ids[2], ids[1]]
    # The filter takes the number in any accepted spelling.
    assert [m["message_id"] for m in await outbox(http, phone="+86" + other)] == [other_id]
    assert (await outbox(http, limit=1))[0]["message_id"] == other_id


async def test_cli_prints_the_outbox(gateway: HttpSmsGateway, sandbox: Sandbox) -> None:
    phone, code = new_phone(), new_code()
    message_id = await gateway.send(phone, "login_code", {"code": code, "minutes": "5"})
    other_id = await gateway.send(new_phone(), "notice", {"text": "不该出现"})

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "scripts.cli", "sms", "outbox", "--phone", phone, "--limit", "5"],
        cwd=ROOT,
        env={**sandbox.env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert message_id in result.stdout
    assert code in result.stdout and phone in result.stdout
    assert other_id not in result.stdout


def test_cli_says_when_the_gateway_is_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "sms", "outbox"],
        cwd=ROOT,
        env=tongban_env(TONGBAN_SMS_GATEWAY_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "not reachable" in result.stderr and url in result.stderr
    assert "Traceback" not in result.stderr


async def test_injected_failures_raise_provider_unavailable_then_recover(
    gateway: HttpSmsGateway, http: httpx.AsyncClient
) -> None:
    phone = new_phone()
    (await http.post("/sandbox/faults", json={"fail_next": 2})).raise_for_status()

    for _ in range(2):
        with pytest.raises(ProviderUnavailable) as failed:
            await gateway.send(phone, "notice", {"text": "x"})
        assert failed.value.status == 503 and failed.value.code == "provider_unavailable"
        assert failed.value.retry_after == 1  # from the gateway's Retry-After
        assert (await http.get("/health")).status_code == 200  # inspection routes keep answering

    message_id = await gateway.send(phone, "notice", {"text": "y"})
    assert [m["message_id"] for m in await outbox(http, phone=phone)] == [message_id]
    assert (await http.get("/sandbox/faults")).json() == {"fail_next": 0, "latency_ms": 0}


async def test_latency_beyond_the_timeout_raises_provider_unavailable(
    sms_url: str, http: httpx.AsyncClient
) -> None:
    gateway = HttpSmsGateway(sms_url, sign="通办", timeout=0.5)
    try:
        (await http.post("/sandbox/faults", json={"latency_ms": 1500})).raise_for_status()
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable):
            await gateway.send(new_phone(), "notice", {"text": "slow"})
        assert time.monotonic() - started < 1.4  # gave up at the timeout, did not wait for the answer

        (await http.post("/sandbox/faults", json={"latency_ms": 0})).raise_for_status()
        assert await gateway.send(new_phone(), "notice", {"text": "fast"})
    finally:
        await gateway.aclose()


async def test_unreachable_gateway_raises_provider_unavailable() -> None:
    gateway = HttpSmsGateway(f"http://127.0.0.1:{free_port()}", sign="通办", timeout=1.0, retry_after=7)
    try:
        with pytest.raises(ProviderUnavailable) as failed:
            await gateway.send(new_phone(), "notice", {"text": "x"})
        assert failed.value.retry_after == 7
    finally:
        await gateway.aclose()


@pytest.mark.parametrize("phone", ["12345", "23800138000", "1380013800a", "+1 415 555 0100", ""])
async def test_malformed_phone_is_refused_with_4xx(
    gateway: HttpSmsGateway, http: httpx.AsyncClient, phone: str
) -> None:
    body = {"phone": phone, "template": "notice", "params": {"text": "x"}, "sign": "通办"}
    response = await http.post("/sms/send", json=body)
    assert response.status_code == 400
    assert response.json()["code"] == "isv.MOBILE_NUMBER_ILLEGAL"

    with pytest.raises(InvalidInput) as refused:
        await gateway.send(phone, "notice", {"text": "x"})
    assert refused.value.field == "phone" and refused.value.code == "invalid_phone"


async def test_bad_template_or_params_are_refused(gateway: HttpSmsGateway, http: httpx.AsyncClient) -> None:
    body = {"phone": new_phone(), "template": "no_such", "params": {}, "sign": "通办"}
    response = await http.post("/sms/send", json=body)
    assert response.status_code == 400 and response.json()["code"] == "isv.SMS_TEMPLATE_ILLEGAL"
    bad_sign = await http.post("/sms/send", json={**body, "template": "notice", "sign": "x"})
    assert bad_sign.status_code == 400 and bad_sign.json()["code"] == "isv.SMS_SIGNATURE_ILLEGAL"
    wrong_type = await http.post("/sms/send", json={**body, "phone": 13800138000})
    assert wrong_type.status_code == 400 and "phone" in wrong_type.json()["message"]

    with pytest.raises(SmsRejected) as unknown:
        await gateway.send(new_phone(), "no_such", {})
    assert unknown.value.status == 502 and "no_such" in unknown.value.detail
    with pytest.raises(SmsRejected) as missing:
        await gateway.send(new_phone(), "login_code", {"code": "123456"})
    assert "minutes" in missing.value.detail


async def test_outbox_can_be_cleared(http: httpx.AsyncClient) -> None:
    body = {"phone": new_phone(), "template": "notice", "params": {"text": "x"}, "sign": "通办"}
    (await http.post("/sms/send", json=body)).raise_for_status()
    cleared = await http.delete("/sms/outbox")
    assert cleared.status_code == 200 and cleared.json()["deleted"] >= 1
    assert await outbox(http) == []


async def test_no_message_text_in_any_log(gateway: HttpSmsGateway, sandbox: Sandbox) -> None:
    phone, code = new_phone(), new_code()
    with capture_logs() as adapter_logs:
        message_id = await gateway.send(phone, "login_code", {"code": code, "minutes": "5"})
    assert any(entry.get("message_id") == message_id for entry in adapter_logs)
    assert code not in repr(adapter_logs) and phone not in repr(adapter_logs)

    for _ in range(100):  # the gateway writes its log line just after answering
        if message_id in sandbox.log():
            break
        await asyncio.sleep(0.05)
    gateway_log = sandbox.log()
    assert message_id in gateway_log  # it does log the send ...
    assert code not in gateway_log and phone not in gateway_log  # ... but not what was in it


async def test_shared_gateway_follows_settings(
    settings: Settings, sms_url: str, http: httpx.AsyncClient
) -> None:
    configured = msgspec.structs.replace(settings, sms_gateway_url=sms_url, sms_sign="辽事通")
    try:
        shared = get_sms_gateway(configured)
        assert get_sms_gateway(configured) is shared  # one connection pool per process
        phone = new_phone()
        await shared.send(phone, "notice", {"text": "x"})
        assert (await outbox(http, phone=phone))[0]["text"] == "【辽事通】x"
    finally:
        await close_sms_gateway()
