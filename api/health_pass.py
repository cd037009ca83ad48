"""The health pass for citizens (the pass, its QR code, the status history) and our published trust list."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from litestar import Litestar, Request, Response, Router, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, QueryParameter

from api.deps import StoresDep
from api.guards import citizen_level, claims_of
from health_code import issuer, passes, trustlist
from health_code.certs import certificate_pem
from health_code.passes import HealthPassView, HistoryPage

JSON = "application/json"
# A pass is personal: no shared cache may keep it, and the app asks again rather than reuse an old answer.
PRIVATE = {"Cache-Control": "private, no-store"}
MAX_HISTORY_PAGE = 100


@get(
    "/health-pass",
    guards=[citizen_level(2)],
    summary="The caller's health pass",
    responses={200: ResponseSpec(HealthPassView, description="the pass")},
)
async def my_pass(request: Request[Any, Any, Any], stores: StoresDep) -> Response[bytes]:
    """The QR text (`payload`, a signed `TB1:` pass: docs/pass-format.md) with its colour, since, exp and
    the signer's kid. Show it as a QR code (or fetch /v1/health-pass.svg or .png); ask again before
    `exp`. Needs real-name level L2. Served from cache: calling it often costs nothing."""
    cached = await passes.show_pass(stores, claims_of(request).account_id)
    return Response(cached.body, media_type=JSON, headers=PRIVATE)


@get("/health-pass.svg", guards=[citizen_level(2)], summary="The caller's health pass as an SVG QR code")
async def my_pass_svg(request: Request[Any, Any, Any], stores: StoresDep) -> Response[bytes]:
    """The same pass as GET /v1/health-pass, as a QR code (alphanumeric mode, error correction M)."""
    cached = await passes.show_pass(stores, claims_of(request).account_id)
    return Response(passes.qr_svg(cached), media_type="image/svg+xml", headers=PRIVATE)


@get("/health-pass.png", guards=[citizen_level(2)], summary="The caller's health pass as a PNG QR code")
async def my_pass_png(request: Request[Any, Any, Any], stores: StoresDep) -> Response[bytes]:
    """The same pass as GET /v1/health-pass, as a PNG QR code (alphanumeric mode, error correction M)."""
    cached = await passes.show_pass(stores, claims_of(request).account_id)
    return Response(passes.qr_png(cached), media_type="image/png", headers=PRIVATE)


@get("/health-pass/history", guards=[citizen_level(2)], summary="The caller's status changes, newest first")
async def my_history(
    request: Request[Any, Any, Any],
    stores: StoresDep,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_HISTORY_PAGE)] = 50,
    before_version: FromQuery[int | None] = None,
) -> HistoryPage:
    """Every change of the caller's status (colour, reasons, the deciding rule, since), `limit` per page;
    for the next page pass the answer's `next_before_version` as `before_version` (null on the last)."""
    return await passes.history(
        stores, claims_of(request).account_id, limit=limit, before_version=before_version
    )


@get(
    "/trust-list",
    summary="Our signed trust list: signer certificates and revocations",
    responses={200: ResponseSpec(dict[str, Any], description="tongban-trust-list/1 (docs/pass-format.md)")},
)
async def trust_list(stores: StoresDep) -> Response[bytes]:
    """The `tongban-trust-list/1` document checkpoints verify passes with, signed by our root (check it
    with the root certificate, GET /v1/trust-list/root.pem). A new version at most every minute."""
    published = await trustlist.published_trust_list(stores)
    max_age = int(stores.settings.health_trust_list_seconds)
    return Response(
        published.document,
        media_type=JSON,
        headers={"Cache-Control": f"public, max-age={max_age}", "ETag": f'"{published.version}"'},
    )


@get("/trust-list/root.pem", summary="Our root certificate (PEM), the trust list's signer")
async def trust_root(stores: StoresDep) -> Response[bytes]:
    """The trust anchor. Fetched here for convenience; checkpoints should pin it (compare its SHA-256 with
    the one published out of band) rather than trust whatever this answers."""
    _, root_cert = await issuer.root(stores)
    return Response(
        certificate_pem(root_cert),
        media_type="application/x-pem-file",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Keeps this process's pass cache and TrustStore current (after the stores are open)."""
    task = asyncio.create_task(passes.PassWatcher(passes.PASSES).run(app.state.stores))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


router = Router(
    path="/v1",
    route_handlers=[my_pass, my_pass_svg, my_pass_png, my_history, trust_list, trust_root],
    tags=["health pass"],
)
