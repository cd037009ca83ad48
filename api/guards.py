"""Who may call a route. Every route carries one of these, or is on api/public.py's list."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from auth.tokens import AccessClaims, authenticate
from core.errors import Forbidden, Unauthorized
from core.stores import Stores

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
    from health_code.checkpoints import authenticate as authenticate_checkpoint

    stores: Stores = connection.app.state.stores
    principal = await authenticate_checkpoint(stores, connection.headers.get("authorization"))
    connection.scope["state"][CHECKPOINT] = principal


def checkpoint_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
    """The CheckpointPrincipal the checkpoint guard put on the connection."""
    return connection.scope["state"][CHECKPOINT]
