"""Platform staff: organisations (platform_admin), the review queue (reviewer), freezing and delisting."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Request, Router, get, post
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api.deps import StoresDep
from api.guards import claims_of, staff
from miniapps import registry, versions
from miniapps.models import (
    STAFF_ROLES,
    Actor,
    AppView,
    CreateOrganisation,
    FreezeApp,
    OrganisationView,
    RejectVersion,
    ReviewItem,
    StaffMe,
    VersionView,
)

platform_admin = staff("platform_admin")
reviewer = staff("reviewer")


def _actor(request: Request[Any, Any, Any]) -> Actor:
    return Actor.of_account(claims_of(request).account_id)


@get("/me", guards=[staff(*STAFF_ROLES)], summary="The caller's staff roles")
async def staff_me(request: Request[Any, Any, Any], stores: StoresDep) -> StaffMe:
    account_id = claims_of(request).account_id
    roles = await registry.staff_roles(stores, account_id)
    return StaffMe(account_id=account_id, roles=sorted(roles))  # type: ignore[arg-type]


@post(
    "/organisations",
    guards=[platform_admin],
    status_code=HTTP_201_CREATED,
    summary="Create an organisation with its first admin",
)
async def create_organisation(
    request: Request[Any, Any, Any], data: JSONBody[CreateOrganisation], stores: StoresDep
) -> OrganisationView:
    """`first_admin` by `account_id` or `phone`: an active, real-name verified (L2) account. 409
    `organisation_exists` for a taken name."""
    return await registry.create_organisation(stores, _actor(request), data)


@get("/organisations", guards=[platform_admin], summary="Every organisation")
async def list_organisations(stores: StoresDep) -> list[OrganisationView]:
    return await registry.list_organisations(stores)


@get("/reviews", guards=[reviewer], summary="Versions waiting for review, oldest first")
async def review_queue(stores: StoresDep) -> list[ReviewItem]:
    return await versions.review_queue(stores)


@post(
    "/reviews/{version_id:uuid}/approve",
    guards=[reviewer],
    status_code=200,
    summary="Approve a submitted version (submitted -> approved)",
)
async def approve(
    request: Request[Any, Any, Any], version_id: FromPath[UUID], stores: StoresDep
) -> VersionView:
    """403 `conflict_of_interest` for an app of an organisation the reviewer belongs to."""
    return await versions.transition(stores, _actor(request), version_id, "approve")


@post(
    "/reviews/{version_id:uuid}/reject",
    guards=[reviewer],
    status_code=200,
    summary="Reject a submitted version, saying why (submitted -> rejected)",
)
async def reject(
    request: Request[Any, Any, Any],
    version_id: FromPath[UUID],
    data: JSONBody[RejectVersion],
    stores: StoresDep,
) -> VersionView:
    return await versions.transition(stores, _actor(request), version_id, "reject", reason=data.reason)


@post(
    "/versions/{version_id:uuid}/delist",
    guards=[staff("platform_admin", "reviewer")],
    status_code=200,
    summary="Delist a version from the platform (-> delisted, final)",
)
async def delist(
    request: Request[Any, Any, Any], version_id: FromPath[UUID], stores: StoresDep
) -> VersionView:
    return await versions.transition(stores, _actor(request), version_id, "delist")


@post(
    "/miniapps/{appid:str}/freeze",
    guards=[platform_admin],
    status_code=200,
    summary="Freeze an app (platform freeze: only the platform lifts it)",
)
async def freeze(
    request: Request[Any, Any, Any], appid: FromPath[str], data: JSONBody[FreezeApp], stores: StoresDep
) -> AppView:
    return await registry.freeze_app(stores, _actor(request), appid, data.reason, by="platform")


@post("/miniapps/{appid:str}/unfreeze", guards=[platform_admin], status_code=200, summary="Unfreeze an app")
async def unfreeze(request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep) -> AppView:
    return await registry.unfreeze_app(stores, _actor(request), appid, by="platform")


router = Router(
    path="/v1/staff",
    route_handlers=[
        staff_me,
        create_organisation,
        list_organisations,
        review_queue,
        approve,
        reject,
        delist,
        freeze,
        unfreeze,
    ],
    tags=["staff"],
)
