"""Legal persons: registering an enterprise, its members, and acting for it."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Request, Router, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api.deps import StoresDep
from api.guards import citizen, citizen_level, claims_of
from auth import enterprises
from auth.enterprises import ActAs, ActingToken, EnterpriseView, GrantMember, MemberView, RegisterEnterprise


@post(
    "/me/enterprises",
    guards=[citizen_level(2)],
    status_code=HTTP_201_CREATED,
    summary="Register an enterprise the caller is the legal representative of",
)
async def register_enterprise(
    request: Request[Any, Any, Any], data: JSONBody[RegisterEnterprise], stores: StoresDep
) -> EnterpriseView:
    """Needs real-name level L2. The unified social credit code is looked up in the enterprise registry and its
    legal representative must be the caller (matched by ID number). 422 `invalid_uscc`, 404
    `enterprise_not_found`, 403 `not_legal_representative`, 409 `enterprise_registered` or
    `enterprise_inactive`, 503 when the registry is unavailable."""
    return await enterprises.register(stores, claims_of(request), data)


@get("/me/enterprises", guards=[citizen], summary="Enterprises the caller belongs to, with the caller's role")
async def my_enterprises(request: Request[Any, Any, Any], stores: StoresDep) -> list[EnterpriseView]:
    return await enterprises.my_enterprises(stores, claims_of(request))


@post("/me/acting", guards=[citizen], status_code=200, summary="Act for an enterprise, or as oneself again")
async def act_as(request: Request[Any, Any, Any], data: JSONBody[ActAs], stores: StoresDep) -> ActingToken:
    """Switches the current session's acting identity and returns a new access token whose `ent` claim is
    {id, role} (none with `enterprise_id: null`). The refresh token stays; refreshes keep the acting identity
    while the membership lasts. 404 `enterprise_not_found` for an enterprise the caller does not belong to."""
    return await enterprises.act_as(stores, claims_of(request), data)


@post(
    "/enterprises/{enterprise_id:uuid}/members",
    guards=[citizen],
    status_code=HTTP_201_CREATED,
    summary="Grant a role in the enterprise to an existing account",
)
async def grant_member(
    request: Request[Any, Any, Any],
    enterprise_id: FromPath[UUID],
    data: JSONBody[GrantMember],
    stores: StoresDep,
) -> MemberView:
    """The legal representative grants admin or agent; an admin grants agent only (403
    `role_not_grantable`, agents 403 `not_enterprise_admin`). The account is found by phone: 404
    `account_not_found` if there is none."""
    return await enterprises.grant(stores, claims_of(request), enterprise_id, data)


@delete(
    "/enterprises/{enterprise_id:uuid}/members/{account_id:uuid}",
    guards=[citizen],
    status_code=204,
    summary="Revoke a member's role",
)
async def revoke_member(
    request: Request[Any, Any, Any],
    enterprise_id: FromPath[UUID],
    account_id: FromPath[UUID],
    stores: StoresDep,
) -> None:
    """The legal representative revokes admins and agents, an admin revokes agents; the legal
    representative cannot be revoked. The member's next refresh carries no `ent` claim."""
    await enterprises.revoke(stores, claims_of(request), enterprise_id, account_id)


@get(
    "/enterprises/{enterprise_id:uuid}/members",
    guards=[citizen],
    summary="Members of the enterprise (masked phones and names)",
)
async def list_members(
    request: Request[Any, Any, Any], enterprise_id: FromPath[UUID], stores: StoresDep
) -> list[MemberView]:
    """For the legal representative and admins."""
    return await enterprises.members(stores, claims_of(request), enterprise_id)


router = Router(
    path="/v1",
    route_handlers=[register_enterprise, my_enterprises, act_as, grant_member, revoke_member, list_members],
    tags=["enterprises"],
)
