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
from core.errors import ProviderUnavailable, RateLimited, StoreUnavailable, TongbanError, Unauthorized
from core.ids import new_request_id
from core.logging import scrub_text
from core.settings import get_settings

log = structlog.get_logger(__name__)
PROBLEM_JSON = "application/problem+json"
_PATH_RE = re.compile(r"at `\$\.([^`]+)`")
_MISSING_RE = re.compile(r"missing required field `([^`]+)`")
_MISSING_PARAM_RE = re.compile(r"Missing required [a-z ]*parameter '([^']+)'")


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
    state = request.scope.setdefault("state", {})
    request_id = state.get("request_id")
    if request_id is None:
        request_id = state["request_id"] = new_request_id()
        headers = {**(headers or {}), "X-Request-Id": request_id}
    body = Problem(
        type=f"urn:tongban:problem:{code}",
        title=title,
        status=status,
        detail=scrub_text(detail) if detail else None,
        instance=request.url.path,
        code=code,
        field=field,
        request_id=request_id,
    )
    return Response(msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _validation_field(exc: ValidationException) -> tuple[str, str]:
    """Litestar wraps msgspec decode errors; name the offending field as a dotted path ("body" for the whole)."""
    extra = exc.extra if isinstance(exc.extra, list) else ([exc.extra] if exc.extra else [])
    for item in extra:
        if not isinstance(item, dict):
            continue
        key = str(item.get("key") or "data")
        message = str(item.get("message") or exc.detail)
        path_match = _PATH_RE.search(message)
        path = path_match.group(1) if path_match else ("" if key in ("data", "body") else key)
        reason = message.split(" - at ")[0]
        missing = _MISSING_RE.search(reason)
        if missing:
            return ".".join(p for p in (path, missing.group(1)) if p), reason
        if path:
            return path, reason
        missing_param = _MISSING_PARAM_RE.search(reason)
        if missing_param:
            return missing_param.group(1), reason.split(" for path ")[0]
        if message in ("'data'", "data"):
            return "body", "a JSON request body is required"
        return "body", reason
    missing_param = _MISSING_PARAM_RE.search(exc.detail)
    if missing_param:
        return missing_param.group(1), exc.detail.split(" for path ")[0]
    return "body", exc.detail


def handle_tongban_error(request: Request[Any, Any, Any], exc: TongbanError) -> Response[bytes]:
    headers = None
    if isinstance(exc, RateLimited | StoreUnavailable | ProviderUnavailable):
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, Unauthorized):
        headers = {
            "WWW-Authenticate": f'Bearer error="{exc.code}"' if exc.code == "invalid_token" else "Bearer"
        }
    if isinstance(exc, StoreUnavailable):
        log.warning("store.unavailable", store=exc.store, path=request.url.path)
    return problem_response(
        request,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        field=exc.field,
        headers=headers,
    )


def handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    field, message = _validation_field(exc)
    detail = f"{field}: {message}"
    return problem_response(
        request, status=400, code="malformed_request", title="Malformed request", detail=detail, field=field
    )


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if isinstance(exc, NotFoundException):
        return problem_response(
            request, status=404, code="not_found", title="Not found", detail="no such resource"
        )
    status = exc.status_code
    if status == 400:  # the body could not be decoded at all (syntax error, truncated, wrong encoding)
        return problem_response(
            request,
            status=400,
            code="malformed_request",
            title="Malformed request",
            detail=f"body: not valid JSON ({exc.detail})",
            field="body",
        )
    headers = dict(exc.headers or {})
    title = exc.detail if status < 500 else "Internal error"
    return problem_response(
        request, status=status, code=f"http_{status}", title=title, detail=title, headers=headers or None
    )


def handle_bad_utf8(request: Request[Any, Any, Any], _exc: UnicodeDecodeError) -> Response[bytes]:
    """msgspec raises UnicodeDecodeError (not a DecodeError) for a JSON string holding bytes that are not
    UTF-8: the client's body is at fault, not us."""
    return problem_response(
        request,
        status=400,
        code="malformed_request",
        title="Malformed request",
        detail="body: not valid UTF-8",
        field="body",
    )


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    settings = get_settings()
    if isinstance(exc, db.OUTAGE_ERRORS + redis_mod.OUTAGE_ERRORS):
        store = "Redis" if isinstance(exc, redis_mod.OUTAGE_ERRORS[:2]) else "PostgreSQL"
        return handle_tongban_error(request, StoreUnavailable(store, settings.retry_after_seconds))
    log.error("request.failed", path=request.url.path, exc_type=type(exc).__name__)
    return problem_response(
        request,
        status=500,
        code="internal_error",
        title="Internal error",
        detail="the server could not complete this request",
    )


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    TongbanError: handle_tongban_error,
    ValidationException: handle_validation,
    HTTPException: handle_http,
    UnicodeDecodeError: handle_bad_utf8,
    Exception: handle_unexpected,
}
