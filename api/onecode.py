"""The citizen's one-code: links, device keys, the authorisation, history, lost phone."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from api.deps import StoresDep
from api.guards import citizen, citizen_level, claims_of
from core.db import connection
from onecode import authorisations, devices, ledger, links
from onecode.authorisations import AuthorisationView, OneCodeOverview
from onecode.devices import DeviceView, LostPhone
from onecode.ledger import HistoryPage
from onecode.links import LinkChange, LinkRequest

# What these answers hold is personal (links, devices, the authorisation): no shared cache keeps them.
PRIVATE = {"Cache-Control": "private, no-store"}


class DeviceRegistration(msgspec.Struct, frozen=True):
    # base64 of the P-256 key: 65-byte uncompressed point, 33-byte compressed point or DER SPKI (devices.py)
    public_key: Annotated[str, msgspec.Meta(max_length=256)]


class AuthorisationRequest(msgspec.Struct, frozen=True):
    device_id: UUID


class LostPhoneRequest(msgspec.Struct, frozen=True):
    device_id: UUID | None = None  # omitted: every device key of the account


@get("/onecode", guards=[citizen], summary="The caller's one-code: scenes, authorisation, links, devices")
async def my_onecode(
    request: Request[Any, Any, Any], stores: StoresDep, device_id: FromQuery[UUID | None] = None
) -> Response[OneCodeOverview]:
    """The scenes linked now, the newest live authorisation (of `device_id` when given), the links (masked)
    and the registered device keys. After a link change the app finds its re-issued authorisation here."""
    found = await authorisations.overview(stores, claims_of(request).account_id, device_id)
    return Response(found, headers=PRIVATE)


@post(
    "/onecode/links", guards=[citizen_level(2)], status_code=201, summary="Link transit, medical or payment"
)
async def link(request: Request[Any, Any, Any], data: JSONBody[LinkRequest], stores: StoresDep) -> LinkChange:
    """`{"kind": "transit"}` (L2), `{"kind": "medical"}` (L3: the verified name and ID number go to the
    medical-insurance platform, which answers with the reference we keep), `{"kind": "payment",
    "card_number": "..."}` (L2: the number goes to the acquirer once; we keep its token). Answers the link
    (masked) and the authorisations re-issued with the new scene. 403 insufficient_level, 409
    already_linked, 422 card_number, 429 after 20 changes an hour, 502 provider_rejected, 503
    provider_unavailable."""
    claims = claims_of(request)
    return await links.link(stores, claims.account_id, claims.level, data)


@delete(
    "/onecode/links/{kind:str}",
    guards=[citizen],
    status_code=200,
    summary="Unlink transit, medical or payment",
)
async def unlink(request: Request[Any, Any, Any], kind: FromPath[str], stores: StoresDep) -> LinkChange:
    """Removes the link at once: authorisations carrying it are revoked (validators learn it with their next
    list) and re-issued without it. 404 not_linked, 422 for an unknown kind."""
    return await links.unlink(stores, claims_of(request).account_id, kind)


@post(
    "/onecode/devices", guards=[citizen_level(2)], status_code=201, summary="Register the phone's device key"
)
async def register_device(
    request: Request[Any, Any, Any], data: JSONBody[DeviceRegistration], stores: StoresDep
) -> Response[DeviceView]:
    """`public_key`: base64 of the P-256 public key as the 65-byte X9.62 uncompressed point (onecode.client
    public_key_b64; iOS SecKeyCopyExternalRepresentation), the 33-byte compressed point, or a DER
    SubjectPublicKeyInfo (Android/Java getEncoded()); kept, and answered, as the uncompressed point. 201 for
    a new device, 200 when this account registered the key already (in any form). 422 public_key (not
    base64, not one of these forms, not a P-256 point on the curve), 409 device_key_taken /
    device_key_revoked / too_many_devices."""
    device, created = await devices.register(stores, claims_of(request).account_id, data.public_key)
    return Response(device, status_code=201 if created else 200, headers=PRIVATE)


@post(
    "/onecode/authorisation",
    guards=[citizen_level(2)],
    status_code=201,
    summary="A new authorisation (<= 24 h)",
)
async def authorise(
    request: Request[Any, Any, Any], data: JSONBody[AuthorisationRequest], stores: StoresDep
) -> Response[AuthorisationView]:
    """Signs an authorisation for the device key: `authorisation` is base64 of its 199 bytes, to hand to
    onecode.client.OneCodeClient with the device's private key. Ask again before `expires_at`. 404
    device_not_found, 409 nothing_linked, 429 after 30 an hour."""
    issued = await authorisations.issue(stores, claims_of(request).account_id, data.device_id)
    return Response(issued, status_code=201, headers=PRIVATE)


@post(
    "/onecode/lost-phone", guards=[citizen], status_code=200, summary="Lost phone: revoke its device key now"
)
async def lost_phone(
    request: Request[Any, Any, Any], stores: StoresDep, data: JSONBody[LostPhoneRequest | None] = None
) -> LostPhone:
    """Revokes the device key (`device_id`, or every one of the account when omitted) and every
    authorisation made for it, at once: online resolves refuse its codes from now on, offline validators
    with their next revocation list. 404 device_not_found."""
    device_id = data.device_id if data is not None else None
    return await devices.lost_phone(stores, claims_of(request).account_id, device_id)


async def _history(
    request: Request[Any, Any, Any], stores: StoresDep, scene: str, limit: int, before: datetime | None
) -> Response[HistoryPage]:
    async with connection(stores.pool, stores.settings) as conn:
        page = await ledger.citizen_history(
            conn, claims_of(request).account_id, scene, limit=limit, before=before
        )
    return Response(page, headers=PRIVATE)


@get("/onecode/rides", guards=[citizen], summary="The caller's settled ride fares, newest first")
async def my_rides(
    request: Request[Any, Any, Any],
    stores: StoresDep,
    limit: Annotated[int, QueryParameter(ge=1, le=ledger.MAX_PAGE)] = 20,
    before: FromQuery[datetime | None] = None,
) -> Response[HistoryPage]:
    """Fares the transit operator charged (from the settlement ledger): `amount_fen` each, a refund negative.
    For the next page pass `next_before` as `before`."""
    return await _history(request, stores, "transit", limit, before)


@get("/onecode/payments", guards=[citizen], summary="The caller's payments, newest first")
async def my_payments(
    request: Request[Any, Any, Any],
    stores: StoresDep,
    limit: Annotated[int, QueryParameter(ge=1, le=ledger.MAX_PAGE)] = 20,
    before: FromQuery[datetime | None] = None,
) -> Response[HistoryPage]:
    """Payments made with the one-code (from the settlement ledger), newest first."""
    return await _history(request, stores, "payment", limit, before)


router = Router(
    path="/v1",
    route_handlers=[my_onecode, link, unlink, register_device, authorise, lost_phone, my_rides, my_payments],
    tags=["one-code"],
)
