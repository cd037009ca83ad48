"""The /v1 side of the mini-app SDK: what the citizen's app asks for on the citizen's behalf (login and phone
codes, real-name consents, message subscriptions), and the subscribe-message templates developers manage.
The WeChat-compatible endpoints the mini-app servers call are in api/sdk.py."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api.deps import StoresDep
from api.guards import citizen, citizen_level, claims_of
from auth.consent import Consent
from miniapps import messages, realname, sdk
from miniapps.messages import CreateTemplate, Subscribe, SubscriptionView, TemplateView
from miniapps.models import Actor
from miniapps.realname import GrantRealname
from miniapps.sdk import IssuedCode


@post(
    "/miniapps/{appid:str}/login-code",
    guards=[citizen],
    status_code=HTTP_201_CREATED,
    summary="A login code for a mini-app (what wx.login gives)",
)
async def login_code(request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep) -> IssuedCode:
    """`{code, expires_in}`: single use, 5 minutes, for an app the caller's catalog view shows (404
    `app_not_found` otherwise; 403 `insufficient_level` below the app's real-name level). The mini-app
    trades it on its server with `GET /sns/jscode2session`."""
    claims = claims_of(request)
    return await sdk.issue_login_code(stores, claims.account_id, appid, level=claims.level)


@post(
    "/miniapps/{appid:str}/phone-code",
    guards=[citizen],
    status_code=HTTP_201_CREATED,
    summary="Let a mini-app have the phone number: consent and a one-time phone code",
)
async def phone_code(request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep) -> IssuedCode:
    """Records the consent (recipient `miniapp:<appid>`, scope `phone`; see `GET /v1/me/consents`, withdraw
    with `DELETE /v1/me/consents/{id}`) and returns `{code, expires_in, consent_id}` for the mini-app's
    `POST /wxa/business/getuserphonenumber`."""
    claims = claims_of(request)
    return await sdk.issue_phone_code(stores, claims.account_id, appid, level=claims.level)


@post(
    "/miniapps/{appid:str}/realname-consents",
    guards=[citizen_level(2)],
    status_code=HTTP_201_CREATED,
    summary="Let a mini-app have parts of the verified identity",
)
async def realname_consent(
    request: Request[Any, Any, Any], appid: FromPath[str], data: JSONBody[GrantRealname], stores: StoresDep
) -> Consent:
    """`{"scopes": ["name", "id_masked", "id_full", "match"]}` (any of them): the consent the mini-app's
    `POST /tongban/realname` and `/tongban/realname/match` need."""
    claims = claims_of(request)
    return await realname.grant(stores, claims.account_id, appid, data.scopes, level=claims.level)


@post(
    "/miniapps/{appid:str}/subscriptions",
    guards=[citizen],
    status_code=200,
    summary="Accept subscribe messages (each acceptance allows one message)",
)
async def subscribe(
    request: Request[Any, Any, Any], appid: FromPath[str], data: JSONBody[Subscribe], stores: StoresDep
) -> list[SubscriptionView]:
    """`{"template_ids": [...]}` (1-3 of the app's templates, 422 `invalid_template` naming any other):
    each is accepted once more; the answer lists the app's pending acceptances."""
    claims = claims_of(request)
    return await messages.subscribe(stores, claims.account_id, appid, data.template_ids, level=claims.level)


@get("/miniapps/{appid:str}/subscriptions", guards=[citizen], summary="The caller's pending acceptances")
async def my_subscriptions(
    request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep
) -> list[SubscriptionView]:
    return await messages.my_subscriptions(stores, claims_of(request).account_id, appid)


@post(
    "/miniapps/{appid:str}/templates",
    guards=[citizen_level(2)],
    status_code=HTTP_201_CREATED,
    summary="Create a subscribe-message template (admins and developers; platform admins)",
)
async def create_template(
    request: Request[Any, Any, Any], appid: FromPath[str], data: JSONBody[CreateTemplate], stores: StoresDep
) -> TemplateView:
    """`{"title": "办理进度通知", "keywords": [{"key": "thing1", "label": "办理事项"}, ...]}`. A key is a kind
    (thing, number, letter, symbol, character_string, time, date, amount, phone_number, car_number, name,
    phrase) and a number; the kind bounds the values' length. At most 50 templates per app."""
    return await messages.create_template(
        stores, Actor.of_account(claims_of(request).account_id), appid, data
    )


@get("/miniapps/{appid:str}/templates", guards=[citizen_level(2)], summary="The app's templates")
async def list_templates(
    request: Request[Any, Any, Any], appid: FromPath[str], stores: StoresDep
) -> list[TemplateView]:
    return await messages.list_templates(stores, claims_of(request).account_id, appid)


@delete(
    "/miniapps/{appid:str}/templates/{template_id:str}",
    guards=[citizen_level(2)],
    status_code=204,
    summary="Delete a template (its pending acceptances go with it)",
)
async def delete_template(
    request: Request[Any, Any, Any], appid: FromPath[str], template_id: FromPath[str], stores: StoresDep
) -> None:
    await messages.delete_template(
        stores, Actor.of_account(claims_of(request).account_id), appid, template_id
    )


router = Router(
    path="/v1",
    route_handlers=[
        login_code,
        phone_code,
        realname_consent,
        subscribe,
        my_subscriptions,
        create_template,
        list_templates,
        delete_template,
    ],
    tags=["mini-app SDK"],
)
