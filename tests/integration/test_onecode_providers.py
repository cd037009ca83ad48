"""The one-code provider adapters against the sandbox transit operator, medical-insurance platform and payment
acquirer running as a real process (`tongban sandbox start`), as they would reach the real providers."""

from __future__ import annotations

import json
import secrets
import socket
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from stdnum import luhn
from structlog.testing import capture_logs

from core.clock import SHANGHAI
from core.errors import ProviderUnavailable
from core.settings import load_settings
from onecode.providers import (
    EC_QUERY_PATH,
    EcVoucher,
    HttpMedicalInsurance,
    HttpPaymentAcquirer,
    HttpTransitOperator,
    PaymentResult,
    ProviderRejected,
    StatementLine,
    close_providers,
    medical_insurance,
    payment_acquirer,
    statement_window,
    transit_operator,
)
from sandbox.providers import PROVIDERS
from sandbox.runner import _bind
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.server import free_port
from tests.unit.test_realname_validation import random_id_number, random_name

TIMEOUT = 0.5  # the adapters' budget here: every outage must surface within it
ONECODE = ["transit", "medical", "acquirer"]


def today() -> date:
    return datetime.now(SHANGHAI).date()


def new_ref(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def new_card_number() -> str:
    body = "6222" + "".join(secrets.choice("0123456789") for _ in range(11))
    return body + luhn.calc_check_digit(body)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox"), only=ONECODE) as running:
        yield running


# One client for the knobs: a new httpx client per call costs more than the call.
_knobs = httpx.Client(timeout=5.0)


@pytest.fixture(autouse=True)
def clean_faults(sandbox: Sandbox) -> Iterator[None]:
    yield
    for name in ONECODE:  # faults and limits never leak into the next test
        _knobs.delete(sandbox.urls[name] + "/sandbox/faults").raise_for_status()
    knob(sandbox, "acquirer", "/sandbox/acquirer/config", {"per_payment_limit_fen": 100_000})


@pytest.fixture
async def transit(sandbox: Sandbox) -> AsyncIterator[HttpTransitOperator]:
    adapter = HttpTransitOperator(sandbox.urls["transit"], timeout=TIMEOUT, retry_after=7)
    yield adapter
    await adapter.aclose()


@pytest.fixture
async def medical(sandbox: Sandbox) -> AsyncIterator[HttpMedicalInsurance]:
    adapter = HttpMedicalInsurance(sandbox.urls["medical"], timeout=TIMEOUT, retry_after=7)
    yield adapter
    await adapter.aclose()


@pytest.fixture
async def acquirer(sandbox: Sandbox) -> AsyncIterator[HttpPaymentAcquirer]:
    adapter = HttpPaymentAcquirer(sandbox.urls["acquirer"], timeout=TIMEOUT, retry_after=7)
    yield adapter
    await adapter.aclose()


def knob(sandbox: Sandbox, name: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Straight to a sandbox knob, as a test or a developer does."""
    url = sandbox.urls[name] + path
    response = _knobs.get(url) if body is None else _knobs.post(url, json=body)
    response.raise_for_status()
    return response.json()


# --- transit ---------------------------------------------------------------------------------------------


async def test_transit_link_gives_one_account_per_reference(transit: HttpTransitOperator) -> None:
    citizen = new_ref("citizen")
    account = await transit.link(citizen)
    assert account.startswith("TA")
    assert await transit.link(citizen) == account
    assert await transit.link(new_ref("citizen")) != account


async def test_fare_is_charged_once_per_ride(transit: HttpTransitOperator) -> None:
    account = await transit.link(new_ref("citizen"))
    ride = new_ref("ride")
    txn = await transit.charge_fare(account, 200, ride)
    assert await transit.charge_fare(account, 200, ride) == txn  # a retry answers the first charge
    other = await transit.charge_fare(account, 300, new_ref("ride"))
    assert other != txn

    lines = {line.provider_ref: line for line in await transit.statement(today())}
    assert lines[txn].amount_fen == 200 and lines[txn].kind == "fare"
    assert lines[other].amount_fen == 300
    assert sum(1 for ref in lines if ref == txn) == 1


async def test_fare_refusals_carry_the_operators_reason(transit: HttpTransitOperator) -> None:
    account = await transit.link(new_ref("citizen"))
    ride = new_ref("ride")
    await transit.charge_fare(account, 200, ride)
    with pytest.raises(ProviderRejected) as conflict:
        await transit.charge_fare(account, 250, ride)  # same ride, another fare
    assert conflict.value.reason == "ride_ref_conflict" and conflict.value.status == 502
    assert conflict.value.code == "provider_rejected" and "ride_ref_conflict" in conflict.value.detail
    with pytest.raises(ProviderRejected) as unknown:
        await transit.charge_fare("TA-NOT-LINKED", 200, new_ref("ride"))
    assert unknown.value.reason == "account_not_found"
    with pytest.raises(ProviderRejected) as bad:
        await transit.charge_fare(account, 0, new_ref("ride"))
    assert bad.value.reason == "isv.INVALID_PARAMETERS"


async def test_statement_holds_the_settlement_day_only(transit: HttpTransitOperator) -> None:
    account = await transit.link(new_ref("citizen"))
    before = datetime.now(UTC)
    txn = await transit.charge_fare(account, 400, new_ref("ride"))
    [line] = [line for line in await transit.statement(today()) if line.provider_ref == txn]
    assert isinstance(line, StatementLine)
    assert line.occurred_at.tzinfo is not None and before - timedelta(seconds=1) < line.occurred_at
    start, end = statement_window(today())
    assert start <= line.occurred_at < end and end - start == timedelta(days=1)
    assert start.astimezone(SHANGHAI).hour == 0  # the day is an Asia/Shanghai calendar day
    yesterday = await transit.statement(today() - timedelta(days=1))
    assert txn not in {line.provider_ref for line in yesterday}


async def test_injected_transit_mismatch_shows_in_the_statement(
    sandbox: Sandbox, transit: HttpTransitOperator
) -> None:
    account = await transit.link(new_ref("citizen"))
    ride = new_ref("ride")
    altered = await transit.charge_fare(account, 200, ride)
    dropped = await transit.charge_fare(account, 200, new_ref("ride"))
    phantom = new_ref("trn-phantom")
    knob(sandbox, "transit", "/sandbox/statement", {"provider_ref": altered, "amount_fen": 210})
    knob(sandbox, "transit", "/sandbox/statement", {"provider_ref": phantom, "amount_fen": 90})
    _knobs.delete(f"{sandbox.urls['transit']}/sandbox/statement/{dropped}").raise_for_status()

    lines = {line.provider_ref: line for line in await transit.statement(today())}
    assert lines[altered].amount_fen == 210
    assert lines[phantom].amount_fen == 90 and lines[phantom].kind == "fare"
    assert dropped not in lines
    # Only the statement changed: replaying the ride still answers the first charge, as it was.
    assert await transit.charge_fare(account, 200, ride) == altered


async def test_injected_line_can_land_on_another_day(sandbox: Sandbox, transit: HttpTransitOperator) -> None:
    ref = new_ref("trn-late")
    yesterday = today() - timedelta(days=1)
    start, _ = statement_window(yesterday)
    knob(
        sandbox,
        "transit",
        "/sandbox/statement",
        {"provider_ref": ref, "amount_fen": 150, "occurred_at": (start + timedelta(hours=1)).isoformat()},
    )
    assert ref in {line.provider_ref for line in await transit.statement(yesterday)}
    assert ref not in {line.provider_ref for line in await transit.statement(today())}


# --- medical insurance -----------------------------------------------------------------------------------


async def test_medical_link_gives_one_insured_person(medical: HttpMedicalInsurance) -> None:
    name, id_number = random_name(), random_id_number()
    psn_no = await medical.link(new_ref("citizen"), name, id_number)
    assert psn_no.startswith("psn_") and id_number not in psn_no
    assert await medical.link(new_ref("citizen"), name, id_number.lower()) == psn_no  # one person, one psnNo

    with pytest.raises(ProviderRejected) as mismatch:
        await medical.link(new_ref("citizen"), name + "某", id_number)
    assert mismatch.value.reason == "identity_mismatch"
    with pytest.raises(ProviderRejected) as invalid:
        broken = id_number[:-1] + ("0" if id_number[-1] != "0" else "1")
        await medical.link(new_ref("citizen"), name, broken)
    assert invalid.value.reason == "invalid_id_number"


async def test_ec_query_answers_the_e_voucher_field_by_field(
    sandbox: Sandbox, medical: HttpMedicalInsurance
) -> None:
    name, id_number = "欧阳娜娜", random_id_number()
    psn_no = await medical.link(new_ref("citizen"), name, id_number)
    asked = datetime.now(UTC)

    voucher = await medical.ec_query(psn_no, "H21010200001")
    assert isinstance(voucher, EcVoucher)
    assert voucher.masked_name == "欧***"
    assert voucher.masked_id_number == id_number[:4] + "*" * 10 + id_number[-4:]
    assert voucher.id_type == "01"
    assert voucher.insurance_region == "210100"
    assert len(voucher.ec_token) <= 40 and voucher.ec_token.startswith("210100ec")
    assert asked + timedelta(minutes=29) < voucher.expires_at <= asked + timedelta(minutes=31)
    assert (await medical.ec_query(psn_no, "H21010200001")).ec_token != voucher.ec_token  # one per query
    # Encoded, the voucher speaks the ec.query names (what a hospital counter expects).
    assert set(msgspec.to_builtins(voucher)) == {
        "ecToken",
        "userName",
        "idNo",
        "idType",
        "insuOrg",
        "ecTokenExpireTime",
    }

    # The wire: the request envelope and the answer envelope as the e-voucher interface has them.
    envelope = {
        "orgId": "H21010200001",
        "transType": "ec.query",
        "data": {"orgId": "H21010200001", "businessType": "01301", "officeId": "32760", "psnNo": psn_no},
    }
    answer = _knobs.post(sandbox.urls["medical"] + EC_QUERY_PATH, json=envelope).json()
    assert answer["code"] == 0 and answer["message"]
    data = answer["data"]
    assert set(data) == {"ecToken", "userName", "idNo", "idType", "insuOrg", "ecIndexNo", "ecTokenExpireTime"}
    assert data["userName"] == "欧***" and data["idNo"] == voucher.masked_id_number
    assert data["insuOrg"] == "210100" and data["idType"] == "01"
    assert datetime.fromisoformat(data["ecTokenExpireTime"]).utcoffset() == timedelta(hours=8)
    assert name not in str(answer) and id_number not in str(answer)


async def test_ec_query_refusals_carry_the_platforms_reason(
    sandbox: Sandbox, medical: HttpMedicalInsurance
) -> None:
    with pytest.raises(ProviderRejected) as unknown:
        await medical.ec_query("psn_nobody", "H21010200001")
    assert unknown.value.reason == "voucher_not_found"
    psn_no = await medical.link(new_ref("citizen"), random_name(), random_id_number())
    with pytest.raises(ProviderRejected) as bad_type:
        await medical.ec_query(psn_no, "H21010200001", business_type="99999")
    assert bad_type.value.reason == "invalid_parameters"
    # The region the platform answers is its own setting.
    knob(sandbox, "medical", "/sandbox/medical/config", {"insu_org": "210200"})
    try:
        later = await medical.link(new_ref("citizen"), random_name(), random_id_number())
        assert (await medical.ec_query(later, "H21010200001")).insurance_region == "210200"
        assert (await medical.ec_query(psn_no, "H21010200001")).insurance_region == "210100"
    finally:
        knob(sandbox, "medical", "/sandbox/medical/config", {"insu_org": "210100"})


# --- payment ---------------------------------------------------------------------------------------------


async def test_tokenise_keeps_nothing_but_the_last_four(
    sandbox: Sandbox, acquirer: HttpPaymentAcquirer
) -> None:
    card = new_card_number()
    token = await acquirer.tokenise(new_ref("citizen"), card[:4] + " " + card[4:])
    assert token.startswith("tok_") and card[-8:] not in token
    held = knob(sandbox, "acquirer", f"/sandbox/acquirer/tokens/{token}")
    assert held["last4"] == card[-4:] and held["brand"] == "unionpay"
    assert card not in str(held) and card[:-4] not in str(held)
    with pytest.raises(ProviderRejected) as bad:
        await acquirer.tokenise(new_ref("citizen"), card[:-1] + str((int(card[-1]) + 1) % 10))
    assert bad.value.reason == "invalid_card_number" and card[:-1] not in bad.value.detail


async def test_authorise_is_idempotent_by_key(sandbox: Sandbox, acquirer: HttpPaymentAcquirer) -> None:
    token = await acquirer.tokenise(new_ref("citizen"), new_card_number())
    key = new_ref("pay")
    first = await acquirer.authorise(token, 1250, key, "merchant:pos-1")
    assert isinstance(first, PaymentResult)
    assert first.approved and first.reason is None and first.amount_fen == 1250
    assert await acquirer.authorise(token, 1250, key, "merchant:pos-1") == first
    assert knob(sandbox, "acquirer", f"/sandbox/acquirer/tokens/{token}")["balance_fen"] == 500_000 - 1250

    lines = [line for line in await acquirer.statement(today()) if line.provider_ref == first.provider_ref]
    assert [(line.kind, line.amount_fen) for line in lines] == [("payment", 1250)]

    with pytest.raises(ProviderRejected) as reused:
        await acquirer.authorise(token, 1300, key, "merchant:pos-1")
    assert reused.value.reason == "idempotency_key_reused"
    with pytest.raises(ProviderRejected) as unknown:
        await acquirer.authorise("tok_unknown", 100, new_ref("pay"), "merchant:pos-1")
    assert unknown.value.reason == "token_not_found"


async def test_amount_over_the_limit_is_declined_with_a_reason(
    sandbox: Sandbox, acquirer: HttpPaymentAcquirer
) -> None:
    knob(sandbox, "acquirer", "/sandbox/acquirer/config", {"per_payment_limit_fen": 5000})
    token = await acquirer.tokenise(new_ref("citizen"), new_card_number())
    key = new_ref("pay")
    declined = await acquirer.authorise(token, 5001, key, "merchant:pos-1")
    assert not declined.approved and declined.reason == "over_limit" and declined.provider_ref
    assert await acquirer.authorise(token, 5001, key, "merchant:pos-1") == declined  # a decline replays too
    assert (await acquirer.authorise(token, 5000, new_ref("pay"), "merchant:pos-1")).approved
    assert knob(sandbox, "acquirer", f"/sandbox/acquirer/tokens/{token}")["balance_fen"] == 500_000 - 5000
    refs = {line.provider_ref for line in await acquirer.statement(today())}
    assert declined.provider_ref not in refs  # nothing was charged


async def test_insufficient_funds_is_declined_with_a_reason(
    sandbox: Sandbox, acquirer: HttpPaymentAcquirer
) -> None:
    token = await acquirer.tokenise(new_ref("citizen"), new_card_number())
    knob(sandbox, "acquirer", f"/sandbox/acquirer/tokens/{token}", {"balance_fen": 300})
    declined = await acquirer.authorise(token, 301, new_ref("pay"), "merchant:pos-1")
    assert (declined.approved, declined.reason) == (False, "insufficient_funds")
    assert (await acquirer.authorise(token, 300, new_ref("pay"), "merchant:pos-1")).approved
    assert knob(sandbox, "acquirer", f"/sandbox/acquirer/tokens/{token}")["balance_fen"] == 0


async def test_injected_payment_mismatch_shows_in_the_statement(
    sandbox: Sandbox, acquirer: HttpPaymentAcquirer
) -> None:
    token = await acquirer.tokenise(new_ref("citizen"), new_card_number())
    paid = await acquirer.authorise(token, 880, new_ref("pay"), "merchant:pos-1")
    knob(sandbox, "acquirer", "/sandbox/statement", {"provider_ref": paid.provider_ref, "amount_fen": 808})
    [line] = [line for line in await acquirer.statement(today()) if line.provider_ref == paid.provider_ref]
    assert line.amount_fen == 808 and line.kind == "payment"


# --- outages ---------------------------------------------------------------------------------------------


async def _one_call(adapter: Any, name: str) -> None:
    if name == "transit":
        await adapter.link(new_ref("citizen"))
    elif name == "medical":
        await adapter.ec_query("psn_any", "H21010200001")
    else:
        await adapter.authorise("tok_any", 100, new_ref("pay"), "merchant:pos-1")


ADAPTERS = {"transit": HttpTransitOperator, "medical": HttpMedicalInsurance, "acquirer": HttpPaymentAcquirer}


@pytest.mark.parametrize("name", ONECODE)
async def test_failing_provider_is_unavailable_at_once(sandbox: Sandbox, name: str) -> None:
    adapter = ADAPTERS[name](sandbox.urls[name], timeout=TIMEOUT, retry_after=7)
    try:
        knob(sandbox, name, "/sandbox/faults", {"fail_next": 1})
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable) as failed:
            await _one_call(adapter, name)
        assert time.monotonic() - started < TIMEOUT
        assert failed.value.status == 503 and failed.value.retry_after == 1  # the provider's Retry-After
    finally:
        await adapter.aclose()


@pytest.mark.parametrize("name", ONECODE)
async def test_slow_provider_is_unavailable_within_the_timeout(sandbox: Sandbox, name: str) -> None:
    adapter = ADAPTERS[name](sandbox.urls[name], timeout=TIMEOUT, retry_after=7)
    knob(sandbox, name, "/sandbox/faults", {"latency_ms": 1500})
    try:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable) as slow:
            await _one_call(adapter, name)
        assert time.monotonic() - started < TIMEOUT + 0.25
        assert slow.value.retry_after == 7
    finally:
        await adapter.aclose()


@pytest.mark.parametrize("name", ONECODE)
async def test_provider_down_is_unavailable_at_once(name: str) -> None:
    adapter = ADAPTERS[name](f"http://127.0.0.1:{free_port()}", timeout=TIMEOUT, retry_after=7)
    try:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable) as down:
            await _one_call(adapter, name)
        assert time.monotonic() - started < TIMEOUT
        assert down.value.code == "provider_unavailable" and down.value.retry_after == 7
    finally:
        await adapter.aclose()


async def test_statement_download_fails_as_an_outage(sandbox: Sandbox, acquirer: HttpPaymentAcquirer) -> None:
    knob(sandbox, "acquirer", "/sandbox/faults", {"fail_next": 1})
    with pytest.raises(ProviderUnavailable):
        await acquirer.statement(today())
    assert isinstance(await acquirer.statement(today()), list)  # the next one answers


def _answering(status: int, body: bytes, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, content=body, headers=headers))


@pytest.mark.parametrize(
    ("status", "body", "headers", "retry_after"),
    [
        (429, b"{}", {"Retry-After": "30"}, 30),  # throttled: passes like an outage
        (200, b"<html>maintenance</html>", None, 7),
        (
            200,
            b'{"approved": true, "provider_ref": "p", "amount_fen": 1, "reason": "over_limit",'
            b' "authorised_at": "2026-01-01T00:00:00Z"}',
            None,
            7,
        ),  # approved and declined at once
        (
            200,
            b'{"approved": true, "provider_ref": "p", "amount_fen": 999,'
            b' "reason": null, "authorised_at": "2026-01-01T00:00:00Z"}',
            None,
            7,
        ),  # another amount
    ],
    ids=["429", "not-json", "contradiction", "other-amount"],
)
async def test_nonsense_or_throttling_is_unavailable(
    status: int, body: bytes, headers: dict[str, str] | None, retry_after: int
) -> None:
    adapter = HttpPaymentAcquirer(
        "http://acquirer.invalid", timeout=TIMEOUT, retry_after=7, transport=_answering(status, body, headers)
    )
    try:
        with pytest.raises(ProviderUnavailable) as failed:
            await adapter.authorise("tok_any", 1, new_ref("pay"), "merchant:pos-1")
        assert failed.value.retry_after == retry_after
    finally:
        await adapter.aclose()


async def test_bad_statement_line_is_unavailable() -> None:
    body = b'{"provider_ref": "a", "kind": "fare", "amount_fen": 1, "occurred_at": "2026-01-01T00:00:00"}\n'
    adapter = HttpTransitOperator("http://transit.invalid", timeout=TIMEOUT, transport=_answering(200, body))
    try:
        with pytest.raises(ProviderUnavailable):  # a time without its zone cannot be reconciled
            await adapter.statement(today())
    finally:
        await adapter.aclose()


# --- the process's adapters and personal data ------------------------------------------------------------


def test_sandbox_answers_without_nagle_delay(sandbox: Sandbox) -> None:
    """The resolve benchmark runs against these simulators: an answer must not wait ~40 ms for an ACK."""
    listening = _bind(PROVIDERS["transit"], "127.0.0.1", 0)
    try:
        assert listening.proto == socket.IPPROTO_TCP  # what makes asyncio set TCP_NODELAY on connections
    finally:
        listening.close()
    url = sandbox.urls["transit"] + "/health"
    _knobs.get(url).raise_for_status()  # the connection, kept alive for the rest
    took = []
    for _ in range(15):
        started = time.perf_counter()
        _knobs.get(url).raise_for_status()
        took.append(time.perf_counter() - started)
    assert statistics.median(took) < 0.02


async def test_settings_give_one_shared_adapter_per_provider(sandbox: Sandbox) -> None:
    settings = load_settings({**sandbox.env, "TONGBAN_ONECODE_PROVIDER_TIMEOUT": "0.75"})
    shared = transit_operator(settings)
    assert transit_operator(settings) is shared and shared.timeout == 0.75
    assert shared.base_url == sandbox.urls["transit"]
    assert medical_insurance(settings).base_url == sandbox.urls["medical"]
    assert payment_acquirer(settings).base_url == sandbox.urls["acquirer"]
    assert (await shared.link(new_ref("citizen"))).startswith("TA")
    await close_providers()
    assert transit_operator(settings) is not shared  # closed ones are replaced
    await close_providers()


async def test_personal_data_is_never_logged(
    sandbox: Sandbox, medical: HttpMedicalInsurance, acquirer: HttpPaymentAcquirer
) -> None:
    name, id_number, card = random_name() + "宇", random_id_number(), new_card_number()
    with capture_logs() as logs:
        psn_no = await medical.link(new_ref("citizen"), name, id_number)
        voucher = await medical.ec_query(psn_no, "H21010200001")
        with pytest.raises(ProviderRejected):
            await medical.link(new_ref("citizen"), name + "某", id_number)
        await acquirer.tokenise(new_ref("citizen"), card)
        with pytest.raises(ProviderRejected):
            await acquirer.tokenise(new_ref("citizen"), card[:-1] + str((int(card[-1]) + 1) % 10))
        knob(sandbox, "medical", "/sandbox/faults", {"fail_next": 1})
        with pytest.raises(ProviderUnavailable):
            await medical.link(new_ref("citizen"), name, id_number)
    ours = str(logs)
    theirs = sandbox.log()
    for secret in (name, id_number, card, card[:-4], voucher.masked_name, voucher.masked_id_number):
        assert secret not in ours
    for secret in (name, json.dumps(name)[1:-1], id_number, card, card[:-4]):  # JSON logs escape 汉字
        assert secret not in theirs
