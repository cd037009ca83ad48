"""SMS login, refresh-token rotation with reuse detection, sessions. Plain async functions over Stores."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from uuid import UUID

import asyncpg
import structlog

from auth import otp, repository, revocation
from auth.models import LoginRequest, SessionView, SmsCodeRequest, SmsCodeSent, TokenPair
from auth.phone import normalize_mobile
from auth.sms import queue_sms
from auth.tokens import AccessClaims, Enterprise, issue_access_token
from core import clock, ids
from core.db import transaction
from core.errors import Conflict, Forbidden, NotFound, Unauthorized
from core.pii.masking import mask_phone, normalize_phone
from core.ratelimit import Limiter, Window
from core.stores import Stores

log = structlog.get_logger(__name__)
PHONE_INDEX = "accounts.phone"
# Blind-index purposes: one per column, shared by every module that writes or looks up that column.
ID_NUMBER_INDEX = "accounts.id_number"
RESEND_AFTER = 60


def _hash(token: str) -> bytes:
    # Refresh tokens carry 256 random bits: a plain hash is enough to make a stolen table useless.
    return hashlib.sha256(token.encode()).digest()


def _limiter(stores: Stores) -> Limiter:
    return Limiter(stores.redis, stores.settings)


async def _phone_keys(stores: Stores, phone: str) -> tuple[bytes, str]:
    """(blind index, Redis tag) of a phone: Redis keys never carry the number itself."""
    vault = await stores.vault()
    bidx = vault.blind_index(phone, purpose=PHONE_INDEX, normalize=normalize_phone)
    return bidx, bidx[:12].hex()


async def request_sms_code(stores: Stores, request: SmsCodeRequest, client_ip: str) -> SmsCodeSent:
    """Send a login code. The answer is the same whether or not the phone has an account."""
    phone = normalize_mobile(request.phone)
    settings = stores.settings
    limiter = _limiter(stores)
    await limiter.hit("sms-ip", client_ip, (Window("hour", settings.auth_sms_per_ip_hour, 3600),))
    if request.device_id:
        device_tag = hashlib.sha256(request.device_id.encode()).hexdigest()[:24]
        await limiter.hit(
            "sms-device", device_tag, (Window("hour", settings.auth_sms_per_device_hour, 3600),)
        )
    _, tag = await _phone_keys(stores, phone)
    await limiter.hit(
        "sms-phone",
        tag,
        (
            Window("minute", settings.auth_sms_per_phone_minute, 60),
            Window("hour", settings.auth_sms_per_phone_hour, 3600),
            Window("day", settings.auth_sms_per_phone_day, 86400),
        ),
    )
    challenge_id, code = await issue_login_code(stores, phone)
    vault = await stores.vault()
    async with transaction(stores.pool, settings) as conn:
        await queue_sms(
            conn, vault, phone, "login_code", {"code": code, "minutes": str(settings.auth_otp_ttl // 60)}
        )
    return SmsCodeSent(challenge_id=challenge_id, expires_in=settings.auth_otp_ttl, resend_after=RESEND_AFTER)


async def issue_login_code(stores: Stores, phone: str) -> tuple[str, str]:
    """(challenge_id, code) for a normalised phone, without limits or SMS: the caller delivers it."""
    _, tag = await _phone_keys(stores, phone)
    return await otp.issue(
        stores.redis,
        stores.settings,
        phone_tag=tag,
        purpose="login",
        ttl_seconds=stores.settings.auth_otp_ttl,
    )


_OTP_FAILURES = {
    otp.Outcome.WRONG: ("otp_invalid", "the code is wrong"),
    otp.Outcome.BURNED: ("otp_burned", "too many wrong codes: request a new one"),
    otp.Outcome.MISSING: ("otp_expired", "no such code: it expired, was used, or a newer one was sent"),
}


async def _new_session_tokens(
    stores: Stores,
    conn: asyncpg.Connection,
    *,
    session_id: UUID,
    account_id: UUID,
    level: int,
    amr: list[str],
    enterprise: Enterprise | None = None,
) -> TokenPair:
    refresh_token = secrets.token_urlsafe(32)
    idle = timedelta(days=stores.settings.auth_refresh_idle_days)
    await repository.insert_refresh_token(conn, _hash(refresh_token), session_id, clock.now() + idle)
    access, ttl = await issue_access_token(
        stores, account_id=account_id, session_id=session_id, level=level, amr=amr, enterprise=enterprise
    )
    return TokenPair(
        access_token=access,
        refresh_token=refresh_token,
        token_type="Bearer",  # noqa: S106 (the RFC 6750 token type, not a secret)
        expires_in=ttl,
        session_id=session_id,
        account_id=account_id,
        level=level,
    )


async def login(stores: Stores, request: LoginRequest, client_ip: str) -> TokenPair:
    """Log in (registering on first login) with a phone and the code sent to it."""
    settings = stores.settings
    await _limiter(stores).hit(
        "login-ip", client_ip, (Window("minute", settings.auth_login_per_ip_minute, 60),)
    )
    phone = normalize_mobile(request.phone)
    bidx, tag = await _phone_keys(stores, phone)
    outcome = await otp.verify(
        stores.redis,
        settings,
        phone_tag=tag,
        purpose="login",
        challenge_id=request.challenge_id,
        code=request.code,
    )
    if outcome is not otp.Outcome.OK:
        code, detail = _OTP_FAILURES[outcome]
        raise Unauthorized(detail, code=code)
    vault = await stores.vault()
    async with transaction(stores.pool, settings) as conn:
        account = await repository.account_by_phone(conn, bidx)
        if account is None:
            account_id = ids.new_id()
            phone_enc = await vault.encrypt(conn, phone, table="accounts", column="phone", row_id=account_id)
            if await repository.insert_account(conn, account_id, phone_enc, bidx, mask_phone(phone)):
                await repository.add_event(conn, account_id, "registered", "self")
            account = await repository.account_by_phone(conn, bidx)
            assert account is not None
        if account["status"] == "banned":
            raise Forbidden("this account is suspended", code="account_banned")
        session_id = ids.new_id()
        expires_at = clock.now() + timedelta(days=settings.auth_session_days)
        await repository.insert_session(
            conn, session_id, account["id"], request.device.id, request.device.name, expires_at
        )
        await repository.add_event(conn, account["id"], "login", "self", {"session": str(session_id)})
        return await _new_session_tokens(
            stores,
            conn,
            session_id=session_id,
            account_id=account["id"],
            level=account["level"],
            amr=list(account["amr"]),
        )


async def refresh(stores: Stores, refresh_token: str) -> TokenPair:
    """Rotate a refresh token (RFC 9700 §4.14.2): the old one is spent, a new one returned. Presenting a
    spent token again after the grace window means it was stolen: the whole session is revoked."""
    settings = stores.settings
    reused_session: UUID | None = None
    async with transaction(stores.pool, settings) as conn:
        row = await repository.refresh_token_for_update(conn, _hash(refresh_token))
        now = clock.now()
        if row is None or row["revoked_at"] is not None:
            raise Unauthorized("the refresh token is not valid", code="invalid_grant")
        if row["session_expires_at"] <= now or row["token_expires_at"] <= now:
            raise Unauthorized("the session has expired: log in again", code="invalid_grant")
        if row["status"] not in ("active", "deleting"):
            raise Unauthorized("the account cannot log in", code="invalid_grant")
        if row["rotated_at"] is not None:
            if (now - row["rotated_at"]).total_seconds() <= settings.auth_refresh_grace_seconds:
                raise Conflict("this refresh token was just used by another request", code="refresh_race")
            await repository.revoke_session(conn, row["session_id"], "refresh_token_reuse")
            await repository.add_event(conn, row["account_id"], "refresh_reuse_detected", "system")
            reused_session = row["session_id"]
        else:
            await repository.mark_rotated(conn, _hash(refresh_token))
            await repository.touch_session(conn, row["session_id"])
            enterprise = await _acting_enterprise(conn, row["account_id"], row["acting_enterprise"])
            return await _new_session_tokens(
                stores,
                conn,
                session_id=row["session_id"],
                account_id=row["account_id"],
                level=row["level"],
                amr=list(row["amr"]),
                enterprise=enterprise,
            )
    # The revocation is committed above; now tell every process and refuse.
    await revocation.publish(stores, [str(reused_session)])
    log.warning("auth.refresh_reuse", session=str(reused_session))
    raise Unauthorized("refresh token reuse detected: the session is revoked", code="invalid_grant")


async def _acting_enterprise(
    conn: asyncpg.Connection, account_id: UUID, enterprise_id: UUID | None
) -> Enterprise | None:
    if enterprise_id is None:
        return None
    role = await repository.member_role(conn, enterprise_id, account_id)
    return Enterprise(id=str(enterprise_id), role=role) if role else None


async def list_sessions(stores: Stores, claims: AccessClaims) -> list[SessionView]:
    async with transaction(stores.pool, stores.settings) as conn:
        rows = await repository.active_sessions(conn, claims.account_id)
    return [
        SessionView(
            id=row["id"],
            device_id=row["device_id"],
            device_name=row["device_name"],
            created_at=row["created_at"],
            last_seen_at=row["last_seen_at"],
            expires_at=row["expires_at"],
            current=str(row["id"]) == claims.sid,
            acting_enterprise=row["acting_enterprise"],
        )
        for row in rows
    ]


async def revoke_session(stores: Stores, claims: AccessClaims, session_id: UUID, reason: str) -> None:
    """Revoke one of the caller's own sessions; any other id is 404 (no probing of others' sessions)."""
    async with transaction(stores.pool, stores.settings) as conn:
        if not await repository.revoke_session(conn, session_id, reason, claims.account_id):
            raise NotFound("no such active session")
        await repository.add_event(
            conn, claims.account_id, "session_revoked", "self", {"session": str(session_id)}
        )
    await revocation.publish(stores, [str(session_id)])


async def revoke_all_sessions(stores: Stores, account_id: UUID, reason: str, actor: str) -> int:
    async with transaction(stores.pool, stores.settings) as conn:
        revoked = await repository.revoke_account_sessions(conn, account_id, reason)
        if revoked:
            await repository.add_event(conn, account_id, "sessions_revoked", actor, {"count": len(revoked)})
    await revocation.publish(stores, revoked)
    return len(revoked)
