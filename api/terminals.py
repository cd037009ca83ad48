"""One-code terminals: bus validators upload rides, counters and POS resolve codes (HMAC-signed requests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import HttpMethod, Litestar, MediaType, Request, Response, Router, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_200_OK

from api.deps import StoresDep
from api.guards import GuardedInPlace, terminal, terminal_of
from core.stores import Stores
from onecode import resolve as resolving
from onecode import rides
from onecode.resolve import ResolveAnswer, ResolveRequest
from onecode.rides import RidesUpload, UploadAnswer

# OpenAPI: the four headers of a signed request (docs/terminals.md); see api/app.py for the scheme.
SIGNED: list[dict[str, list[str]]] = [{"terminal": []}]
any_terminal = terminal("validator", "counter", "pos")


@asynccontextmanager
async def rides_lifespan(app: Litestar) -> AsyncIterator[None]:
    """On the way out, commit the online rides still waiting for their group commit."""
    async with rides.running(app.state.stores):
        yield


@get(
    "/terminals/bundle",
    guards=[any_terminal],
    security=SIGNED,
    summary="The issuer keys and revoked code ids a validator verifies with",
    responses={200: ResponseSpec(dict[str, Any], description="tongban-onecode-bundle/1 (docs/terminals.md)")},
)
async def bundle(stores: StoresDep) -> Response[bytes]:
    """The bundle document (docs/onecode-format.md): download it at start and every few minutes. It carries
    every revocation committed before the request."""
    _, document = await resolving.BUNDLES.fresh(stores)
    return Response(document, media_type="application/json", headers={"Cache-Control": "no-store"})


@post(
    "/terminals/rides",
    guards=[terminal("validator")],
    security=SIGNED,
    status_code=HTTP_200_OK,
    request_max_body_size=rides.MAX_BODY_BYTES,
    summary="Upload rides a validator accepted (idempotent per ride id)",
)
async def upload_rides(
    request: Request[Any, Any, Any], data: JSONBody[RidesUpload], stores: StoresDep
) -> UploadAnswer:
    """Up to TONGBAN_ONECODE_RIDES_BATCH_MAX rides; uploading a ride again is counted in `duplicates`
    and stored once. The fares are charged in the background."""
    return await rides.upload(stores, terminal_of(request), data.rides)


@GuardedInPlace(
    "/terminals/resolve",
    http_method=HttpMethod.POST,
    guards=[any_terminal],
    security=SIGNED,
    status_code=HTTP_200_OK,
    request_max_body_size=resolving.MAX_BODY_BYTES,
    summary="Resolve a scanned one-code online (transit, medical, payment)",
    responses={200: ResponseSpec(ResolveAnswer, description="the outcome")},
)
async def resolve(request: Request[Any, Any, Any], data: JSONBody[ResolveRequest]) -> ASGIResponse:
    """Every verdict is a 200 answer: `result` approved, declined (the provider's reason) or refused (a
    verify reason, `replay`, `not_linked`). 503 `provider_unavailable` when the provider is down."""
    # The hot path: the stores straight from the app state (as the guard takes them), not through
    # dependency injection, and the answer encoded here and sent as it is.
    stores: Stores = request.app.state.stores
    answer = await resolving.resolve(stores, terminal_of(request), data)
    return ASGIResponse(body=resolving.encode_answer(answer), media_type=MediaType.JSON)


router = Router(path="/v1", route_handlers=[bundle, upload_rides, resolve], tags=["one-code terminals"])
