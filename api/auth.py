"""Accounts: SMS login, tokens, sessions, the caller's own account."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Request, Response, Router, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED

from api.deps import StoresDep
from api.guards import citizen, claims_of
from auth import service
from auth.models import (
    LoginRequest,
    RefreshRequest,
    SessionView,
    SmsCodeRequest,
    SmsCodeSent,
    TokenInfo,
    TokenPair,
)
from core import keys


def client_ip(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


@post("/sms-codes", status_code=HTTP_202_ACCEPTED, summary="Send a login code by SMS")
async def send_sms_code(
    request: Request[Any, Any, Any], data: JSONBody[SmsCodeRequest], stores: StoresDep
) -> SmsCodeSent:
    """Sends a 6-digit code to a mainland mobile number. The answer is the same whether or not the number has
    an account. Limits: per phone 1/min, 5/h, 10/day; per IP and per device too (429 with Retry-After)."""
    return await service.request_sms_code(stores, data, client_ip(request))


@post("/login", status_code=200, summary="Log in (or register) with the SMS code")
async def login(
    request: Request[Any, Any, Any], data: JSONBody[LoginRequest], stores: StoresDep
) -> TokenPair:
    """Exchanges phone + challenge_id + code for an access token (ES256 JWT, 10 minutes) and a refresh token."""
    return await service.login(stores, data, client_ip(request))


@post("/refresh", status_code=200, summary="Rotate the refresh token")
async def refresh(data: JSONBody[RefreshRequest], stores: StoresDep) -> TokenPair:
    """Each refresh token works once. Reusing a spent one revokes the whole session."""
    return await service.refresh(stores, data.refresh_token)


@post("/logout", guards=[citizen], status_code=204, summary="End the current session")
async def logout(request: Request[Any, Any, Any], stores: StoresDep) -> None:
    claims = claims_of(request)
    await service.revoke_session(stores, claims, claims.session_id, "logout")


@get("/sessions", guards=[citizen], summary="The caller's active sessions (devices)")
async def my_sessions(request: Request[Any, Any, Any], stores: StoresDep) -> list[SessionView]:
    return await service.list_sessions(stores, claims_of(request))


@delete(
    "/sessions/{session_id:uuid}",
    guards=[citizen],
    status_code=204,
    summary="Revoke one of the caller's sessions",
)
async def revoke_my_session(
    request: Request[Any, Any, Any], session_id: FromPath[UUID], stores: StoresDep
) -> None:
    await service.revoke_session(stores, claims_of(request), session_id, "revoked_by_user")


@get("/token", guards=[citizen], sync_to_thread=False, summary="What the caller's access token says")
def my_token(request: Request[Any, Any, Any]) -> TokenInfo:
    """The checked claims of the presented access token: who, which session, which level, until when.
    Costs no I/O on the server, so the app may call it freely to learn whether it is still logged in."""
    claims = claims_of(request)
    return TokenInfo(
        account_id=claims.account_id,
        session_id=claims.session_id,
        level=claims.level,
        amr=claims.amr,
        expires_at=claims.exp,
        enterprise=claims.ent,
    )


@get("/.well-known/jwks.json", summary="Public keys of access tokens (RFC 7517)", tags=["auth"])
async def jwks(stores: StoresDep) -> Response[bytes]:
    body = await keys.jwks_json(stores, keys.TOKEN)
    return Response(body, media_type="application/json", headers={"Cache-Control": "public, max-age=300"})


auth_router = Router(path="/v1/auth", route_handlers=[send_sms_code, login, refresh, logout], tags=["auth"])
me_router = Router(path="/v1/me", route_handlers=[my_token, my_sessions, revoke_my_session], tags=["me"])
