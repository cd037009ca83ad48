"""Access tokens: ES256 JWTs (RFC 7519/7515) signed with the key store's active "token" key.

Checking one is the hottest path of the API, so it costs no I/O: the signature is verified once per process
per token (then the decoded claims are cached until exp), and revocation is looked up in the in-memory
revocation set. Only ES256 with a published kid is accepted (RFC 8725)."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from typing import Any
from uuid import UUID

import jwt
import msgspec

from auth.revocation import REVOKED
from core import keys
from core.errors import Unauthorized
from core.stores import Stores

ISSUER = "tongban"
AUDIENCE = "tongban-app"
LEVEL_ACR = {1: "L1", 2: "L2", 3: "L3"}
_CACHE_SIZE = 50_000


class Enterprise(msgspec.Struct, frozen=True):
    id: str
    role: str


class AccessClaims(msgspec.Struct, frozen=True):
    sub: str
    sid: str
    acr: str
    amr: list[str]
    aud: str
    iss: str
    iat: int
    exp: int
    jti: str
    ent: Enterprise | None = None

    @property
    def account_id(self) -> UUID:
        return UUID(self.sub)

    @property
    def session_id(self) -> UUID:
        return UUID(self.sid)

    @property
    def level(self) -> int:
        return int(self.acr[1:])


async def issue_access_token(
    stores: Stores,
    *,
    account_id: UUID,
    session_id: UUID,
    level: int,
    amr: list[str],
    enterprise: Enterprise | None = None,
) -> tuple[str, int]:
    """(token, lifetime in seconds)."""
    signer = await keys.active_signer(stores, keys.TOKEN)
    ttl = stores.settings.auth_access_ttl
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": str(account_id),
        "aud": AUDIENCE,
        "sid": str(session_id),
        "acr": LEVEL_ACR[level],
        "amr": amr,
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(12),
    }
    if enterprise is not None:
        claims["ent"] = msgspec.to_builtins(enterprise)
    return signer.sign_jwt(claims, headers={"typ": "at+jwt"}), ttl


class _VerifiedCache:
    """token -> claims for tokens whose signature this process already checked (bounded, LRU)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, AccessClaims] = OrderedDict()

    def get(self, token: str) -> AccessClaims | None:
        claims = self._items.get(token)
        if claims is not None:
            self._items.move_to_end(token)
        return claims

    def put(self, token: str, claims: AccessClaims) -> None:
        self._items[token] = claims
        if len(self._items) > self._size:
            self._items.popitem(last=False)


_verified = _VerifiedCache(_CACHE_SIZE)


async def _verify_signature(stores: Stores, token: str) -> AccessClaims:
    try:
        raw = await keys.verify_jwt(
            stores,
            keys.TOKEN,
            token,
            audience=AUDIENCE,
            issuer=ISSUER,
            require=("exp", "iat", "sub", "sid", "jti", "aud", "iss"),
        )
        return msgspec.convert(raw, AccessClaims)
    except (jwt.InvalidTokenError, msgspec.ValidationError, ValueError) as exc:
        raise Unauthorized("the access token is not valid", code="invalid_token") from exc


async def authenticate(stores: Stores, token: str) -> AccessClaims:
    """The claims of a valid, unexpired, unrevoked access token; anything else is 401 invalid_token."""
    claims = _verified.get(token)
    if claims is None:
        claims = await _verify_signature(stores, token)
        _verified.put(token, claims)
    if claims.exp <= time.time():
        raise Unauthorized("the access token has expired", code="invalid_token")
    if claims.sid in REVOKED:
        raise Unauthorized("the session has ended", code="invalid_token")
    return claims
