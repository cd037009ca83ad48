"""Adapters for the one-code providers: the transit operator, the medical-insurance platform (医保信息平台, its
e-voucher decoding ec.query) and the payment acquirer. Services depend on the protocols; the HTTP adapters
reach the configured URLs (settings.transit_operator_url / medical_insurance_url / payment_acquirer_url: the
sandbox, or the real providers).

Online resolve waits on these calls, so they fail fast: one call gets settings.onecode_provider_timeout
seconds in all (connecting at most half a second), and a provider that is down, slow, throttling (429),
failing (5xx) or answering nonsense raises ProviderUnavailable (503 with Retry-After). A refusal of our
request raises ProviderRejected (502) carrying the provider's own reason code. A declined payment is not an
error: `authorise` answers approved=False with the reason ("over_limit", "insufficient_funds").
After ProviderUnavailable a charge may or may not have happened: retry with the same ride_ref /
idempotency_key, which the provider answers from its first answer without charging twice.

Each adapter keeps one pooled connection per provider for the process (`transit_operator(settings)` and the
others give the shared one; `close_providers()` at shutdown). Names, ID numbers and card numbers are never
logged; the masked ones in an e-voucher neither.
"""

from __future__ import annotations

import asyncio
import weakref
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Protocol, TypeVar

import httpx
import msgspec
import structlog

from core.clock import SHANGHAI
from core.errors import ProviderUnavailable, TongbanError
from core.settings import Settings

log = structlog.get_logger(__name__)

TRANSIT = "transit operator"
MEDICAL = "medical-insurance platform"
ACQUIRER = "payment acquirer"
EC_QUERY_PATH = "/localcfc/api/hsecfc/localQrCodeQuery"
# ec.query failure codes the platform answers with HTTP 200 (code 0 is success).
EC_QUERY_REASONS = {-1: "invalid_parameters", 2001: "voucher_not_found"}

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
_T = TypeVar("_T")


class ProviderRejected(TongbanError):
    """The provider refused our request: `reason` is its own code (e.g. "account_not_found",
    "identity_mismatch", "idempotency_key_reused"). Our side, or the link, is wrong: nothing to retry."""

    status = 502
    code = "provider_rejected"
    title = "A one-code provider refused the request"

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"the {provider} refused the request ({reason})")
        self.provider = provider
        self.reason = reason


# --- what the providers answer ---------------------------------------------------------------------------


class StatementLine(msgspec.Struct, frozen=True):
    """One charge on a provider's daily statement: the reconciliation compares these with the ledger."""

    provider_ref: str
    kind: str  # "fare" (transit) or "payment" (acquirer); an injected line may say anything
    amount_fen: int
    occurred_at: AwareTime


class EcVoucher(msgspec.Struct, frozen=True):
    """The e-voucher a hospital counter gets; encodes in the ec.query wire names (ecToken, userName, ...)."""

    ec_token: str = msgspec.field(name="ecToken")
    masked_name: str = msgspec.field(name="userName")
    masked_id_number: str = msgspec.field(name="idNo")
    id_type: str = msgspec.field(name="idType")  # "01": resident ID card
    insurance_region: str = msgspec.field(name="insuOrg")  # 参保地: the 6-digit region code (insuPlc)
    expires_at: AwareTime = msgspec.field(name="ecTokenExpireTime")


class PaymentResult(msgspec.Struct, frozen=True):
    """The acquirer's answer to one authorisation. Declined ones carry the reason and charged nothing."""

    approved: bool
    provider_ref: str
    amount_fen: int
    reason: str | None  # None when approved; "over_limit", "insufficient_funds", ... when declined
    authorised_at: AwareTime


def statement_window(day: date) -> tuple[datetime, datetime]:
    """[start, end) in UTC of a provider's settlement day: an Asia/Shanghai calendar day, as Chinese
    providers settle. The ledger side selects its rows of `day` with the same window."""
    start = datetime.combine(day, time(), SHANGHAI)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


# --- the protocols services depend on --------------------------------------------------------------------


class TransitOperator(Protocol):
    async def link(self, account_ref: str) -> str:
        """The transit account for our opaque account reference (the same one when linked again)."""
        ...

    async def charge_fare(self, account: str, fare_fen: int, ride_ref: str) -> str:
        """Charge one ride; the provider's transaction reference. Idempotent by ride_ref."""
        ...

    async def statement(self, day: date) -> list[StatementLine]:
        """The charges of one settlement day (see statement_window), oldest first."""
        ...


class MedicalInsurance(Protocol):
    async def link(self, account_ref: str, name: str, id_number: str) -> str:
        """Link an L3 citizen: the insured-person reference (psnNo) to keep instead of name and ID number."""
        ...

    async def ec_query(self, insured_ref: str, org_code: str, *, business_type: str = "01101") -> EcVoucher:
        """Decode the e-voucher at a medical institution (org_code: its 定点医药机构编号)."""
        ...


class PaymentAcquirer(Protocol):
    async def tokenise(self, account_ref: str, instrument_hint: str) -> str:
        """Hand the card number to the acquirer once; the token reference to keep (never the number)."""
        ...

    async def authorise(
        self, token_ref: str, amount_fen: int, idempotency_key: str, merchant: str
    ) -> PaymentResult:
        """Authorise an amount; the same idempotency_key answers the first answer, never charging twice."""
        ...

    async def statement(self, day: date) -> list[StatementLine]:
        """The approved payments of one settlement day (see statement_window), oldest first."""
        ...


# --- HTTP ------------------------------------------------------------------------------------------------


class _ErrorOut(msgspec.Struct):
    code: str = "unknown"


class _LinkOut(msgspec.Struct):
    transit_account: str


class _FareOut(msgspec.Struct):
    txn_ref: str


class _InsuredOut(msgspec.Struct, rename="camel"):
    psn_no: str


class _EcQueryOut(msgspec.Struct):
    code: int
    message: str = ""
    data: EcVoucher | str | None = None  # some gateways send the inner JSON as a string


class _TokenOut(msgspec.Struct):
    token_ref: str


_line_decoder = msgspec.json.Decoder(StatementLine)


def _retry_after(response: httpx.Response, default: int) -> int:
    value = response.headers.get("retry-after", "")
    return max(1, int(value)) if value.isdigit() else default


class _HttpProvider:
    """One pooled client per adapter; every call bounded by one deadline and sorted into answer, outage
    (ProviderUnavailable) or refusal (ProviderRejected)."""

    provider = ""
    event = ""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        retry_after: int = 5,
        statement_timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry_after = retry_after
        self.statement_timeout = max(timeout, statement_timeout)  # a day of rides is a big download
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 0.5)),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _unavailable(self, **why: Any) -> ProviderUnavailable:
        log.warning(f"{self.event}.provider_unavailable", provider=self.provider, **why)
        return ProviderUnavailable(self.provider, why.get("retry_after", self.retry_after))

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> bytes:
        """The body of a 200 answer."""
        seconds = deadline or self.timeout
        try:
            async with asyncio.timeout(seconds):
                response = await self._client.request(
                    method,
                    path,
                    content=None if body is None else msgspec.json.encode(body),
                    headers=None if body is None else {"content-type": "application/json"},
                    params=params,
                    timeout=httpx.Timeout(seconds, connect=min(seconds, 0.5))
                    if deadline
                    else httpx.USE_CLIENT_DEFAULT,
                )
        except TimeoutError:
            raise self._unavailable(reason="deadline") from None
        except httpx.TransportError as exc:  # refused, reset, timed out, pool exhausted
            raise self._unavailable(reason=type(exc).__name__) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise self._unavailable(
                status=response.status_code, retry_after=_retry_after(response, self.retry_after)
            )
        if response.status_code != 200:
            try:
                reason = msgspec.json.decode(response.content, type=_ErrorOut).code[:64]
            except (msgspec.DecodeError, msgspec.ValidationError):
                reason = f"http_{response.status_code}"
            log.warning(
                f"{self.event}.provider_rejected",
                provider=self.provider,
                status=response.status_code,
                reason=reason,
            )
            raise ProviderRejected(self.provider, reason)
        return response.content

    def _decode(self, content: bytes, into: type[_T]) -> _T:
        try:
            return msgspec.json.decode(content, type=into)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self._unavailable(reason="bad response body") from exc

    async def _statement(self, path: str, day: date) -> list[StatementLine]:
        content = await self._call(
            "GET", path, params={"date": day.isoformat()}, deadline=self.statement_timeout
        )
        try:
            return _line_decoder.decode_lines(content)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self._unavailable(reason="bad statement line") from exc


class HttpTransitOperator(_HttpProvider):
    provider = TRANSIT
    event = "transit"

    async def link(self, account_ref: str) -> str:
        content = await self._call("POST", "/transit/accounts", body={"account_ref": account_ref})
        return self._decode(content, _LinkOut).transit_account

    async def charge_fare(self, account: str, fare_fen: int, ride_ref: str) -> str:
        body = {"transit_account": account, "fare_fen": fare_fen, "ride_ref": ride_ref}
        content = await self._call("POST", "/transit/fares", body=body)
        return self._decode(content, _FareOut).txn_ref

    async def statement(self, day: date) -> list[StatementLine]:
        return await self._statement("/transit/statement", day)


class HttpMedicalInsurance(_HttpProvider):
    provider = MEDICAL
    event = "medical"

    async def link(self, account_ref: str, name: str, id_number: str) -> str:
        body = {"account_ref": account_ref, "name": name, "id_number": id_number}
        content = await self._call("POST", "/medical/insured", body=body)
        return self._decode(content, _InsuredOut).psn_no

    async def ec_query(
        self,
        insured_ref: str,
        org_code: str,
        *,
        business_type: str = "01101",
        operator_id: str = "",
        operator_name: str = "",
        office_id: str = "",
        office_name: str = "",
    ) -> EcVoucher:
        data = {
            "orgId": org_code,
            "businessType": business_type,
            "operatorId": operator_id,
            "operatorName": operator_name,
            "officeId": office_id,
            "officeName": office_name,
            "psnNo": insured_ref,
        }
        envelope = {"orgId": org_code, "transType": "ec.query", "data": data}
        answer = self._decode(await self._call("POST", EC_QUERY_PATH, body=envelope), _EcQueryOut)
        if answer.code != 0:
            reason = EC_QUERY_REASONS.get(answer.code, f"code_{answer.code}")
            log.warning("medical.provider_rejected", provider=self.provider, reason=reason)
            raise ProviderRejected(self.provider, reason)
        voucher = answer.data
        if isinstance(voucher, str):
            voucher = self._decode(voucher.encode(), EcVoucher)
        if voucher is None:
            raise self._unavailable(reason="ec.query answered no data")
        return voucher


class HttpPaymentAcquirer(_HttpProvider):
    provider = ACQUIRER
    event = "acquirer"

    async def tokenise(self, account_ref: str, instrument_hint: str) -> str:
        body = {"account_ref": account_ref, "card_number": instrument_hint}
        content = await self._call("POST", "/acquirer/tokens", body=body)
        return self._decode(content, _TokenOut).token_ref

    async def authorise(
        self, token_ref: str, amount_fen: int, idempotency_key: str, merchant: str
    ) -> PaymentResult:
        body = {
            "token_ref": token_ref,
            "amount_fen": amount_fen,
            "idempotency_key": idempotency_key,
            "merchant": merchant,
        }
        content = await self._call("POST", "/acquirer/authorisations", body=body)
        result = self._decode(content, PaymentResult)
        if result.approved == (result.reason is not None) or result.amount_fen != amount_fen:
            raise self._unavailable(reason="inconsistent authorisation answer")
        return result

    async def statement(self, day: date) -> list[StatementLine]:
        return await self._statement("/acquirer/statement", day)


# --- the process's adapters ------------------------------------------------------------------------------

# Per event loop (a pool belongs to the loop that made it; a second asyncio.run in a CLI command, or a test's
# in-process app, gets its own), then per provider and settings. Weak: a dead loop's entry goes with it.
_shared: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[type[_HttpProvider], str, float, int], _HttpProvider]
] = weakref.WeakKeyDictionary()


def _shared_adapter(kind: type[_HttpProvider], base_url: str, settings: Settings) -> Any:
    """One adapter (one connection pool) per provider and settings for the process's event loop."""
    adapters = _shared.setdefault(asyncio.get_running_loop(), {})
    key = (kind, base_url, settings.onecode_provider_timeout, settings.retry_after_seconds)
    adapter = adapters.get(key)
    if adapter is None:
        adapter = adapters[key] = kind(
            base_url, timeout=settings.onecode_provider_timeout, retry_after=settings.retry_after_seconds
        )
    return adapter


def transit_operator(settings: Settings) -> HttpTransitOperator:
    adapter: HttpTransitOperator = _shared_adapter(
        HttpTransitOperator, settings.transit_operator_url, settings
    )
    return adapter


def medical_insurance(settings: Settings) -> HttpMedicalInsurance:
    adapter: HttpMedicalInsurance = _shared_adapter(
        HttpMedicalInsurance, settings.medical_insurance_url, settings
    )
    return adapter


def payment_acquirer(settings: Settings) -> HttpPaymentAcquirer:
    adapter: HttpPaymentAcquirer = _shared_adapter(
        HttpPaymentAcquirer, settings.payment_acquirer_url, settings
    )
    return adapter


async def close_providers() -> None:
    """Close this event loop's shared pools (app and worker shutdown); other loops' pools are theirs."""
    for adapter in _shared.pop(asyncio.get_running_loop(), {}).values():
        await adapter.aclose()
