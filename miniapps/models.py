"""What the mini-app registry takes and gives (msgspec Structs), its roles, states and named errors."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

from core.errors import Conflict, TongbanError

# --- roles -------------------------------------------------------------------------------------------------

StaffRole = Literal["platform_admin", "reviewer", "health_authority"]
STAFF_ROLES: tuple[str, ...] = ("platform_admin", "reviewer", "health_authority")
OrgRole = Literal["admin", "developer", "operator"]
ORG_ROLES: tuple[str, ...] = ("admin", "developer", "operator")
OrgKind = Literal["department", "utility", "hospital", "other"]

# What each organisation role may do (registry.require_role checks these).
MANAGE_MEMBERS = frozenset({"admin"})
EDIT_APPS = frozenset({"admin", "developer"})  # create, edit, IP allowlist
GUARD_APPS = frozenset({"admin"})  # reset the AppSecret, freeze, unfreeze
DEVELOP = frozenset({"admin", "developer"})  # upload, trial, submit, withdraw
OPERATE = frozenset({"admin", "operator"})  # grey, release, roll back, take offline
READ = frozenset(ORG_ROLES)

# --- version states ----------------------------------------------------------------------------------------

VersionState = Literal[
    "development",
    "trial",
    "submitted",
    "approved",
    "rejected",
    "grey",
    "released",
    "superseded",
    "rolled_back",
    "offline",
    "delisted",
]
VersionAction = Literal[
    "trial", "submit", "withdraw", "approve", "reject", "grey", "release", "rollback", "offline", "delist"
]

# --- field types -------------------------------------------------------------------------------------------

RegionCode = Annotated[str, Meta(pattern=r"^[0-9]{6}$", description="GB/T 2260 region code, e.g. 150100")]
Category = Annotated[
    str, Meta(pattern=r"^[a-z][a-z0-9_]{1,31}$", description="lower-case slug, e.g. social_security")
]
AppName = Annotated[str, Meta(min_length=1, max_length=30)]
Description = Annotated[str, Meta(max_length=500)]
# 国家政务服务事项编码 and local item codes: letters, digits and dashes.
ServiceItemCode = Annotated[str, Meta(pattern=r"^[0-9A-Za-z-]{4,64}$")]
IconUrl = Annotated[str, Meta(pattern=r"^https://[^\s]{1,500}$")]
Reason = Annotated[str, Meta(min_length=1, max_length=500)]
Cidr = Annotated[str, Meta(min_length=1, max_length=64)]


# --- named errors ------------------------------------------------------------------------------------------


class IllegalTransition(Conflict):
    code = "illegal_transition"
    title = "Illegal state transition"


class PackageTooLarge(TongbanError):
    status = 413
    code = "package_too_large"
    title = "Package too large"


class Actor(msgspec.Struct, frozen=True):
    """Who did it, as the audit names them: "account:<uuid>" for a citizen (staff or member), "ops:<user>"
    for the CLI."""

    label: str
    account_id: UUID | None = None

    @classmethod
    def of_account(cls, account_id: UUID) -> Actor:
        return cls(label=f"account:{account_id}", account_id=account_id)

    @classmethod
    def ops(cls, user: str) -> Actor:
        return cls(label=user if user.startswith("ops:") else f"ops:{user}")


# --- staff -------------------------------------------------------------------------------------------------


class StaffMember(msgspec.Struct):
    account_id: UUID
    role: StaffRole
    granted_by: str
    granted_at: datetime


class StaffMe(msgspec.Struct):
    account_id: UUID
    roles: list[StaffRole]


# --- organisations -----------------------------------------------------------------------------------------


class MemberRef(msgspec.Struct, forbid_unknown_fields=True):
    """An account, by id or by mainland mobile number (exactly one)."""

    account_id: UUID | None = None
    phone: Annotated[str, Meta(max_length=32)] | None = None


class CreateOrganisation(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    kind: OrgKind
    region_code: RegionCode
    first_admin: MemberRef


class OrganisationView(msgspec.Struct):
    id: UUID
    name: str
    kind: OrgKind
    region_code: str
    created_at: datetime
    role: OrgRole | None = None  # the caller's role, where the caller is a member


class AddMember(msgspec.Struct, forbid_unknown_fields=True):
    member: MemberRef
    role: OrgRole


class MemberView(msgspec.Struct):
    account_id: UUID
    role: OrgRole
    granted_by: str
    granted_at: datetime


# --- apps --------------------------------------------------------------------------------------------------


class CreateApp(msgspec.Struct, forbid_unknown_fields=True):
    name: AppName
    category: Category
    region_code: RegionCode
    description: Description = ""
    service_item_code: ServiceItemCode | None = None
    icon_url: IconUrl | None = None
    ip_allowlist: Annotated[list[Cidr], Meta(max_length=50)] = []


class UpdateApp(msgspec.Struct, forbid_unknown_fields=True):
    """Only the fields present change; null clears the optional ones."""

    name: AppName | UnsetType = UNSET
    category: Category | UnsetType = UNSET
    region_code: RegionCode | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    service_item_code: ServiceItemCode | UnsetType | None = UNSET
    icon_url: IconUrl | UnsetType | None = UNSET


class SetAllowlist(msgspec.Struct, forbid_unknown_fields=True):
    """CIDRs (or single addresses) whose servers may call the SDK endpoints; empty: any address."""

    cidrs: Annotated[list[Cidr], Meta(max_length=50)]


class FreezeApp(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class AppView(msgspec.Struct):
    appid: str
    organisation_id: UUID
    name: str
    description: str
    category: str
    region_code: str
    service_item_code: str | None
    icon_url: str | None
    status: Literal["active", "frozen"]
    frozen_by: Literal["organisation", "platform"] | None
    frozen_reason: str | None
    ip_allowlist: list[str]
    secret_reset_at: datetime
    created_at: datetime
    updated_at: datetime


class AppCreated(msgspec.Struct):
    app: AppView
    # Shown this once: only a hash is stored. Lost: reset it.
    appsecret: str


class SecretReset(msgspec.Struct):
    appid: str
    appsecret: str
    reset_at: datetime


class SdkApp(msgspec.Struct, frozen=True):
    """What the SDK endpoints need of an app (registry.sdk_app): check the secret with registry.secret_matches
    and the caller's address with registry.ip_allowed; a frozen app gets no tokens."""

    appid: str
    organisation_id: UUID
    organisation_name: str
    status: Literal["active", "frozen"]
    secret_hash: bytes
    # Tokens issued before this moment were issued under the previous secret.
    secret_reset_at: datetime
    ip_allowlist: tuple[str, ...]


# --- versions ----------------------------------------------------------------------------------------------

Version = Annotated[
    str,
    Meta(
        pattern=r"^(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})$",
        description="MAJOR.MINOR.PATCH",
    ),
]
PagePath = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", max_length=128)]
Scope = Literal[
    "scope.userLocation",
    "scope.camera",
    "scope.record",
    "scope.album",
    "scope.phoneNumber",
    "scope.realName",
    "scope.healthPass",
]


class ScopeUse(msgspec.Struct, forbid_unknown_fields=True):
    desc: Annotated[str, Meta(min_length=1, max_length=30)]  # shown to the citizen when asked


class Manifest(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON uploaded with a package. Unknown fields are refused so that a typo is not silently ignored."""

    version: Version
    pages: Annotated[list[PagePath], Meta(min_length=1, max_length=200)]  # the first is the entry page
    min_level: Literal[1, 2, 3] = 1  # real-name level a citizen needs to open the app
    permissions: dict[Scope, ScopeUse] = {}
    release_notes: Annotated[str, Meta(max_length=500)] = ""


class StartTrial(msgspec.Struct, forbid_unknown_fields=True):
    accounts: Annotated[list[UUID], Meta(min_length=1, max_length=50)]


class RejectVersion(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class GreyRelease(msgspec.Struct, forbid_unknown_fields=True):
    """Who gets the grey version: accounts whose bucket is below `percent`, the listed accounts, and
    citizens browsing from the listed regions. Changing it may only widen each of the three."""

    percent: Annotated[int, Meta(ge=0, le=100)]
    accounts: Annotated[list[UUID], Meta(max_length=1000)] = []
    regions: Annotated[list[RegionCode], Meta(max_length=100)] = []


class GreyView(msgspec.Struct):
    percent: int
    accounts: list[UUID]
    regions: list[str]


class VersionView(msgspec.Struct):
    id: UUID
    appid: str
    version: str
    state: VersionState
    manifest: dict[str, Any]
    package_sha256: str
    package_size: int
    trial_accounts: list[UUID]
    reject_reason: str | None
    grey: GreyView | None
    uploaded_by: UUID
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    reviewed_at: datetime | None
    reviewed_by: str | None
    released_at: datetime | None


class ReviewItem(msgspec.Struct):
    version_id: UUID
    appid: str
    app_name: str
    organisation_id: UUID
    organisation_name: str
    version: str
    package_sha256: str
    package_size: int
    manifest: dict[str, Any]
    submitted_at: datetime | None


class AuditEntry(msgspec.Struct):
    id: int
    action: str
    actor: str
    at: datetime
    organisation_id: UUID | None = None
    appid: str | None = None
    version_id: UUID | None = None
    from_state: str | None = None
    to_state: str | None = None
    detail: dict[str, Any] = {}


# --- catalog -----------------------------------------------------------------------------------------------


class OrganisationRef(msgspec.Struct):
    id: UUID
    name: str


class CatalogItem(msgspec.Struct):
    """One app as a citizen's view of the catalog shows it: the released version, or the grey one where the
    citizen is in the grey release."""

    appid: str
    name: str
    description: str
    category: str
    region_code: str
    organisation: OrganisationRef
    service_item_code: str | None
    icon_url: str | None
    version: str
    grey: bool
    min_level: int
    package_sha256: str
    package_size: int


class CatalogPage(msgspec.Struct):
    items: list[CatalogItem]
    total: int
    offset: int
    limit: int


class RecordRecent(msgspec.Struct, forbid_unknown_fields=True):
    appid: Annotated[str, Meta(max_length=32)]
