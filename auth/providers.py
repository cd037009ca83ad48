"""Adapters for the real-name providers: the population registry (name + ID number match) and the face check
(liveness + match score). Services depend on the protocols; the HTTP adapters reach the configured URLs
(settings.population_registry_url / face_check_url: the sandbox, or the real providers).

A provider that is down, slow, throttling or answering nonsense raises ProviderUnavailable (503, retry later);
a refusal of our request raises ProviderRejected (502: our side is wrong, the citizen cannot fix it).
Names, ID numbers and images are never logged.

Real-name checks happen once or twice in an account's life, so each call opens its own HTTP client: no pool
outlives the request, and nothing needs closing at shutdown.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

import httpx
import msgspec
import structlog

from core.errors import ProviderUnavailable, TongbanError
from core.settings import Settings

log = structlog.get_logger(__name__)
POPULATION = "population registry"
FACE = "face check"


class ProviderRejected(TongbanError):
    status = 502
    code = "provider_rejected"
    title = "A real-name provider refused the request"


class PopulationRegistry(Protocol):
    async def matches(self, name: str, id_number: str) -> bool:
        """Whether the registry holds a person with exactly this name and ID number."""
        ...


class FaceCheck(Protocol):
    async def score(self, name: str, id_number: str, image: bytes) -> float:
        """Liveness plus match of `image` against the registry photo of this person, in [0, 1]."""
        ...


class _MatchOut(msgspec.Struct):
    match: bool


class _ScoreOut(msgspec.Struct):
    score: float


class _ErrorOut(msgspec.Struct):
    code: str = "unknown"


async def _post(
    provider: str, url: str, body: dict[str, Any], *, limits: httpx.Timeout, retry_after: int, transport: Any
) -> bytes:
    """The response body of a 200; the outage and refusal cases as described above."""
    try:
        async with httpx.AsyncClient(timeout=limits, transport=transport) as client:
            response = await client.post(url, json=body)
    except httpx.TransportError as exc:  # refused, reset, timed out
        log.warning("realname.provider_unavailable", provider=provider, reason=type(exc).__name__)
        raise ProviderUnavailable(provider, retry_after) from exc
    if response.status_code >= 500 or response.status_code == 429:
        log.warning("realname.provider_unavailable", provider=provider, status=response.status_code)
        value = response.headers.get("retry-after", "")
        raise ProviderUnavailable(provider, max(1, int(value)) if value.isdigit() else retry_after)
    if response.status_code != 200:
        try:
            code = msgspec.json.decode(response.content, type=_ErrorOut).code
        except msgspec.DecodeError:
            code = f"http_{response.status_code}"
        log.warning("realname.provider_rejected", provider=provider, status=response.status_code, code=code)
        raise ProviderRejected(f"the {provider} refused the request ({code})")
    return response.content


def _decode(provider: str, content: bytes, into: type[Any], retry_after: int) -> Any:
    try:
        return msgspec.json.decode(content, type=into)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("realname.provider_unavailable", provider=provider, reason="bad response body")
        raise ProviderUnavailable(provider, retry_after) from exc


class HttpPopulationRegistry:
    def __init__(self, base_url: str, *, timeout: float, retry_after: int = 5, transport: Any = None) -> None:
        self.url = base_url.rstrip("/") + "/registry/verify"
        # The timeout bounds each phase; connecting is given less so a dead host fails fast.
        self.limits = httpx.Timeout(timeout, connect=min(timeout, 1.0))
        self.retry_after, self.transport = retry_after, transport

    async def matches(self, name: str, id_number: str) -> bool:
        content = await _post(
            POPULATION,
            self.url,
            {"name": name, "id_number": id_number},
            limits=self.limits,
            retry_after=self.retry_after,
            transport=self.transport,
        )
        answer: _MatchOut = _decode(POPULATION, content, _MatchOut, self.retry_after)
        return answer.match


class HttpFaceCheck:
    def __init__(self, base_url: str, *, timeout: float, retry_after: int = 5, transport: Any = None) -> None:
        self.url = base_url.rstrip("/") + "/face/verify"
        # The timeout bounds each phase; connecting is given less so a dead host fails fast.
        self.limits = httpx.Timeout(timeout, connect=min(timeout, 1.0))
        self.retry_after, self.transport = retry_after, transport

    async def score(self, name: str, id_number: str, image: bytes) -> float:
        content = await _post(
            FACE,
            self.url,
            {"name": name, "id_number": id_number, "image": base64.b64encode(image).decode()},
            limits=self.limits,
            retry_after=self.retry_after,
            transport=self.transport,
        )
        answer: _ScoreOut = _decode(FACE, content, _ScoreOut, self.retry_after)
        if not 0.0 <= answer.score <= 1.0:
            log.warning("realname.provider_unavailable", provider=FACE, reason="score out of range")
            raise ProviderUnavailable(FACE, self.retry_after)
        return answer.score


def population_registry(settings: Settings) -> PopulationRegistry:
    return HttpPopulationRegistry(
        settings.population_registry_url,
        timeout=settings.realname_provider_timeout,
        retry_after=settings.retry_after_seconds,
    )


def face_check(settings: Settings) -> FaceCheck:
    return HttpFaceCheck(
        settings.face_check_url,
        timeout=settings.realname_provider_timeout,
        retry_after=settings.retry_after_seconds,
    )
