"""Who may call a route. Every route carries one of these, or is on api/public.py's list."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler

from auth.tokens import AccessClaims, authenticate
from core.errors import Forbidden, Unauthorized
from core.stores import Stores
from health_code.checkpoints import authenticate as authenticate_checkpoint

CLAIMS = "claims"


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a Bearer access token is required", code="invalid_token")
    return token.strip()


async def citizen(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """A citizen's valid access token; its claims are put on the connection for the handler."""
    stores: Stores = connection.app.state.stores
    connection.scope["state"][CLAIMS] = await authenticate(stores, _bearer(connection))


def citizen_level(level: int) -> Any:
    """A citizen whose real-name level (acr) is at least `level` (2: name + ID matched, 3: face)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        await citizen(connection, handler)
        claims: AccessClaims = connection.scope["state"][CLAIMS]
        if claims.level < level:
            raise Forbidden(f"real-name level L{level} is required", code="insufficient_level")

    guard.__name__ = f"citizen_level_{level}"
    return guard


def claims_of(connection: ASGIConnection[Any, Any, Any, Any]) -> AccessClaims:
    claims: AccessClaims = connection.scope["state"][CLAIMS]
    return claims


def staff(*roles: str) -> Any:
    """A citizen's valid token AND, in the staff table, one of `roles` (platform_admin, reviewer,
    health_authority); the roles are cached in the process for staff_cache_seconds."""
    from miniapps.models import STAFF_ROLES
    from miniapps.registry import staff_roles

    wanted = frozenset(roles)
    if not wanted or not wanted <= set(STAFF_ROLES):
        raise ValueError(f"staff roles: one or more of {', '.join(STAFF_ROLES)}, got {sorted(wanted)}")

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        await citizen(connection, handler)
        claims: AccessClaims = connection.scope["state"][CLAIMS]
        held = await staff_roles(connection.app.state.stores, claims.account_id)
        if not held & wanted:
            raise Forbidden(f"this needs the staff role {' or '.join(sorted(wanted))}", code="not_staff")

    guard.__name__ = "staff_" + "_".join(sorted(wanted))
    return guard


CHECKPOINT = "checkpoint"


async def checkpoint(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """A checkpoint's credentials (Bearer cp_<id>.<secret>, or Basic id:secret), checked against a short
    per-process cache; the checkpoint is put on the connection for the handler."""
    stores: Stores = connection.app.state.stores
    principal = await authenticate_checkpoint(stores, connection.headers.get("authorization"))
    connection.scope["state"][CHECKPOINT] = principal


def checkpoint_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
    """The CheckpointPrincipal the checkpoint guard put on the connection."""
    return connection.scope["state"][CHECKPOINT]


TERMINAL = "terminal"


def terminal(*kinds: str) -> Any:
    """A one-code terminal's signed request (X-Terminal-Id, X-Timestamp, X-Nonce, X-Signature: see
    onecode.terminal_auth) from a terminal of one of `kinds` (validator, counter, pos). The signature covers
    the body, so the guard reads it: Request.body() keeps it for the handler, which decodes the same bytes.
    The terminal is put on the connection for the handler."""
    from litestar import Request

    from onecode.terminal_auth import KINDS, authenticate

    allowed = frozenset(kinds)
    if not allowed or not allowed <= set(KINDS):
        raise ValueError(f"terminal kinds: one or more of {', '.join(KINDS)}, got {sorted(allowed)}")

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
        # HTTP routes hand their guards the Request itself.
        body = await connection.body() if isinstance(connection, Request) else b""
        scope = connection.scope
        # Signed as sent on the request line: the raw (still percent-encoded) path and query. (Some test
        # transports put the query into raw_path too, against the ASGI spec.)
        raw_path = scope.get("raw_path")
        query = scope.get("query_string", b"")
        path = (raw_path.partition(b"?")[0].decode("latin-1") if raw_path else scope["path"]) + (
            "?" + query.decode("latin-1") if query else ""
        )
        connection.scope["state"][TERMINAL] = await authenticate(
            connection.app.state.stores,
            method=scope["method"],  # type: ignore[typeddict-item]
            path=path,
            headers=connection.headers,
            body=body,
            kinds=allowed,
        )

    guard.__name__ = "terminal_" + "_".join(sorted(allowed))
    return guard


def terminal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
    """The TerminalPrincipal the terminal guard put on the connection."""
    return connection.scope["state"][TERMINAL]


class GuardedInPlace(HTTPRouteHandler):
    """A route handler whose guards are handed the handler itself. Litestar hands each guard a fresh copy of
    the handler (copy.copy of ~45 slots, a noticeable share of a hot route's CPU); guards that never read or
    change the handler (checkpoint, terminal) lose nothing. Use as the decorator, with `http_method`."""

    async def authorize_connection(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        for guard in self.resolve_guards():  # made async by resolve_guards, as Litestar's own loop relies on
            await guard(connection, self)  # type: ignore[misc]
