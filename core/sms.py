"""Sending SMS through the configured gateway (settings.sms_gateway_url: the sandbox, or a real provider).

Services depend on the `SmsGateway` protocol; `get_sms_gateway()` gives the process's HTTP one, which shares
one connection pool. A gateway that is down, slow or failing raises ProviderUnavailable (503, retry later);
a refusal (bad phone number, unknown template) raises a TongbanError that says what was refused.
Parameters carry OTP codes: they are never logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import httpx
import msgspec
import structlog

from core.errors import InvalidInput, ProviderUnavailable, TongbanError
from core.settings import Settings, get_settings

log = structlog.get_logger(__name__)
PROVIDER = "SMS gateway"


class SmsGateway(Protocol):
    async def send(self, phone: str, template: str, params: Mapping[str, str]) -> str:
        """Send one templated SMS; returns the provider's message id."""
        ...


class SmsRejected(TongbanError):
    """The gateway refused a message for a reason the citizen cannot fix (our template or account)."""

    status = 502
    code = "sms_rejected"
    title = "SMS gateway refused the message"


class _SendOut(msgspec.Struct):
    message_id: str
    status: str


class _ErrorOut(msgspec.Struct):
    code: str = "unknown"
    message: str = ""


class HttpSmsGateway:
    def __init__(
        self,
        base_url: str,
        *,
        sign: str,
        timeout: float,
        retry_after: int = 5,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.sign = sign
        self.retry_after = retry_after
        self._client = client or httpx.AsyncClient(
            # The timeout bounds each phase; connecting is given less so a dead host fails fast.
            timeout=httpx.Timeout(timeout, connect=min(timeout, 1.0)),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    async def send(self, phone: str, template: str, params: Mapping[str, str]) -> str:
        body = {"phone": phone, "template": template, "params": dict(params), "sign": self.sign}
        try:
            response = await self._client.post(self.base_url + "/sms/send", json=body)
        except httpx.TransportError as exc:  # connect refused/reset, timeouts, protocol errors
            log.warning("sms.provider_unavailable", template=template, reason=type(exc).__name__)
            raise ProviderUnavailable(PROVIDER, self.retry_after) from exc
        if response.status_code >= 500 or response.status_code == 429:
            # 429: the provider throttles our account; like an outage, it passes.
            log.warning("sms.provider_unavailable", template=template, status=response.status_code)
            raise ProviderUnavailable(PROVIDER, _retry_after(response, self.retry_after))
        if response.status_code >= 400:
            raise _refusal(response, template)
        try:
            sent = msgspec.json.decode(response.content, type=_SendOut)
        except msgspec.DecodeError as exc:
            log.warning("sms.provider_unavailable", template=template, reason="bad response body")
            raise ProviderUnavailable(PROVIDER, self.retry_after) from exc
        log.info("sms.sent", template=template, message_id=sent.message_id)
        return sent.message_id

    async def aclose(self) -> None:
        await self._client.aclose()


def _retry_after(response: httpx.Response, default: int) -> int:
    value = response.headers.get("retry-after", "")
    return max(1, int(value)) if value.isdigit() else default


def _refusal(response: httpx.Response, template: str) -> TongbanError:
    try:
        error = msgspec.json.decode(response.content, type=_ErrorOut)
    except msgspec.DecodeError:
        error = _ErrorOut(code=f"http_{response.status_code}")
    log.warning("sms.rejected", template=template, status=response.status_code, provider_code=error.code)
    if error.code == "isv.MOBILE_NUMBER_ILLEGAL":
        return InvalidInput("not a valid mainland mobile phone number", field="phone", code="invalid_phone")
    reason = f"{error.code}: {error.message}" if error.message else error.code
    return SmsRejected(f"the SMS gateway refused template {template!r} ({reason})")


_shared: tuple[asyncio.AbstractEventLoop, HttpSmsGateway] | None = None


def get_sms_gateway(settings: Settings | None = None) -> HttpSmsGateway:
    """The process's gateway, one connection pool for every caller. A pool belongs to the event loop that
    made it, so a new loop (a second asyncio.run in a CLI command) gets a new gateway."""
    global _shared
    loop = asyncio.get_running_loop()
    if _shared is None or _shared[0] is not loop:
        settings = settings or get_settings()
        gateway = HttpSmsGateway(
            settings.sms_gateway_url,
            sign=settings.sms_sign,
            timeout=settings.sms_timeout,
            retry_after=settings.retry_after_seconds,
        )
        _shared = (loop, gateway)
    return _shared[1]


async def close_sms_gateway() -> None:
    """Close the shared pool (app shutdown)."""
    global _shared
    if _shared is not None:
        gateway = _shared[1]
        _shared = None
        await gateway.aclose()
