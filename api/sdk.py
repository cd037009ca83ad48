"""The WeChat-compatible SDK endpoints, for mini-app servers: the paths, parameters and JSON of the WeChat
mini-program server API, so existing server code works by changing the base URL.

Every error on this router is HTTP 200 with WeChat's {"errcode": n, "errmsg": "..., rid: <request id>"}.
Who may call: /cgi-bin/token, /cgi-bin/stable_token and /sns/jscode2session authenticate by appid and
AppSecret in the request (so they are on api/public.py's list); every other route needs the app's
access_token (the `app_token` guard).
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromQuery, JSONBody

from api.deps import StoresDep
from api.problems import EXCEPTION_HANDLERS
from core import db
from core import redis as redis_mod
from core.errors import InvalidInput, ProviderUnavailable, RateLimited, StoreUnavailable, TongbanError
from core.ids import new_request_id
from core.stores import Stores
from miniapps import messages, realname, sdk
from miniapps.models import SdkApp
from miniapps.sdk import AccessToken, Code2Session, PhoneInfo, ResetSession, SdkError

log = structlog.get_logger(__name__)
SDK_APP = "sdk_app"


class WxError(msgspec.Struct):
    errcode: int
    errmsg: str


class PhoneAnswer(msgspec.Struct):
    errcode: int
    errmsg: str
    phone_info: PhoneInfo


class StableTokenRequest(msgspec.Struct):
    grant_type: Any = None
    appid: Any = None
    secret: Any = None
    force_refresh: Any = False


class PhoneRequest(msgspec.Struct):
    code: Any = None


OK = WxError(errcode=0, errmsg="ok")


def client_ip(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else "unknown"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


async def app_token(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """The app's access_token (query parameter), live and issued under its current AppSecret, from an
    allowed address; the app is put on the connection for the handler."""
    stores: Stores = connection.app.state.stores
    token = connection.query_params.get("access_token")
    connection.scope["state"][SDK_APP] = await sdk.app_for_token(stores, token, client_ip(connection))


def app_of(request: Request[Any, Any, Any]) -> SdkApp:
    app: SdkApp = request.scope["state"][SDK_APP]
    return app


def wechat_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Every error of this router as WeChat answers it: HTTP 200, errcode and errmsg, never a trace."""
    if isinstance(exc, SdkError):
        errcode, errmsg = exc.errcode, exc.errmsg
    elif isinstance(exc, RateLimited):
        errcode, errmsg = sdk.MINUTE_QUOTA, sdk.ERRMSG[sdk.MINUTE_QUOTA]
    elif isinstance(exc, ValidationException | HTTPException) and exc.status_code == 400:
        errcode, errmsg = sdk.DATA_FORMAT, sdk.ERRMSG[sdk.DATA_FORMAT]
    elif isinstance(exc, InvalidInput):
        errcode, errmsg = sdk.INVALID_ARGS, f"{sdk.ERRMSG[sdk.INVALID_ARGS]} {exc.detail}"
    elif isinstance(
        exc, (StoreUnavailable, ProviderUnavailable, *db.OUTAGE_ERRORS, *redis_mod.OUTAGE_ERRORS)
    ):
        log.warning("sdk.store_unavailable", path=request.url.path, exc_type=type(exc).__name__)
        errcode, errmsg = sdk.SYSTEM_ERROR, sdk.ERRMSG[sdk.SYSTEM_ERROR]
    else:
        if not isinstance(exc, TongbanError | HTTPException):
            log.error("sdk.failed", path=request.url.path, exc_type=type(exc).__name__)
        errcode, errmsg = sdk.SYSTEM_ERROR, sdk.ERRMSG[sdk.SYSTEM_ERROR]
    state = request.scope.setdefault("state", {})
    request_id = state.get("request_id") or new_request_id()
    if errcode != sdk.SYSTEM_ERROR:
        log.info("sdk.refused", path=request.url.path, errcode=errcode)
    body = WxError(errcode=errcode, errmsg=f"{errmsg}, rid: {request_id}")
    return Response(msgspec.json.encode(body), status_code=200, media_type="application/json")


# --- access tokens ------------------------------------------------------------------------------------------


@get("/cgi-bin/token", summary="getAccessToken: the app's access token")
async def get_access_token(
    request: Request[Any, Any, Any],
    stores: StoresDep,
    grant_type: FromQuery[str | None] = None,
    appid: FromQuery[str | None] = None,
    secret: FromQuery[str | None] = None,
) -> AccessToken:
    """`grant_type=client_credential&appid=&secret=` -> `{access_token, expires_in}`. The same token while
    more than 5 minutes are left; 40013 unknown appid, 40164 address not in the allowlist, 40125 wrong
    secret, 48004 frozen app."""
    if grant_type != "client_credential":
        raise SdkError(sdk.INVALID_GRANT_TYPE)
    app = await sdk.authenticate_app(stores, appid, secret, client_ip(request))
    return await sdk.access_token(stores, app)


@post("/cgi-bin/stable_token", status_code=200, summary="getStableAccessToken: the app's access token")
async def get_stable_token(
    request: Request[Any, Any, Any], stores: StoresDep, data: JSONBody[StableTokenRequest]
) -> AccessToken:
    """`{grant_type, appid, secret, force_refresh}`. force_refresh ends the current token at once (20 a
    day, 45009; not again within 30 s)."""
    if data.grant_type != "client_credential":
        raise SdkError(sdk.INVALID_GRANT_TYPE)
    if not isinstance(data.force_refresh, bool):
        raise SdkError(sdk.DATA_FORMAT, "(force_refresh: true or false)")
    app = await sdk.authenticate_app(stores, _text(data.appid), _text(data.secret), client_ip(request))
    return await sdk.access_token(stores, app, force_refresh=data.force_refresh)


# --- login --------------------------------------------------------------------------------------------------


@get("/sns/jscode2session", summary="code2Session: a login code for openid, unionid and session_key")
async def jscode2session(
    request: Request[Any, Any, Any],
    appid: FromQuery[str | None] = None,
    secret: FromQuery[str | None] = None,
    js_code: FromQuery[str | None] = None,
    grant_type: FromQuery[str | None] = None,
) -> Code2Session:
    """`appid=&secret=&js_code=&grant_type=authorization_code` -> `{openid, session_key, unionid}`. The
    code is single use: 40029 unknown or expired, 40163 used already."""
    if grant_type != "authorization_code":
        raise SdkError(sdk.INVALID_GRANT_TYPE)
    # The hot path: the stores straight from the app state, not through dependency injection.
    stores: Stores = request.app.state.stores
    app = await sdk.authenticate_app(stores, appid, secret, client_ip(request))
    return await sdk.code_to_session(stores, app, js_code)


@get("/wxa/checksession", guards=[app_token], summary="checkSessionKey")
async def check_session(
    request: Request[Any, Any, Any],
    stores: StoresDep,
    openid: FromQuery[str | None] = None,
    signature: FromQuery[str | None] = None,
    sig_method: FromQuery[str | None] = None,
) -> WxError:
    """`signature` = HMAC-SHA256 keyed with the session_key over "" (hex), `sig_method=hmac_sha256`;
    87009 when it is not the current session key's."""
    await sdk.check_session(stores, app_of(request), openid, signature, sig_method)
    return OK


@get("/wxa/resetusersessionkey", guards=[app_token], summary="ResetUserSessionKey")
async def reset_session_key(
    request: Request[Any, Any, Any],
    stores: StoresDep,
    openid: FromQuery[str | None] = None,
    signature: FromQuery[str | None] = None,
    sig_method: FromQuery[str | None] = None,
) -> ResetSession:
    """A new session_key (the old one's expiry kept), signed like checksession with the current one."""
    return await sdk.reset_session_key(stores, app_of(request), openid, signature, sig_method)


# --- phone --------------------------------------------------------------------------------------------------


@post(
    "/wxa/business/getuserphonenumber",
    guards=[app_token],
    status_code=200,
    summary="getPhoneNumber: a phone code for the number",
)
async def get_phone_number(
    request: Request[Any, Any, Any], stores: StoresDep, data: JSONBody[PhoneRequest]
) -> PhoneAnswer:
    """`{code}` (single use) -> `{errcode: 0, errmsg: "ok", phone_info: {phoneNumber, purePhoneNumber,
    countryCode, watermark: {timestamp, appid}}}`; 50001 when the citizen withdrew the consent."""
    code = _text(data.code)
    info = await sdk.phone_number(stores, app_of(request), code)
    return PhoneAnswer(errcode=0, errmsg="ok", phone_info=info)


# --- subscribe messages -------------------------------------------------------------------------------------


@post(
    "/cgi-bin/message/subscribe/send",
    guards=[app_token],
    status_code=200,
    summary="subscribeMessage.send",
)
async def send_subscribe_message(
    request: Request[Any, Any, Any], stores: StoresDep, data: JSONBody[messages.SendRequest]
) -> WxError:
    """`{touser, template_id, page, data: {key: {value}}, miniprogram_state, lang}`: 43101 unless the
    citizen accepted the template (each acceptance allows one message), 40003 not an openid of this app,
    40037 not a template of this app, 47003 a bad value."""
    await messages.send(stores, app_of(request).appid, data)
    return OK


# --- Tongban's real-name extensions -------------------------------------------------------------------------


@post("/tongban/realname", guards=[app_token], status_code=200, summary="The citizen's name or ID number")
async def get_realname(
    request: Request[Any, Any, Any], stores: StoresDep, data: JSONBody[realname.RealnameRequest]
) -> realname.RealnameAnswer:
    """`{openid, scope: "name" | "id_masked" | "id_full"}`, with the citizen's consent for that scope
    (50001 otherwise) -> `{errcode: 0, errmsg: "ok", realname_info: {name | id_number_masked | id_number,
    watermark}}`."""
    return await realname.realname(stores, app_of(request), data)


@post("/tongban/realname/match", guards=[app_token], status_code=200, summary="可用不可见: identity match")
async def match_realname(
    request: Request[Any, Any, Any], stores: StoresDep, data: JSONBody[realname.MatchRequest]
) -> realname.MatchAnswer:
    """`{openid, name, id_number}` -> `{errcode: 0, errmsg: "ok", match: true | false}` and nothing else;
    consent scope "match", rate-limited (45011)."""
    return await realname.match(stores, app_of(request), data)


router = Router(
    path="/",
    route_handlers=[
        get_access_token,
        get_stable_token,
        jscode2session,
        check_session,
        reset_session_key,
        get_phone_number,
        send_subscribe_message,
        get_realname,
        match_realname,
    ],
    # Litestar picks the most specific handler across layers: take over every class the app maps too.
    exception_handlers=dict.fromkeys((*EXCEPTION_HANDLERS, Exception, SdkError), wechat_error),
    tags=["mini-app SDK (WeChat-compatible)"],
)
