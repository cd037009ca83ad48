"""Checkpoint scans, venue codes and visits, and health-status appeals (citizens and staff)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal
from uuid import UUID

from litestar import HttpMethod, Litestar, MediaType, Request, Response, Router, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api.deps import StoresDep
from api.guards import GuardedInPlace, checkpoint, checkpoint_of, citizen, citizen_level, claims_of, staff
from core.stores import Stores
from health_code import appeals, scans, venues
from health_code.appeals import Appeal, AppealInput, AppealStatus, Decision
from health_code.scans import ScanAnswer, ScanRequest
from health_code.venues import Venue, VenueCode, VenueInput, Visit, VisitInput

health_authority = staff("health_authority")


@asynccontextmanager
async def scans_lifespan(app: Litestar) -> AsyncIterator[None]:
    """On the way out, commit the scans still waiting for their group commit."""
    async with scans.running(app.state.stores):
        yield


IMAGE_TYPES = {"svg": "image/svg+xml", "png": "image/png"}


# --- checkpoints ---------------------------------------------------------------------------------------


@GuardedInPlace(
    "/checkpoints/scans",
    http_method=HttpMethod.POST,
    guards=[checkpoint],
    status_code=HTTP_200_OK,
    request_max_body_size=scans.MAX_BODY_BYTES,
    summary="Verify a scanned pass and record the scan",
    responses={200: ResponseSpec(ScanAnswer, description="the verdict")},
)
async def scan(request: Request[Any, Any, Any], data: JSONBody[ScanRequest]) -> ASGIResponse:
    """Every verdict is a 200 answer (`valid` false with the `reason`: bad_prefix, too_large, ...,
    revoked, expired); the scan is recorded before the answer is sent. 401 without valid checkpoint
    credentials, 413 for a body over 16 KiB, 503 when the scan could not be recorded."""
    # The hot path: the stores straight from the app state (as the guards take them), not through
    # dependency injection, and the answer encoded here and sent as it is (no Response to render).
    stores: Stores = request.app.state.stores
    answer = await scans.scan(stores, checkpoint_of(request), data)
    return ASGIResponse(body=scans.encode_answer(answer), media_type=MediaType.JSON)


# --- venues ----------------------------------------------------------------------------------------------


@post("/venues", guards=[citizen_level(2)], status_code=HTTP_201_CREATED, summary="Register a venue")
async def register_venue(
    request: Request[Any, Any, Any], data: JSONBody[VenueInput], stores: StoresDep
) -> VenueCode:
    """An L2 citizen registers a venue (name, GB/T 2260 region code, address) and gets its signed venue
    code; GET /v1/venues/{id}/code gives the QR image to print."""
    return await venues.register_venue(stores, claims_of(request).account_id, data)


@get("/me/venues", guards=[citizen], summary="The caller's venues")
async def my_venues(request: Request[Any, Any, Any], stores: StoresDep) -> list[Venue]:
    return await venues.venues_of(stores, claims_of(request).account_id)


@get(
    "/venues/{venue_id:uuid}/code", guards=[citizen], summary="A venue's code as a QR image (its owner only)"
)
async def venue_code(
    request: Request[Any, Any, Any],
    venue_id: FromPath[UUID],
    stores: StoresDep,
    format: FromQuery[Literal["svg", "png"]] = "svg",
    scale: Annotated[int, QueryParameter(ge=1, le=20)] = 4,
) -> Response[bytes]:
    """A freshly signed code of the caller's venue, as SVG (default) or PNG; 404 for anyone else's."""
    venue = await venues.own_venue(stores, claims_of(request).account_id, venue_id)
    code = await venues.sign_code(stores, venue)
    return Response(
        venues.qr_image(code.payload, format, scale=scale),
        media_type=IMAGE_TYPES[format],
        headers={"Cache-Control": "no-store"},
    )


@post(
    "/venue-visits", guards=[citizen_level(2)], status_code=HTTP_201_CREATED, summary="Record a venue visit"
)
async def venue_visit(
    request: Request[Any, Any, Any], data: JSONBody[VisitInput], stores: StoresDep
) -> Visit:
    """The app scanned a venue code: the visit becomes a trip at the venue's region. 422
    `invalid_venue_code` (the reason in the detail) or `not_a_venue_code`; 404 `venue_not_found`; 409
    `venue_suspended`."""
    return await venues.record_visit(stores, claims_of(request).account_id, data.venue_payload)


# --- appeals ---------------------------------------------------------------------------------------------


@post(
    "/health-pass/appeals",
    guards=[citizen_level(2)],
    status_code=HTTP_201_CREATED,
    summary="Appeal against one's health status",
)
async def file_appeal(
    request: Request[Any, Any, Any], data: JSONBody[AppealInput], stores: StoresDep
) -> Appeal:
    """One pending appeal at a time: 409 `appeal_pending` while one is."""
    return await appeals.file_appeal(stores, claims_of(request).account_id, data.reason)


@get("/health-pass/appeals", guards=[citizen], summary="The caller's appeals, newest first")
async def my_appeals(request: Request[Any, Any, Any], stores: StoresDep) -> list[Appeal]:
    return await appeals.appeals_of(stores, claims_of(request).account_id)


@get("/health/appeals", guards=[health_authority], summary="Appeals by status, oldest first (staff)")
async def list_appeals(
    stores: StoresDep,
    status: FromQuery[AppealStatus] = "pending",
    limit: Annotated[int, QueryParameter(ge=1, le=appeals.MAX_PAGE)] = 100,
) -> list[Appeal]:
    return await appeals.list_appeals(stores, status, limit=limit)


@post(
    "/health/appeals/{appeal_id:uuid}/decision",
    guards=[health_authority],
    status_code=HTTP_200_OK,
    summary="Approve or reject an appeal (staff)",
)
async def decide_appeal(
    request: Request[Any, Any, Any], appeal_id: FromPath[UUID], data: JSONBody[Decision], stores: StoresDep
) -> Appeal:
    """`{"approve": true}` clears what the status rules held against the citizen up to now (a recompute
    follows); a rejection needs a `note`. 409 `appeal_decided` when already decided."""
    staff_account = claims_of(request).account_id
    return await appeals.decide(
        stores,
        appeal_id,
        approve=data.approve,
        note=data.note,
        by=f"account:{staff_account}",
        staff_account=staff_account,
    )


router = Router(
    path="/v1",
    route_handlers=[
        scan,
        register_venue,
        my_venues,
        venue_code,
        venue_visit,
        file_appeal,
        my_appeals,
        list_appeals,
        decide_appeal,
    ],
    tags=["health pass"],
)
