"""What every simulated provider shares: GET /health, fault injection, JSON errors and its runner entry.

A provider is a module that builds its Litestar app with `provider_app(...)` and exposes a `PROVIDER`
(name, app factory, and the Settings fields that hold its port and the base URL our adapter calls).
Route handlers opt into fault injection with `opt=FAULTY`: test-inspection routes (outboxes, /health,
/sandbox/*) keep answering while the provider "fails", so a test can still look inside.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import JSONBody
from litestar.types import ControllerRouterHandler

FAULTY: dict[str, Any] = {"faults": True}


@dataclass(frozen=True)
class Provider:
    name: str  # used with `--only` and shown in the runner's table
    title: str
    create_app: Callable[[], Litestar]
    port_setting: str  # Settings field with the port it listens on
    url_setting: str  # Settings field our adapter reads its base URL from


class ProviderError(Exception):
    """A refusal in the provider's own words: HTTP status plus {code, message}, as real gateways answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Faults(msgspec.Struct):
    fail_next: int = 0  # the next n faulty-route calls answer 503
    latency_ms: int = 0  # every faulty-route call waits this long first (until set back to 0)


class FaultsIn(msgspec.Struct, forbid_unknown_fields=True):
    fail_next: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None
    latency_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] | None = None


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response({"code": code, "message": message}, status_code=status, headers=headers)


async def _apply_faults(request: Request[Any, Any, Any]) -> Response[Any] | None:
    if not request.route_handler.opt.get("faults"):
        return None
    faults: Faults = request.app.state.faults
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    if faults.fail_next > 0:
        faults.fail_next -= 1
        return error_response(503, "ServiceUnavailable", "injected fault", {"Retry-After": "1"})
    return None


@get("/health", sync_to_thread=False)
def health(state: State) -> dict[str, str]:
    return {"status": "ok", "provider": state.provider}


@get("/sandbox/faults", sync_to_thread=False)
def show_faults(state: State) -> Faults:
    faults: Faults = state.faults
    return faults


@post("/sandbox/faults", status_code=200, sync_to_thread=False)
def set_faults(state: State, data: JSONBody[FaultsIn]) -> Faults:
    """Fields given replace the current ones; the others stay."""
    faults: Faults = state.faults
    if data.fail_next is not None:
        faults.fail_next = data.fail_next
    if data.latency_ms is not None:
        faults.latency_ms = data.latency_ms
    return faults


@delete("/sandbox/faults", status_code=200, sync_to_thread=False)
def clear_faults(state: State) -> Faults:
    state.faults = Faults()
    faults: Faults = state.faults
    return faults


def _provider_error(_request: Request[Any, Any, Any], exc: ProviderError) -> Response[Any]:
    return error_response(exc.status, exc.code, exc.message)


def _validation_error(_request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    reasons = [
        f"{item['key']}: {item.get('message')}" if item.get("key") else str(item.get("message"))
        for item in extra
        if isinstance(item, dict) and item.get("message")
    ]
    return error_response(400, "isv.INVALID_PARAMETERS", "; ".join(reasons) or exc.detail)


def _http_error(_request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    code = "NotFound" if exc.status_code == 404 else "isv.INVALID_PARAMETERS"
    return error_response(exc.status_code, code, exc.detail if exc.status_code < 500 else "internal error")


def provider_app(
    name: str, route_handlers: Sequence[ControllerRouterHandler], state: dict[str, Any] | None = None
) -> Litestar:
    """A provider's app with the shared routes; `state` holds its in-memory data (lost on restart)."""
    return Litestar(
        route_handlers=[health, show_faults, set_faults, clear_faults, *route_handlers],
        state=State({**(state or {}), "provider": name, "faults": Faults()}),
        before_request=_apply_faults,
        exception_handlers={
            ProviderError: _provider_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
        },
        logging_config=None,
        openapi_config=None,
        debug=False,
    )
