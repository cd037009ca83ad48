"""Tongban's real-name extensions to the SDK, in WeChat's style (access_token in the query, errcodes).

- POST /tongban/realname {openid, scope}: the citizen's name ("name"), masked ID number ("id_masked") or
  full ID number ("id_full"), each only while the citizen's consent for that scope holds (consent ledger:
  recipient "miniapp:<appid>", scope "real_name.<scope>"), checked at the call (50001 when missing or
  withdrawn). Decrypted through the vault as "miniapp:<appid>", so each call is in the PII access log.
- POST /tongban/realname/match {openid, name, id_number}: 可用不可见, usable but not visible. The answer is
  only {match: true|false}: the ID number is compared by blind index, the name decrypted inside the server
  only when the ID number matched. It needs the consent scope "real_name.match" and is rate-limited per
  citizen and per app (45011), so it cannot be used to guess an identity.

Citizens grant the scopes in the app (POST /v1/miniapps/{appid}/realname-consents, L2 and up).
"""

from __future__ import annotations

import time
from typing import Any, Literal
from uuid import UUID

import msgspec

from auth import consent, rights
from auth.consent import Consent
from core.db import transaction
from core.errors import RateLimited
from core.ratelimit import Limiter, Window
from core.stores import Stores
from miniapps import sdk
from miniapps.models import SdkApp
from miniapps.sdk import SdkError, Watermark

RealnameScope = Literal["name", "id_masked", "id_full", "match"]
# Consent-ledger scope of each.
SCOPES: dict[str, str] = {
    "name": "real_name.name",
    "id_masked": "real_name.id_masked",
    "id_full": "real_name.id_full",
    "match": "real_name.match",
}
# What each scope discloses of the account.
_FIELDS: dict[str, rights.DisclosedField] = {
    "name": "name",
    "id_masked": "id_number_masked",
    "id_full": "id_number",
}
MATCH_PER_CITIZEN_HOUR = 5
MATCH_PER_APP_MINUTE = 600
_MAX_INPUT = 64


class GrantRealname(msgspec.Struct, forbid_unknown_fields=True):
    scopes: list[RealnameScope]


class RealnameRequest(msgspec.Struct):
    openid: Any = None
    scope: Any = None


class RealnameInfo(msgspec.Struct, omit_defaults=True):
    watermark: Watermark
    name: str | None = None
    id_number_masked: str | None = None
    id_number: str | None = None


class RealnameAnswer(msgspec.Struct):
    errcode: int
    errmsg: str
    realname_info: RealnameInfo


class MatchRequest(msgspec.Struct):
    openid: Any = None
    name: Any = None
    id_number: Any = None


class MatchAnswer(msgspec.Struct):
    errcode: int
    errmsg: str
    match: bool


async def grant(
    stores: Stores, account_id: UUID, appid: str, scopes: list[RealnameScope], *, level: int
) -> Consent:
    """The citizen lets an app their catalog view shows have these parts of their verified identity."""
    item = await sdk.visible_app(stores, account_id, appid, level)
    return await consent.grant(
        stores,
        account_id,
        sdk.recipient(appid),
        [SCOPES[scope] for scope in dict.fromkeys(scopes)],
        f"实名信息：{item.name}",
    )


async def realname(stores: Stores, app: SdkApp, request: RealnameRequest) -> RealnameAnswer:
    scope = request.scope
    if scope not in ("name", "id_masked", "id_full"):
        raise SdkError(sdk.ARGUMENT_INVALID, "scope: name, id_masked or id_full")
    openid = request.openid if isinstance(request.openid, str) else None
    account_id = await sdk.account_of_openid(stores, app.appid, openid)
    vault = await stores.vault()
    field = _FIELDS[scope]
    async with transaction(stores.pool, stores.settings) as conn:
        if not await consent.has_consent(
            stores, account_id, sdk.recipient(app.appid), SCOPES[scope], conn=conn
        ):
            raise SdkError(sdk.USER_UNAUTHORIZED, f"(no consent for {scope})")
        value = await rights.disclose(
            conn, vault, account_id, field, actor=sdk.recipient(app.appid), reason=f"tongban.realname {scope}"
        )
    if value is None:
        raise SdkError(sdk.REALNAME_MISSING)
    info = RealnameInfo(watermark=Watermark(timestamp=int(time.time()), appid=app.appid))
    if scope == "name":
        info.name = value
    elif scope == "id_masked":
        info.id_number_masked = value
    else:
        info.id_number = value
    return RealnameAnswer(errcode=0, errmsg="ok", realname_info=info)


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_INPUT:
        raise SdkError(sdk.ARGUMENT_INVALID, f"{field}: 1 to {_MAX_INPUT} characters")
    return value


async def match(stores: Stores, app: SdkApp, request: MatchRequest) -> MatchAnswer:
    name, id_number = _text(request.name, "name"), _text(request.id_number, "id_number")
    openid = request.openid if isinstance(request.openid, str) else None
    account_id = await sdk.account_of_openid(stores, app.appid, openid)
    limiter = Limiter(stores.redis, stores.settings)
    try:
        await limiter.hit("sdk-match-app", app.appid, (Window("minute", MATCH_PER_APP_MINUTE, 60),))
        await limiter.hit(
            "sdk-match", f"{app.appid}:{account_id}", (Window("hour", MATCH_PER_CITIZEN_HOUR, 3600),)
        )
    except RateLimited:
        raise SdkError(sdk.MINUTE_QUOTA) from None
    vault = await stores.vault()
    async with transaction(stores.pool, stores.settings) as conn:
        if not await consent.has_consent(
            stores, account_id, sdk.recipient(app.appid), SCOPES["match"], conn=conn
        ):
            raise SdkError(sdk.USER_UNAUTHORIZED, "(no consent for match)")
        matched = await rights.identity_matches(
            conn,
            vault,
            account_id,
            name,
            id_number,
            actor=sdk.recipient(app.appid),
            reason="tongban.realname match",
        )
    if matched is None:
        raise SdkError(sdk.REALNAME_MISSING)
    return MatchAnswer(errcode=0, errmsg="ok", match=matched)
