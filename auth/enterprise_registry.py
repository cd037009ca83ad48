"""Looking legal persons up in the enterprise registry (settings.enterprise_registry_url: the sandbox, or the
real register of market entities).

Services depend on the `EnterpriseRegistry` protocol; `registry_for(settings)` gives the HTTP one. A registry
that is down, slow or answers nonsense raises ProviderUnavailable (503, retry later). An answer carries the
legal representative's name and ID number: never logged.
"""

from __future__ import annotations

from typing import Protocol

import httpx
import msgspec
import structlog

from core.errors import ProviderUnavailable
from core.settings import Settings

log = structlog.get_logger(__name__)
PROVIDER = "enterprise registry"


class RegistryEnterprise(msgspec.Struct, frozen=True):
    uscc: str
    name: str
    status: str
    legal_rep_name: str
    legal_rep_id_number: str


class EnterpriseRegistry(Protocol):
    async def lookup(self, uscc: str) -> RegistryEnterprise | None:
        """The registered enterprise with this (valid, canonical) credit code; None if there is none."""
        ...


class HttpEnterpriseRegistry:
    """GET {base}/registry/enterprises/{uscc}. Registrations are rare, so each lookup opens its own
    connection unless a shared client is given (nothing left open between requests, nothing to close)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        retry_after: int = 5,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 1.0))
        self.retry_after = retry_after
        self._client = client

    async def lookup(self, uscc: str) -> RegistryEnterprise | None:
        url = f"{self.base_url}/registry/enterprises/{uscc}"
        try:
            if self._client is not None:
                response = await self._client.get(url, timeout=self.timeout)
            else:
                async with httpx.AsyncClient(timeout=self.timeout) as client:
                    response = await client.get(url)
        except httpx.TransportError as exc:  # connect refused/reset, timeouts, protocol errors
            log.warning("enterprise_registry.unavailable", reason=type(exc).__name__)
            raise ProviderUnavailable(PROVIDER, self.retry_after) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            # 5xx and 429 pass; any other refusal of a well-formed code is the registry's fault, not the
            # citizen's: either way, nothing the caller can fix but retry later.
            log.warning("enterprise_registry.unavailable", status=response.status_code)
            raise ProviderUnavailable(PROVIDER, _retry_after(response, self.retry_after))
        try:
            return msgspec.json.decode(response.content, type=RegistryEnterprise)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("enterprise_registry.unavailable", reason="bad response body")
            raise ProviderUnavailable(PROVIDER, self.retry_after) from exc


def _retry_after(response: httpx.Response, default: int) -> int:
    value = response.headers.get("retry-after", "")
    return max(1, int(value)) if value.isdigit() else default


def registry_for(settings: Settings) -> EnterpriseRegistry:
    return HttpEnterpriseRegistry(
        settings.enterprise_registry_url,
        timeout=settings.enterprise_registry_timeout,
        retry_after=settings.retry_after_seconds,
    )
