"""PIPL rights of the caller: a copy of their data (art. 45), deletion (art. 47), their consents."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Request, Response, Router, delete, get
from litestar.params import FromPath
from litestar.status_codes import HTTP_202_ACCEPTED

from api.deps import StoresDep
from api.guards import citizen, claims_of
from auth import consent, rights
from auth.consent import Consent
from auth.rights import DeletionState, PersonalDataExport
from core.clock import SHANGHAI


@get("/me/export", guards=[citizen], summary="A copy of all personal data held about the caller")
async def export_my_data(request: Request[Any, Any, Any], stores: StoresDep) -> Response[PersonalDataExport]:
    """PIPL art. 45: the account (phone, and name and ID number in full once verified), sessions and
    devices, account events, consents and enterprise memberships, as a JSON attachment. Each export is
    recorded in the PII access log. At most TONGBAN_AUTH_EXPORT_PER_HOUR (5) per hour (429)."""
    export = await rights.export_personal_data(stores, claims_of(request).account_id)
    day = export.exported_at.astimezone(SHANGHAI).strftime("%Y%m%d")
    return Response(
        export,
        headers={
            "Content-Disposition": f'attachment; filename="tongban-personal-data-{day}.json"',
            "Cache-Control": "no-store",
        },
    )


@delete(
    "/me",
    guards=[citizen],
    status_code=HTTP_202_ACCEPTED,
    summary="Delete the caller's account after a grace period",
)
async def delete_me(request: Request[Any, Any, Any], stores: StoresDep) -> DeletionState:
    """PIPL art. 47: the account is erased at `due_at` (15 days by default) unless cancelled before with
    DELETE /v1/me/deletion. Asking again while pending returns the same request."""
    return await rights.request_deletion(stores, claims_of(request).account_id)


@get("/me/deletion", guards=[citizen], summary="State of the caller's deletion request")
async def my_deletion(request: Request[Any, Any, Any], stores: StoresDep) -> DeletionState:
    return await rights.get_deletion(stores, claims_of(request).account_id)


@delete("/me/deletion", guards=[citizen], status_code=200, summary="Cancel the pending deletion")
async def cancel_my_deletion(request: Request[Any, Any, Any], stores: StoresDep) -> DeletionState:
    """The account is active again. 404 when no deletion is pending."""
    return await rights.cancel_deletion(stores, claims_of(request).account_id)


@get("/me/consents", guards=[citizen], summary="The caller's consents, granted and revoked")
async def my_consents(request: Request[Any, Any, Any], stores: StoresDep) -> list[Consent]:
    return await consent.list_consents(stores, claims_of(request).account_id)


@delete("/me/consents/{consent_id:uuid}", guards=[citizen], status_code=204, summary="Withdraw a consent")
async def revoke_my_consent(
    request: Request[Any, Any, Any], consent_id: FromPath[UUID], stores: StoresDep
) -> None:
    """PIPL art. 15: the recipient loses access at once. 404 for an id that is not the caller's."""
    await consent.revoke(stores, claims_of(request).account_id, consent_id)


# delete_me is mounted by api/realname.py's router, which owns the path /v1/me (GET): Litestar refuses
# one path in two routers.
router = Router(
    path="/v1",
    route_handlers=[
        export_my_data,
        my_deletion,
        cancel_my_deletion,
        my_consents,
        revoke_my_consent,
    ],
    tags=["me"],
)
