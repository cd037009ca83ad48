"""RFC 9457 problem+json for every /v1 error; never a stack trace, always the request id."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from core import db
from core import redis as redis_mod
from core.ids import new_request_id
from core.errors import RateLimited, StoreUnavailable, TongbanError
from core.logging import scrub_text
from core.settings import get_settings

log = structlog.get_logger(__name__)
PROBLEM_JSON = "application/problem+json"
_FIELD_RE = re.compile(r"at `\$\.([^`]+)`")


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    code: str | None = None
    field: str | None = None
    request_id: str | None = None


def problem_response(
    request: Request[Any, Any, Any],
    *,
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    # Errors raised before routing (404, 405) never pass the request-id middleware: give them one here.
    state = request.scope.setdefault("state", {})  # type: ignore[typeddict-item]
    request_id = state.get("request_id")
    if request_id is None:
        request_id = state["request_id"] = new_request_id()
        headers = {**(headers or {}), "X-Request-Id": request_id}
    body = Problem(
        type=f"/docs/problems#{code}",
        title=title,
        status=status,
        detail=scrub_text(detail) if detail else None,
        instance=request.url.path,
        code=code,
        field=field,
        request_id=request_id,
    )
    return Response(msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_field(exc: ValidationException) -> tuple[str | None, str]:
    """Litestar wraps msgspec decode errors; pull out the JSON path of the offending field."""
    messages: list[str] = []
    extra = exc.extra if isinstance(exc.extra, list) else ([exc.extra] if exc.extra else [])
    for item in extra:
        if isinstance(item, dict):
            key = item.get("key")
            message = str(item.get("message", ""))
            if key and key != "body":
                return str(key), message or exc.detail
            messages.append(message)
    for text in [*messages, exc.detail]:
        match = _FIELD_RE.search(text)
        if match:
            return match.group(1), text.split(" - at ")[0]
    if any("malformed" in m.lower() or "invalid json" in m.lower() for m in [*messages, exc.detail]):
        return "body", "the request body is not valid JSON"
    return "body", messages[0] if messages and messages[0] else exc.detail


def handle_tongban_error(request: Request[Any, Any, Any], exc: TongbanError) -> Response[bytes]:
    headers = None
    if isinstance(exc, RateLimited | StoreUnavailable):
        headers = {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, StoreUnavailable):
        log.warning("store.unavailable", store=exc.store, path=request.url.path)
    return problem_response(
        request, status=exc.status, code=exc.code, title=exc.title, detail=exc.detail, field=exc.field, headers=headers
    )


def handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    field, message = _validation_field(exc)
    detail = f"{field}: {message}" if field else message
    return problem_response(
        request, status=400, code="malformed_request", title="Malformed request", detail=detail, field=field
    )


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if isinstance(exc, NotFoundException):
        return problem_response(request, status=404, code="not_found", title="Not found", detail="no such resource")
    status = exc.status_code
    headers = dict(exc.headers or {})
    title = exc.detail if status < 500 else "Internal error"
    return problem_response(
        request, status=status, code=f"http_{status}", title=title, detail=title, headers=headers or None
    )


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    settings = get_settings()
    if isinstance(exc, db.OUTAGE_ERRORS + redis_mod.OUTAGE_ERRORS):
        store = "Redis" if isinstance(exc, redis_mod.OUTAGE_ERRORS[:2]) else "PostgreSQL"
        return handle_tongban_error(request, StoreUnavailable(store, settings.retry_after_seconds))
    log.error("request.failed", path=request.url.path, exc_type=type(exc).__name__)
    return problem_response(
        request, status=500, code="internal_error", title="Internal error", detail="the server could not complete this request"
    )


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    TongbanError: handle_tongban_error,
    ValidationException: handle_validation,
    HTTPException: handle_http,
    Exception: handle_unexpected,
}
