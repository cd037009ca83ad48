"""The WeChat-compatible SDK for mini-app servers: app access tokens, login codes and sessions, phone numbers.

Wire shapes and error codes follow the WeChat mini-program server API (api/sdk.py speaks it); this module
holds the rules. Redis keeps what may be lost (a lost token or session means getting a new one, as in
WeChat); PostgreSQL keeps the openids and their salts.

- App access tokens (`GET /cgi-bin/token`, `POST /cgi-bin/stable_token`): one current token per app for
  TOKEN_SECONDS. Asking again returns it while more than TOKEN_RENEW_SECONDS are left; after that the next
  caller gets a new one while the old one stays valid until its own expiry, so both work for those last
  minutes. One Lua script decides, so racing API processes hand out one token. force_refresh ends the old
  token at once, at most FORCE_REFRESH_PER_DAY times a day (45009) and not again within
  FORCE_REFRESH_GAP_SECONDS (then the current token comes back, as WeChat does). Each token remembers the
  app's secret_reset_at when it was issued: after an AppSecret reset, older tokens are refused.
- Login: the citizen's app asks for a login code for (citizen, app) (only for an app their catalog view
  shows), valid LOGIN_CODE_SECONDS, single use. jscode2session trades it, with the AppSecret, for the openid
  (HMAC-SHA256 of the account id under the app's salt: stable, different per app, not reversible), the
  unionid (the same under the organisation's salt) and a new session_key (16 random bytes, base64) kept
  SESSION_KEY_SECONDS per (app, openid). A reused code is 40163 for USED_CODE_SECONDS, then just invalid
  (40029), as is an unknown, expired or other app's code.
- Phone: the citizen consents in the app (consent ledger: recipient "miniapp:<appid>", scope "phone") and
  gets a one-time phone code; getuserphonenumber trades it for the number, decrypted through the vault as
  "miniapp:<appid>". The consent is checked at that moment: revoked, the call fails (50001).

App lookups (registry.sdk_app) are cached per process for SDK_APP_CACHE_SECONDS: a secret reset, freeze or
allowlist change reaches every process within that. The hot calls, trading a code and checking an access
token, use the process's pipelined Redis connection (core.pipelined_redis); single use still rests on the one
Lua script, so it holds across processes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
import weakref
from datetime import UTC, datetime, timedelta
from uuid import UUID

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.commands.core import AsyncScript

from auth import consent, rights
from core import redis as redis_mod
from core.db import connection, transaction
from core.errors import Forbidden, RateLimited, StoreUnavailable
from core.pipelined_redis import LuaScript, pipelined
from core.ratelimit import Limiter, Window
from core.stores import Stores
from miniapps import analytics, catalog, opendata, registry, repository
from miniapps.models import CatalogItem, SdkApp

log = structlog.get_logger(__name__)

TOKEN_SECONDS = 7200
TOKEN_RENEW_SECONDS = 300
FORCE_REFRESH_PER_DAY = 20
FORCE_REFRESH_GAP_SECONDS = 30
LOGIN_CODE_SECONDS = 300
PHONE_CODE_SECONDS = 300
USED_CODE_SECONDS = 600
SESSION_KEY_SECONDS = 3 * 86400
SDK_APP_CACHE_SECONDS = 2.0
PHONE_SCOPE = "phone"
APPID = re.compile(r"^tb[0-9a-f]{16}$")
_MAX_CODE = 128
_NAMESPACE = "sdk"


# --- errors: WeChat's errcodes ------------------------------------------------------------------------------

SYSTEM_ERROR = -1
INVALID_CREDENTIAL = 40001
INVALID_GRANT_TYPE = 40002
INVALID_OPENID = 40003
INVALID_APPID = 40013
INVALID_CODE = 40029
INVALID_TEMPLATE = 40037
INVALID_ARGS = 40097
INVALID_APPSECRET = 40125
CODE_USED = 40163
INVALID_IP = 40164
ACCESS_TOKEN_MISSING = 41001
APPID_MISSING = 41002
APPSECRET_MISSING = 41004
CODE_MISSING = 41008
INVALID_PAGE = 41030
USER_REFUSED = 43101
DAILY_QUOTA = 45009
MINUTE_QUOTA = 45011
DATA_FORMAT = 47001
ARGUMENT_INVALID = 47003
API_FORBIDDEN = 48004
USER_UNAUTHORIZED = 50001
USER_LIMITED = 50002
CLIENT_IP_NOT_REGISTERED = 61004
INVALID_SIG_METHOD = 87008
INVALID_SIGNATURE = 87009
# Tongban's own (the real-name extensions): the citizen has not verified a real name.
REALNAME_MISSING = 94001

ERRMSG: dict[int, str] = {
    SYSTEM_ERROR: "system error",
    INVALID_CREDENTIAL: "invalid credential, access_token is invalid or not latest",
    INVALID_GRANT_TYPE: "invalid grant_type",
    INVALID_OPENID: "invalid openid",
    INVALID_APPID: "invalid appid",
    INVALID_CODE: "invalid code",
    INVALID_TEMPLATE: "invalid template_id",
    INVALID_ARGS: "invalid args",
    INVALID_APPSECRET: "invalid appsecret",
    CODE_USED: "code been used",
    INVALID_IP: "invalid ip, not in whitelist",
    ACCESS_TOKEN_MISSING: "access_token missing",
    APPID_MISSING: "appid missing",
    APPSECRET_MISSING: "appsecret missing",
    CODE_MISSING: "missing code",
    INVALID_PAGE: "invalid page",
    USER_REFUSED: "user refuse to accept the msg",
    DAILY_QUOTA: "reach max api daily quota limit",
    MINUTE_QUOTA: "api minute-quota reach limit must slower retry next minute",
    DATA_FORMAT: "data format error",
    ARGUMENT_INVALID: "argument invalid!",
    API_FORBIDDEN: "api forbidden for irregularities",
    USER_UNAUTHORIZED: "user unauthorized",
    USER_LIMITED: "user limited",
    CLIENT_IP_NOT_REGISTERED: "access clientip is not registered, not in ip-white-list",
    INVALID_SIG_METHOD: "invalid sig_method",
    INVALID_SIGNATURE: "invalid signature",
    REALNAME_MISSING: "user has no verified real name",
}


class SdkError(Exception):
    """An error of the WeChat-compatible paths: answered as HTTP 200 {errcode, errmsg} (api/sdk.py)."""

    def __init__(self, errcode: int, detail: str | None = None) -> None:
        errmsg = ERRMSG[errcode] + (f" {detail}" if detail else "")
        super().__init__(errmsg)
        self.errcode = errcode
        self.errmsg = errmsg


# --- what goes out ------------------------------------------------------------------------------------------


class AccessToken(msgspec.Struct):
    access_token: str
    expires_in: int


class Code2Session(msgspec.Struct):
    openid: str
    session_key: str
    unionid: str


class ResetSession(msgspec.Struct):
    errcode: int
    errmsg: str
    openid: str
    session_key: str


class Watermark(msgspec.Struct):
    timestamp: int
    appid: str


class PhoneInfo(msgspec.Struct):
    # WeChat's field names, camelCase as on the wire.
    phoneNumber: str
    purePhoneNumber: str
    countryCode: str
    watermark: Watermark


class IssuedCode(msgspec.Struct, omit_defaults=True):
    """A one-time code for the citizen's app to hand to the mini-app (login or phone)."""

    code: str
    expires_in: int
    consent_id: UUID | None = None


# --- small helpers -------------------------------------------------------------------------------------------


def _key(appid: str, *rest: str) -> str:
    return redis_mod.key(_NAMESPACE, appid, *rest)


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()[:32]


def new_code() -> str:
    """32 URL-safe characters, like a wx.login code."""
    return secrets.token_urlsafe(24)


def recipient(appid: str) -> str:
    """The app as the consent ledger names it."""
    return f"miniapp:{appid}"


_EPOCH_START = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch(app: SdkApp) -> int:
    """The app's secret_reset_at in microseconds (exact): the secret generation a token was issued under.
    Compared for equality, never with a clock, so clock skew between servers cannot matter."""
    return (app.secret_reset_at - _EPOCH_START) // timedelta(microseconds=1)


_SCRIPTS: weakref.WeakKeyDictionary[aioredis.Redis, dict[str, AsyncScript]] = weakref.WeakKeyDictionary()


def _script(redis: aioredis.Redis, source: str) -> AsyncScript:
    scripts = _SCRIPTS.setdefault(redis, {})
    script = scripts.get(source)
    if script is None:
        script = scripts[source] = redis.register_script(source)
    return script


# --- the app, cached per process ----------------------------------------------------------------------------


class _AppCache:
    def __init__(self) -> None:
        self._items: dict[str, tuple[float, SdkApp | None]] = {}

    def get(self, appid: str) -> tuple[bool, SdkApp | None]:
        item = self._items.get(appid)
        if item is None or item[0] < time.monotonic():
            return False, None
        return True, item[1]

    def put(self, appid: str, app: SdkApp | None) -> None:
        if len(self._items) > 50_000:
            self._items.clear()
        self._items[appid] = (time.monotonic() + SDK_APP_CACHE_SECONDS, app)

    def clear(self) -> None:
        self._items.clear()


APP_CACHE = _AppCache()


async def sdk_app(stores: Stores, appid: str) -> SdkApp | None:
    """registry.sdk_app, cached SDK_APP_CACHE_SECONDS (unknown appids too, so guessing costs no queries)."""
    if not APPID.match(appid):
        return None
    found, app = APP_CACHE.get(appid)
    if not found:
        app = await registry.sdk_app(stores, appid)
        APP_CACHE.put(appid, app)
    return app


# AppSecrets this process has seen match, with the stored hash they matched: the HMAC costs about 8 µs, a
# fifth of jscode2session's own work. A reset stores a new hash, so the next call checks again.
_MATCHED_SECRETS: set[tuple[str, str, bytes]] = set()


def _secret_matches(app: SdkApp, secret: str) -> bool:
    seen = (app.appid, secret, app.secret_hash)
    if seen in _MATCHED_SECRETS:
        return True
    if not registry.secret_matches(app, secret):
        return False
    if len(_MATCHED_SECRETS) > 10_000:
        _MATCHED_SECRETS.clear()
    _MATCHED_SECRETS.add(seen)
    return True


async def authenticate_app(stores: Stores, appid: str | None, secret: str | None, client_ip: str) -> SdkApp:
    """The app of an AppSecret call: known appid, caller in the IP allowlist, right secret, not frozen.
    The address is checked before the secret, so nobody outside the allowlist can try secrets."""
    if not appid:
        raise SdkError(APPID_MISSING)
    if not secret:
        raise SdkError(APPSECRET_MISSING)
    app = await sdk_app(stores, appid)
    if app is None:
        raise SdkError(INVALID_APPID)
    if not registry.ip_allowed(app, client_ip):
        raise SdkError(INVALID_IP, f"(ip {client_ip})")
    if not _secret_matches(app, secret):
        raise SdkError(INVALID_APPSECRET)
    if app.status != "active":
        raise SdkError(API_FORBIDDEN, "(the mini-app is frozen)")
    return app


# --- access tokens ------------------------------------------------------------------------------------------

# KEYS: the app's current token (hash), the candidate's record, the force-refresh gap marker.
# ARGV: candidate token, candidate hash, now ms, ttl ms, renew ms, epoch, force (0/1), token record prefix,
# force gap ms. Returns {token, expires ms}. The old token's record is named from the stored hash: it has the
# app's hash tag like the declared keys, so the script stays on one Redis Cluster node.
_TOKEN_SCRIPT = """
local now = tonumber(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'token', 'hash', 'epoch', 'expires')
local valid = cur[1] and cur[3] == ARGV[6] and tonumber(cur[4]) > now
if ARGV[7] == '1' then
  if valid and redis.call('EXISTS', KEYS[3]) == 1 then
    return {cur[1], cur[4]}
  end
elseif valid and tonumber(cur[4]) - now > tonumber(ARGV[5]) then
  return {cur[1], cur[4]}
end
if cur[2] and (ARGV[7] == '1' or not valid) then
  redis.call('DEL', ARGV[8] .. cur[2])
end
local expires = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'hash', ARGV[2], 'epoch', ARGV[6], 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[4])
if ARGV[7] == '1' then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[9])
end
return {ARGV[1], tostring(expires)}
"""  # noqa: S105 (a Lua script, not a password)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


async def access_token(
    stores: Stores, app: SdkApp, *, force_refresh: bool = False, now_ms: int | None = None
) -> AccessToken:
    """The app's current access token (see the module notes); now_ms only for tests."""
    if force_refresh:
        try:
            await Limiter(stores.redis, stores.settings).hit(
                "sdk-force-refresh", app.appid, (Window("day", FORCE_REFRESH_PER_DAY, 86400),)
            )
        except RateLimited:
            raise SdkError(DAILY_QUOTA, "(force_refresh: 20 a day)") from None
    now = int(time.time() * 1000) if now_ms is None else now_ms
    candidate = f"{app.appid}.{secrets.token_urlsafe(48)}"
    candidate_hash = _token_hash(candidate)
    async with redis_mod.guarded(stores.settings):
        token, expires = await _script(stores.redis, _TOKEN_SCRIPT)(
            keys=[
                _key(app.appid, "token"),
                _key(app.appid, "tok", candidate_hash),
                _key(app.appid, "force-gap"),
            ],
            args=[
                candidate,
                candidate_hash,
                now,
                TOKEN_SECONDS * 1000,
                TOKEN_RENEW_SECONDS * 1000,
                _epoch(app),
                1 if force_refresh else 0,
                _key(app.appid, "tok") + ":",
                FORCE_REFRESH_GAP_SECONDS * 1000,
            ],
        )
    issued = token.decode() if isinstance(token, bytes) else str(token)
    if issued == candidate:
        log.info("sdk.token_issued", appid=app.appid, forced=force_refresh)
    return AccessToken(access_token=issued, expires_in=max(1, (int(expires) - now) // 1000))


async def app_for_token(stores: Stores, token: str | None, client_ip: str) -> SdkApp:
    """The app an access token belongs to: live, issued under the current AppSecret, the caller in the
    allowlist (61004) and the app not frozen (48004)."""
    if not token:
        raise SdkError(ACCESS_TOKEN_MISSING)
    appid, dot, rest = token.partition(".")
    if not dot or not rest or len(token) > 512 or not APPID.match(appid):
        raise SdkError(INVALID_CREDENTIAL)
    async with redis_mod.guarded(stores.settings):  # every SDK call: the pipelined client
        epoch = await pipelined(stores.redis).execute("GET", _key(appid, "tok", _token_hash(token)))
    if epoch is None:
        raise SdkError(INVALID_CREDENTIAL)
    app = await sdk_app(stores, appid)
    if app is None or int(epoch) != _epoch(app):
        raise SdkError(INVALID_CREDENTIAL)
    if not registry.ip_allowed(app, client_ip):
        raise SdkError(CLIENT_IP_NOT_REGISTERED, f"(ip {client_ip})")
    if app.status != "active":
        raise SdkError(API_FORBIDDEN, "(the mini-app is frozen)")
    return app


# --- openids and unionids -----------------------------------------------------------------------------------

# Salts never change once made, so every process keeps the ones it has read.
_SALTS: dict[str, bytes] = {}
# (appid, account) pairs whose openid row this process knows to be stored.
_STORED: set[tuple[str, UUID]] = set()


def derive_id(prefix: str, salt: bytes, account_id: UUID) -> str:
    """prefix + 27 URL-safe characters of HMAC-SHA256(salt, account id): 28 characters like WeChat's."""
    digest = hmac.new(salt, account_id.bytes, hashlib.sha256).digest()
    return prefix + base64.urlsafe_b64encode(digest).decode()[:27]


async def _salt(stores: Stores, owner: str, appid: str | None, organisation_id: UUID | None) -> bytes:
    salt = _SALTS.get(owner)
    if salt is None:
        async with transaction(stores.pool, stores.settings) as conn:
            if appid is not None:
                salt = await repository.openid_salt(conn, appid, os.urandom(32))
            else:
                assert organisation_id is not None
                salt = await repository.unionid_salt(conn, organisation_id, os.urandom(32))
        if len(_SALTS) > 100_000:
            _SALTS.clear()
        _SALTS[owner] = salt
    return salt


async def identities(stores: Stores, appid: str, organisation_id: UUID, account_id: UUID) -> tuple[str, str]:
    """(openid, unionid) of the account for this app; the openid is stored for reverse lookups."""
    openid = derive_id("o", await _salt(stores, f"app:{appid}", appid, None), account_id)
    unionid = derive_id("u", await _salt(stores, f"org:{organisation_id}", None, organisation_id), account_id)
    if (appid, account_id) not in _STORED:
        async with transaction(stores.pool, stores.settings) as conn:
            await repository.put_openid(conn, appid, openid, account_id)
        if len(_STORED) > 200_000:
            _STORED.clear()
        _STORED.add((appid, account_id))
    return openid, unionid


async def account_of_openid(stores: Stores, appid: str, openid: str | None) -> UUID:
    """The account behind an openid of this app; 40003 for anything else (another app's openid too)."""
    if not openid or len(openid) > 64:
        raise SdkError(INVALID_OPENID)
    async with connection(stores.pool, stores.settings) as conn:
        account_id = await repository.account_of_openid(conn, appid, openid)
    if account_id is None:
        raise SdkError(INVALID_OPENID)
    return account_id


# --- the citizen's side: which apps they can reach ----------------------------------------------------------


async def visible_app(stores: Stores, account_id: UUID, appid: str, level: int) -> CatalogItem:
    """The app as the citizen's catalog view shows it (404 app_not_found otherwise, grey releases
    included), and their real-name level is enough to open it (403 insufficient_level)."""
    item = msgspec.json.decode(
        await catalog.catalog_item(stores, appid, viewer=account_id, region=None), type=CatalogItem
    )
    if level < item.min_level:
        raise Forbidden(f"this mini-app needs real-name level L{item.min_level}", code="insufficient_level")
    return item


# --- one-time codes -----------------------------------------------------------------------------------------

# KEYS: the code, its used marker. ARGV: used marker seconds, session key seconds, new session key, session
# key prefix. Returns the code's value and, for a login code, stores the session key under its openid
# (same hash tag as the declared keys). 0: used already; nil: unknown or expired.
_CONSUME_SCRIPT = LuaScript("""
local value = redis.call('GETDEL', KEYS[1])
if not value then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
  end
  return false
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
if ARGV[4] ~= '' then
  local openid = string.match(value, '^[^|]*|([^|]*)|')
  redis.call('SET', ARGV[4] .. openid, ARGV[3], 'EX', ARGV[2])
end
return value
""")


async def _consume(
    stores: Stores,
    appid: str,
    kind: str,
    code: str | None,
    *,
    session_key: str = "",
    session_prefix: str = "",
) -> str:
    if not code:
        raise SdkError(CODE_MISSING)
    if len(code) > _MAX_CODE:
        raise SdkError(INVALID_CODE)
    code_hash = _hash(code)
    # The pipelined client: jscode2session is a hot path, and this one script call was most of its cost.
    # Not redis_mod.guarded either: the same, minus a generator.
    try:
        value = await pipelined(stores.redis).run_script(
            _CONSUME_SCRIPT,
            (_key(appid, kind, code_hash), _key(appid, f"{kind}-used", code_hash)),
            (USED_CODE_SECONDS, SESSION_KEY_SECONDS, session_key, session_prefix),
        )
    except redis_mod.OUTAGE_ERRORS as exc:
        raise StoreUnavailable("Redis", stores.settings.retry_after_seconds) from exc
    if value is None:
        raise SdkError(INVALID_CODE)
    if value == 0:
        raise SdkError(CODE_USED)
    return value.decode() if isinstance(value, bytes) else str(value)


async def _store_codes(
    stores: Stores, appid: str, kind: str, value: str, count: int, seconds: int
) -> list[str]:
    codes = [new_code() for _ in range(count)]
    async with redis_mod.guarded(stores.settings):
        for start in range(0, count, 10_000):
            async with stores.redis.pipeline(transaction=False) as pipe:
                for code in codes[start : start + 10_000]:
                    pipe.set(_key(appid, kind, _hash(code)), value, ex=seconds)
                await pipe.execute()
    return codes


async def issue_login_code(stores: Stores, account_id: UUID, appid: str, *, level: int) -> IssuedCode:
    """A login code for the citizen and an app their catalog view shows; counts a visit of the app."""
    item = await visible_app(stores, account_id, appid, level)
    [code] = await issue_login_codes_unchecked(stores, account_id, appid, item.organisation.id, 1)
    await analytics.record_visit(stores.redis, appid, account_id)
    return IssuedCode(code=code, expires_in=LOGIN_CODE_SECONDS)


async def issue_login_codes_unchecked(
    stores: Stores, account_id: UUID, appid: str, organisation_id: UUID, count: int
) -> list[str]:
    """`count` login codes without the catalog check: for issue_login_code, and for benchmarks."""
    openid, unionid = await identities(stores, appid, organisation_id, account_id)
    return await _store_codes(
        stores, appid, "code", f"{account_id}|{openid}|{unionid}", count, LOGIN_CODE_SECONDS
    )


def _session_key_key(appid: str, openid: str) -> str:
    return _key(appid, "sk", openid)


async def code_to_session(stores: Stores, app: SdkApp, js_code: str | None) -> Code2Session:
    """jscode2session: the login code (single use) for the openid, unionid and a new session_key."""
    session_key = opendata.new_session_key()
    value = await _consume(
        stores,
        app.appid,
        "code",
        js_code,
        session_key=session_key,
        session_prefix=_key(app.appid, "sk") + ":",
    )
    _account, openid, unionid = value.split("|")
    return Code2Session(openid=openid, session_key=session_key, unionid=unionid)


def _check_sig_method(sig_method: str | None) -> None:
    if sig_method != "hmac_sha256":
        raise SdkError(INVALID_SIG_METHOD)


async def _current_session_key(stores: Stores, app: SdkApp, openid: str | None, signature: str | None) -> str:
    if not openid or len(openid) > 64:
        raise SdkError(INVALID_OPENID)
    async with redis_mod.guarded(stores.settings):
        stored = await stores.redis.get(_session_key_key(app.appid, openid))
    if stored is None or not signature:
        raise SdkError(INVALID_SIGNATURE)
    session_key: str = stored.decode()
    if not hmac.compare_digest(opendata.session_signature(session_key), signature.lower()):
        raise SdkError(INVALID_SIGNATURE)
    return session_key


async def check_session(
    stores: Stores, app: SdkApp, openid: str | None, signature: str | None, sig_method: str | None
) -> None:
    """checkSessionKey: the signature must be HMAC-SHA256(session_key, "") of the current session key."""
    _check_sig_method(sig_method)
    await _current_session_key(stores, app, openid, signature)


# KEYS: the session key. ARGV: the key the caller checked, the new key. 1 when replaced (expiry kept).
_RESET_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""


async def reset_session_key(
    stores: Stores, app: SdkApp, openid: str | None, signature: str | None, sig_method: str | None
) -> ResetSession:
    """resetUserSessionKey: a new session_key with the old one's expiry; the old one stops working."""
    _check_sig_method(sig_method)
    old = await _current_session_key(stores, app, openid, signature)
    assert openid is not None
    new = opendata.new_session_key()
    async with redis_mod.guarded(stores.settings):
        replaced = await _script(stores.redis, _RESET_SCRIPT)(
            keys=[_session_key_key(app.appid, openid)], args=[old, new]
        )
    if not replaced:  # a login or another reset replaced it meanwhile
        raise SdkError(INVALID_SIGNATURE)
    return ResetSession(errcode=0, errmsg="ok", openid=openid, session_key=new)


# --- phone numbers ------------------------------------------------------------------------------------------


async def issue_phone_code(stores: Stores, account_id: UUID, appid: str, *, level: int) -> IssuedCode:
    """The citizen lets the app have their phone number: the consent is recorded (or the same one kept) and
    a one-time phone code comes back for the app to trade with getuserphonenumber."""
    item = await visible_app(stores, account_id, appid, level)
    granted = await consent.grant(
        stores, account_id, recipient(appid), [PHONE_SCOPE], f"手机号快速验证：{item.name}"
    )
    [code] = await _store_codes(stores, appid, "phone", str(account_id), 1, PHONE_CODE_SECONDS)
    return IssuedCode(code=code, expires_in=PHONE_CODE_SECONDS, consent_id=granted.id)


async def phone_number(stores: Stores, app: SdkApp, code: str | None, *, now: int | None = None) -> PhoneInfo:
    """getuserphonenumber: the phone code (single use) for the number, if the consent still holds."""
    account_id = UUID(await _consume(stores, app.appid, "phone", code))
    vault = await stores.vault()
    async with transaction(stores.pool, stores.settings) as conn:
        if not await consent.has_consent(stores, account_id, recipient(app.appid), PHONE_SCOPE, conn=conn):
            raise SdkError(USER_UNAUTHORIZED, "(the user withdrew the consent to share the phone number)")
        phone = await rights.disclose(
            conn, vault, account_id, "phone", actor=recipient(app.appid), reason="getuserphonenumber"
        )
    if phone is None:
        raise SdkError(USER_LIMITED)
    return PhoneInfo(
        phoneNumber=phone,
        purePhoneNumber=phone,
        countryCode="86",
        watermark=Watermark(timestamp=int(time.time()) if now is None else now, appid=app.appid),
    )
