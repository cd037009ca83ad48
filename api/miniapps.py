"""Mini-apps for their developers (organisations, apps, versions) and for citizens (catalog, recently used,
favourites). Staff routes are in api/staff.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from litestar import Litestar, Request, Response, Router, delete, get, patch, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_201_CREATED
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser

from api.deps import StoresDep
from api.guards import citizen, citizen_level, claims_of
from auth.tokens import authenticate
from core.errors import InvalidInput, TongbanError, Unauthorized
from core.stores import Stores
from miniapps import catalog, registry, versions
from miniapps.catalog import CATALOG
from miniapps.models import (
    Actor,
    AddMember,
    AppCreated,
    AppView,
    AuditEntry,
    CatalogItem,
    CatalogPage,
    CreateApp,
    FreezeApp,
    GreyRelease,
    MemberView,
    OrganisationView,
    PackageTooLarge,
    RecordRecent,
    SecretReset,
    SetAllowlist,
    StartTrial,
    UpdateApp,
    VersionView,
)
from miniapps.versions import MANIFEST_MAX_BYTES, ReceivedPackage

JSON = "application/json"
# Room in an upload for what is not the package: the manifest, the sha256 field and multipart framing.
UPLOAD_OVERHEAD = MANIFEST_MAX_BYTES + 64 * 1024
UPLOAD_FIELDS = ("manifest", "package", "sha256")


def _actor(request: Request[Any, Any, Any]) -> Actor:
    return Actor.of_account(claims_of(request).account_id)


async def optional_viewer(request: Request[Any, Any, Any], stores: Stores) -> UUID | None:
    """The caller's account when a Bearer token comes with the request (a bad one is 401, so the app
    refreshes it), else None: the anonymous view. Costs no I/O, like every token check."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a Bearer access token is required", code="invalid_token")
    return (await authenticate(stores, token.strip())).account_id


# --- organisations -----------------------------------------------------------------------------------------


@get("/me/organisations", guards=[citizen], summary="Organisations the caller is a member of, with the role")
async def my_organisations(request: Request[Any, Any, Any], stores: StoresDep) -> list[OrganisationView]:
    return await registry.my_organisations(stores, claims_of(request).account_id)


@get(
    "/organisations/{organisation_id:uuid}/members",
    guards=[citizen_level(2)],
    summary="Members of the organisation",
)
async def list_members(
    request: Request[Any, Any, Any], organisation_id: FromPath[UUID], stores: StoresDep
) -> list[MemberView]:
    return await registry.list_members(stores, claims_of(request).account_id, organisation_id)


@post(
    "/organisations/{organisation_id:uuid}/members",
    guards=[citizen_level(2)],
    status_code=HTTP_201_CREATED,
    summary="Add a member, or change a member's role (admins)",
)
async def add_member(
    request: Request[Any, Any, Any],
    organisation_id: FromPath[UUID],
    data: JSONBody[AddMember],
    stores: StoresDep,
) -> MemberView:
    """`member` names the account by `account_id` or `phone`; it must be real-name verified (409
    `member_not_verified`). Roles: admin (members, AppSecret, freeze), developer (apps, versions up to
    review), operator (grey release, release, roll-back, offline). The last admin stays (409 `last_admin`)."""
    return await registry.add_member(stores, _actor(request), organisation_id, data)


@delete(
    "/organisations/{organisation_id:uuid}/members/{account_id:uuid}",
    guards=[citizen_level(2)],
    status_code=204,
    summary="Remove a member (admins)",
)
async def remove_member(
    request: Request[Any, Any, Any],
    organisation_id: FromPath[UUID],
    account_id: FromPath[UUID],
    stores: StoresDep,
) -> None:
    await registry.remove_member(stores, _actor(request), organisation_id, account_id)


# --- apps --------------------------------------------------------------------------------------------------


@get(
    "/organisations/{organisation_id:uuid}/miniapps",
    guards=[citizen_level(2)],
    summary="The organisation's mini-apps",
)
async def list_apps(
    request: Request[Any, Any, Any], organisation_id: FromPath[UUID], stores: StoresDep
) -> list[AppView]:
    return await registry.list_apps(stores, claims_of(request).account_id, organisation_id)


@post(
    "/organisations/{organisation_id:uuid}/miniapps",
    guards=[citizen_level(2)],
    status_code=HTTP_201_CREATED,
    summary="Register a mini-app (admins, developers); the AppSecret is in this answer only",
)
async def create_app(
    request: Request[Any, Any, Any],
    organisation_id: FromPath[UUID],
    data: JSONBody[CreateApp],
    stores: StoresDep,
) -> AppCreated:
    """Names are unique (409 `app_name_taken`); `region_code` is a GB/T 2260 code in use (422
    `invalid_region`); `ip_allowlist` CIDRs (422 `invalid_cidr` naming the entry)."""
    return await registry.create_app(stores, _actor(request), organisation_id, data)


@get("/miniapps/{appid:str}", guards=[citizen_level(2)], summary="One of the caller's organisations' apps")
async def get_app(request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep) -> AppView:
    return await registry.get_app(stores, claims_of(request).account_id, appid)


@patch(
    "/miniapps/{appid:str}", guards=[citizen_level(2)], summary="Change an app's details (admins, developers)"
)
async def update_app(
    request: Request[Any, Any, Any], appid: FromPath[str], data: JSONBody[UpdateApp], stores: StoresDep
) -> AppView:
    return await registry.update_app(stores, _actor(request), appid, data)


@put(
    "/miniapps/{appid:str}/ip-allowlist",
    guards=[citizen_level(2)],
    summary="Set the addresses allowed to call the SDK endpoints (admins, developers)",
)
async def set_allowlist(
    request: Request[Any, Any, Any], appid: FromPath[str], data: JSONBody[SetAllowlist], stores: StoresDep
) -> AppView:
    return await registry.set_allowlist(stores, _actor(request), appid, data)


@post(
    "/miniapps/{appid:str}/secret",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Reset the AppSecret (admins); the new one is in this answer only",
)
async def reset_secret(
    request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep
) -> SecretReset:
    return await registry.reset_secret(stores, _actor(request), appid)


@post(
    "/miniapps/{appid:str}/freeze",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Freeze the app (admins)",
)
async def freeze_app(
    request: Request[Any, Any, Any], appid: FromPath[str], data: JSONBody[FreezeApp], stores: StoresDep
) -> AppView:
    """A frozen app leaves the catalog and its SDK calls are refused until it is unfrozen."""
    return await registry.freeze_app(stores, _actor(request), appid, data.reason, by="organisation")


@post(
    "/miniapps/{appid:str}/unfreeze",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Unfreeze the app (admins)",
)
async def unfreeze_app(request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep) -> AppView:
    """403 `frozen_by_platform` when the platform froze it."""
    return await registry.unfreeze_app(stores, _actor(request), appid, by="organisation")


@get("/miniapps/{appid:str}/audit", guards=[citizen_level(2)], summary="The app's audit trail, newest first")
async def app_audit(
    request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep
) -> list[AuditEntry]:
    return await registry.app_audit(stores, claims_of(request).account_id, appid)


# --- versions ----------------------------------------------------------------------------------------------


@dataclass
class _Upload:
    manifest: bytes | None
    package: ReceivedPackage | None
    sha256: str | None


async def _read_upload(request: Request[Any, Any, Any], stores: Stores) -> _Upload:
    """Stream a multipart/form-data body: the package goes to blob storage chunk by chunk (hashed, counted,
    stopped at the size limit); the small fields are collected. Nothing is buffered whole."""
    media_type, options = request.content_type
    boundary = options.get("boundary")
    if media_type != "multipart/form-data" or not boundary:
        raise InvalidInput(
            "body: multipart/form-data with the fields manifest, package and (optionally) sha256",
            field="body",
            code="multipart_required",
        )
    limit = stores.settings.miniapp_package_max_bytes
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit + UPLOAD_OVERHEAD:
        raise PackageTooLarge(f"package: larger than {limit} bytes", field="package")
    receiver = versions.receiver_for(stores)
    small: dict[str, bytearray] = {}
    package_seen = False
    current: str | None = None
    try:
        with PushMultipartParser(boundary, max_segment_count=len(UPLOAD_FIELDS) + 1) as parser:
            async for chunk in request.stream():
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        current = event.name or ""
                        if (
                            current not in UPLOAD_FIELDS
                            or current in small
                            or (current == "package" and package_seen)
                        ):
                            raise InvalidInput(
                                f"{current or 'body'}: unknown or repeated form field "
                                f"(expected {', '.join(UPLOAD_FIELDS)})",
                                field=current or "body",
                            )
                        if current == "package":
                            package_seen = True
                        else:
                            small[current] = bytearray()
                    elif event is None:
                        current = None
                    elif current == "package":
                        await receiver.feed(event)
                    elif current is not None:
                        small[current] += event
                        if len(small[current]) > MANIFEST_MAX_BYTES:
                            raise InvalidInput(
                                f"{current}: at most {MANIFEST_MAX_BYTES} bytes", field=current
                            )
    except (ParserError, ParserLimitReached) as exc:
        await receiver.discard()
        raise TongbanError(
            f"body: not a valid multipart/form-data stream ({exc})", field="body", code="malformed_request"
        ) from None
    except BaseException:
        await receiver.discard()
        raise
    if not package_seen:
        await receiver.discard()
    sha256 = small.get("sha256")
    return _Upload(
        manifest=bytes(small["manifest"]) if "manifest" in small else None,
        package=receiver.finish() if package_seen else None,
        sha256=sha256.decode(errors="replace") if sha256 is not None else None,
    )


@post(
    "/miniapps/{appid:str}/versions",
    guards=[citizen_level(2)],
    status_code=HTTP_201_CREATED,
    # The package is streamed and its size checked as it arrives (413 package_too_large).
    request_max_body_size=None,
    summary="Upload a version: manifest + package (multipart/form-data; admins, developers)",
)
async def upload_version(
    request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep
) -> VersionView:
    """Form fields: `manifest` (JSON; 422 `invalid_manifest` whose `field` names the part, e.g.
    `manifest.pages[0]`), `package` (the file; 413 `package_too_large` over the size limit) and optionally
    `sha256` (hex; 422 `package_hash_mismatch` when the received package differs). The new version is in
    `development`."""
    claims = claims_of(request)
    await versions.check_can_upload(stores, claims.account_id, appid)
    upload = await _read_upload(request, stores)
    return await versions.create_version(
        stores,
        _actor(request),
        appid,
        manifest=upload.manifest,
        package=upload.package,
        declared_sha256=upload.sha256,
    )


@get("/miniapps/{appid:str}/versions", guards=[citizen_level(2)], summary="The app's versions, newest first")
async def list_versions(
    request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep
) -> list[VersionView]:
    return await versions.list_versions(stores, claims_of(request).account_id, appid)


@get("/miniapps/{appid:str}/versions/{version_id:uuid}", guards=[citizen_level(2)], summary="One version")
async def get_version(
    request: Request[Any, Any, Any], appid: FromPath[str], version_id: FromPath[UUID], stores: StoresDep
) -> VersionView:
    return await versions.get_version(stores, claims_of(request).account_id, appid, version_id)


@get(
    "/miniapps/{appid:str}/versions/{version_id:uuid}/audit",
    guards=[citizen_level(2)],
    summary="Every transition of the version, oldest first",
)
async def version_audit(
    request: Request[Any, Any, Any], appid: FromPath[str], version_id: FromPath[UUID], stores: StoresDep
) -> list[AuditEntry]:
    return await versions.version_audit(stores, claims_of(request).account_id, appid, version_id)


_VERSION_PATH = "/miniapps/{appid:str}/versions/{version_id:uuid}"


@post(
    _VERSION_PATH + "/trial",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Trial the version with named accounts (development|trial -> trial)",
)
async def trial_version(
    request: Request[Any, Any, Any],
    appid: FromPath[str],
    version_id: FromPath[UUID],
    data: JSONBody[StartTrial],
    stores: StoresDep,
) -> VersionView:
    return await versions.transition(stores, _actor(request), version_id, "trial", appid=appid, trial=data)


@post(
    _VERSION_PATH + "/submit",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Submit for review (development|trial -> submitted)",
)
async def submit_version(
    request: Request[Any, Any, Any], appid: FromPath[str], version_id: FromPath[UUID], stores: StoresDep
) -> VersionView:
    """409 `illegal_transition` from any other state, as for every transition."""
    return await versions.transition(stores, _actor(request), version_id, "submit", appid=appid)


@post(
    _VERSION_PATH + "/withdraw",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Withdraw from review (submitted -> development)",
)
async def withdraw_version(
    request: Request[Any, Any, Any], appid: FromPath[str], version_id: FromPath[UUID], stores: StoresDep
) -> VersionView:
    return await versions.transition(stores, _actor(request), version_id, "withdraw", appid=appid)


@post(
    _VERSION_PATH + "/grey",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Start or widen a grey release (approved|grey -> grey; admins, operators)",
)
async def grey_version(
    request: Request[Any, Any, Any],
    appid: FromPath[str],
    version_id: FromPath[UUID],
    data: JSONBody[GreyRelease],
    stores: StoresDep,
) -> VersionView:
    """Citizens whose bucket (sha256("appid:account id") mod 100) is below `percent`, the listed
    `accounts` and citizens browsing from the listed `regions` see this version. Changing it may only widen
    (409 `grey_only_widens`); one grey version per app (409 `grey_in_progress`)."""
    return await versions.transition(stores, _actor(request), version_id, "grey", appid=appid, grey=data)


@post(
    _VERSION_PATH + "/release",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Release to everyone (approved|grey|offline -> released; admins, operators)",
)
async def release_version(
    request: Request[Any, Any, Any], appid: FromPath[str], version_id: FromPath[UUID], stores: StoresDep
) -> VersionView:
    """The version released before becomes `superseded` (what a roll-back restores)."""
    return await versions.transition(stores, _actor(request), version_id, "release", appid=appid)


@post(
    _VERSION_PATH + "/rollback",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Roll back one step (released|grey -> rolled_back; admins, operators)",
)
async def rollback_version(
    request: Request[Any, Any, Any], appid: FromPath[str], version_id: FromPath[UUID], stores: StoresDep
) -> VersionView:
    """A released version: the one released before it is released again (409 `no_previous_release` when
    there is none). A grey version: the grey release stops."""
    return await versions.transition(stores, _actor(request), version_id, "rollback", appid=appid)


@post(
    _VERSION_PATH + "/offline",
    guards=[citizen_level(2)],
    status_code=200,
    summary="Take the released version offline (released -> offline; admins, operators)",
)
async def offline_version(
    request: Request[Any, Any, Any], appid: FromPath[str], version_id: FromPath[UUID], stores: StoresDep
) -> VersionView:
    return await versions.transition(stores, _actor(request), version_id, "offline", appid=appid)


# --- catalog -----------------------------------------------------------------------------------------------


def _json(body: bytes) -> Response[bytes]:
    return Response(body, media_type=JSON)


@get(
    "/catalog",
    summary="Published mini-apps as the caller sees them",
    responses={200: ResponseSpec(data_container=CatalogPage, description="One page of the catalog")},
)
async def catalog_list(
    request: Request[Any, Any, Any],
    stores: StoresDep,
    region: FromQuery[str | None] = None,
    category: FromQuery[str | None] = None,
    q: FromQuery[str | None] = None,
    offset: FromQuery[int] = 0,
    limit: FromQuery[int] = 20,
) -> Response[bytes]:
    """Anyone may ask. Without a token: released versions only. With a citizen's token: also the grey
    versions whose grey release admits the citizen (bucket, account list, or the `region` browsed from).
    `region` (GB/T 2260) shows the apps serving that region, including province-wide ones; `q` matches a
    keyword in names, descriptions, organisations and service item codes (apps named by it first). Served
    from memory; changes show within a moment of their release."""
    viewer = await optional_viewer(request, stores)
    return _json(
        await catalog.catalog_page(
            stores, viewer=viewer, region=region, category=category, q=q, offset=offset, limit=limit
        )
    )


@get(
    "/catalog/{appid:str}",
    summary="One published mini-app as the caller sees it",
    responses={200: ResponseSpec(data_container=CatalogItem, description="The app")},
)
async def catalog_app(
    request: Request[Any, Any, Any],
    appid: FromPath[str],
    stores: StoresDep,
    region: FromQuery[str | None] = None,
) -> Response[bytes]:
    viewer = await optional_viewer(request, stores)
    return _json(await catalog.catalog_item(stores, appid, viewer=viewer, region=region))


@post("/me/recent", guards=[citizen], status_code=204, summary="Record that the caller opened a mini-app")
async def record_recent(
    request: Request[Any, Any, Any], data: JSONBody[RecordRecent], stores: StoresDep
) -> None:
    """The 50 most recently opened apps are kept. 404 `app_not_found` for an app not in the caller's catalog."""
    await catalog.record_recent(stores, claims_of(request).account_id, data.appid)


@get(
    "/me/recent",
    guards=[citizen],
    summary="The caller's recently used mini-apps, most recent first",
    responses={200: ResponseSpec(data_container=list[CatalogItem], description="Apps")},
)
async def my_recent(request: Request[Any, Any, Any], stores: StoresDep) -> Response[bytes]:
    return _json(await catalog.recent(stores, claims_of(request).account_id))


@get(
    "/me/favourites",
    guards=[citizen],
    summary="The caller's favourite mini-apps, newest first",
    responses={200: ResponseSpec(data_container=list[CatalogItem], description="Apps")},
)
async def my_favourites(request: Request[Any, Any, Any], stores: StoresDep) -> Response[bytes]:
    return _json(await catalog.favourites(stores, claims_of(request).account_id))


@put("/me/favourites/{appid:str}", guards=[citizen], status_code=204, summary="Add a favourite (idempotent)")
async def add_favourite(request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep) -> None:
    """At most 200 (409 `too_many_favourites`)."""
    await catalog.add_favourite(stores, claims_of(request).account_id, appid)


@delete(
    "/me/favourites/{appid:str}", guards=[citizen], status_code=204, summary="Remove a favourite (idempotent)"
)
async def remove_favourite(request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep) -> None:
    await catalog.remove_favourite(stores, claims_of(request).account_id, appid)


@asynccontextmanager
async def catalog_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Keeps this process's in-memory catalog current (after the stores are open)."""
    task = asyncio.create_task(CATALOG.run(app.state.stores))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


router = Router(
    path="/v1",
    route_handlers=[
        my_organisations,
        list_members,
        add_member,
        remove_member,
        list_apps,
        create_app,
        get_app,
        update_app,
        set_allowlist,
        reset_secret,
        freeze_app,
        unfreeze_app,
        app_audit,
        upload_version,
        list_versions,
        get_version,
        version_audit,
        trial_version,
        submit_version,
        withdraw_version,
        grey_version,
        release_version,
        rollback_version,
        offline_version,
    ],
    tags=["miniapps"],
)
catalog_router = Router(
    path="/v1",
    route_handlers=[
        catalog_list,
        catalog_app,
        record_recent,
        my_recent,
        my_favourites,
        add_favourite,
        remove_favourite,
    ],
    tags=["catalog"],
)
