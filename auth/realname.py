"""Real-name verification (实名认证): L2 = name + ID number matched with the population registry, L3 = a face
check (liveness + match) on top of L2. One ID number, one account.

The name and ID number are kept only as PII-vault ciphertext (row id = account id), with a blind index of the
ID number for the one-ID-one-account rule and masked forms for display. Provider calls happen outside any
database transaction, so a slow registry never holds a connection or a row lock.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import date, datetime
from uuid import UUID

import asyncpg
import msgspec
import structlog
from stdnum import numdb
from stdnum.cn import ric
from stdnum.exceptions import ValidationError as StdnumError

from auth import repository
from auth.models import Me
from auth.providers import FaceCheck, PopulationRegistry, face_check, population_registry
from auth.service import ID_NUMBER_INDEX
from auth.sms import queue_sms
from auth.tokens import AccessClaims, issue_access_token
from core import clock
from core.db import transaction
from core.errors import Conflict, Forbidden, InvalidInput, NotFound, RateLimited
from core.pii.masking import mask_id_number, mask_name, normalize_id_number, normalize_name
from core.pii.vault import Vault
from core.ratelimit import Limiter, Window
from core.stores import Stores

log = structlog.get_logger(__name__)

NAME_MIN, NAME_MAX = 2, 30
MIDDLE_DOT = "·"  # U+00B7, the separator of transliterated names on ID cards (e.g. 阿依古丽·买买提)
# Dots people type instead of U+00B7; NFKC has already folded the half-width katakana one to U+30FB.
_DOT_VARIANTS = str.maketrans(dict.fromkeys("\u2022\u2027\u2219\u22c5\u30fb", MIDDLE_DOT))
# Han ideographs: 〇, Extension A, the URO, compatibility ideographs, Extensions B-F and I, G-H.
_HAN = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ee5f\U00030000-\U000323af"
_NAME = re.compile(f"[{_HAN}]+(?:{MIDDLE_DOT}[{_HAN}]+)*")
_RAW_MAX = 200  # anything longer is refused before normalising it
EARLIEST_BIRTH = date(1900, 1, 1)
# A person whose ID number someone else tries hears about it at most this often.
NOTICES_PER_DAY = 3
NOTICE_TEXT = (
    "有人尝试用您的身份证号码为另一个通办账号办理实名认证，已被拒绝。如果是您本人操作，请用原账号登录；"
    "如果不是，请留意个人信息安全。"
)


class RealNameRequest(msgspec.Struct):
    name: str
    id_number: str


class FaceRequest(msgspec.Struct):
    image: str  # base64 (standard alphabet; a data: URL prefix and line breaks are accepted)


class LevelUp(msgspec.Struct):
    """A new access token for the current session at the account's new level. The refresh token is
    unchanged: the next refresh reads the level from the account, so it carries the new level too."""

    access_token: str
    token_type: str
    expires_in: int
    level: int
    amr: list[str]


# --- input checks --------------------------------------------------------------------------------------


def _bad_id(reason: str) -> InvalidInput:
    return InvalidInput(f"id_number: {reason}", field="id_number", code="invalid_id_number")


def _bad_name(reason: str) -> InvalidInput:
    return InvalidInput(f"name: {reason}", field="name", code="invalid_name")


def _region_known(code: str, birth_year: int) -> bool:
    """The GB/T 2260 code exists and was not retired before the birth year.

    python-stdnum's own check wants the code in use IN the birth year, which refuses everyone born before
    their county got its current code (most codes date from 1983 or later, and numbers were given out from
    1984): a number is assigned at first registration, so only a code retired before birth is impossible."""
    info: dict[str, str] = {k: v for _, props in numdb.get("cn/loc").info(code) for k, v in props.items()}
    county = info.get("county")
    if not county or "province" not in info:
        return False
    for entry in county.split(","):
        if not entry.startswith("["):
            return True
        _, _, end = entry[1:].split("]", 1)[0].partition("-")
        if not end or int(end) >= birth_year:
            return True
    return False


def check_id_number(raw: str, *, today: date | None = None) -> str:
    """The normalised 18-character resident ID number (GB 11643), or 422 invalid_id_number saying which part
    is wrong: format, check digit (ISO 7064 MOD 11-2), birth date, or region code. Never echoes the value."""
    if len(raw) > _RAW_MAX:
        raise _bad_id("must be 18 characters")
    number = normalize_id_number(raw)
    body = number[:17]
    if len(number) != 18 or not (body.isascii() and body.isdigit()) or number[17] not in "0123456789X":
        raise _bad_id("must be 18 characters: 17 digits and a check digit (0-9 or X)")
    if ric.calc_check_digit(number) != number[17]:
        raise _bad_id("the check digit does not match (GB 11643, ISO 7064 MOD 11-2)")
    try:
        born = ric.get_birth_date(number)
    except StdnumError:
        raise _bad_id("digits 7-14 are not a real birth date") from None
    if not EARLIEST_BIRTH <= born <= (today or clock.now().date()):
        raise _bad_id("digits 7-14 are not a possible birth date")
    if not _region_known(number[:6], born.year):
        raise _bad_id("the first 6 digits are not a known region code (GB/T 2260)")
    return number


def normalize_real_name(raw: str) -> str:
    """NFKC, trimmed, and every look-alike middle dot made U+00B7 (what the registry stores)."""
    return normalize_name(raw).translate(_DOT_VARIANTS)


def check_name(raw: str) -> str:
    """The normalised name, or 422 invalid_name: 2-30 Han characters, the parts of a transliterated name
    joined by single middle dots."""
    if len(raw) > _RAW_MAX:
        raise _bad_name(f"{NAME_MIN} to {NAME_MAX} characters")
    name = normalize_real_name(raw)
    if not NAME_MIN <= len(name) <= NAME_MAX:
        raise _bad_name(f"{NAME_MIN} to {NAME_MAX} characters")
    if not _NAME.fullmatch(name):
        raise _bad_name(
            f"Chinese characters as on the ID card; the parts of a transliterated name joined by {MIDDLE_DOT}"
        )
    return name


def decode_image(encoded: str, max_bytes: int) -> bytes:
    """The image bytes, or 422: invalid_image (not base64, empty) or image_too_large (checked before
    decoding, so a huge upload costs no decode)."""
    if encoded.startswith("data:"):
        _, _, encoded = encoded.partition(",")
    compact = "".join(encoded.split())
    if len(compact) > 4 * -(-max_bytes // 3):
        raise InvalidInput(f"image: larger than {max_bytes} bytes", field="image", code="image_too_large")
    try:
        image = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("image: not base64", field="image", code="invalid_image") from None
    if not image:
        raise InvalidInput("image: empty", field="image", code="invalid_image")
    if len(image) > max_bytes:
        raise InvalidInput(f"image: larger than {max_bytes} bytes", field="image", code="image_too_large")
    return image


# --- services --------------------------------------------------------------------------------------------


def _limiter(stores: Stores) -> Limiter:
    return Limiter(stores.redis, stores.settings)


async def _identity(
    conn: asyncpg.Connection, account_id: UUID, *, for_update: bool = False
) -> asyncpg.Record:
    account = await repository.identity_of(conn, account_id, for_update=for_update)
    if account is None:
        raise NotFound("no such account")
    if account["status"] != "active":
        raise Forbidden("the account cannot be verified in its current state", code="account_inactive")
    return account


async def _refusal_if_other_identity(
    conn: asyncpg.Connection, vault: Vault, account: asyncpg.Record, name: str, id_number_bidx: bytes
) -> Conflict | None:
    """An already verified account may repeat its own identity (idempotent); anything else is 409. The
    caller raises it after committing, so the access-log row of the decrypt here is kept."""
    if account["id_number_bidx"] == id_number_bidx:
        stored_name = await vault.decrypt(
            conn,
            account["name_enc"],
            table="accounts",
            column="name",
            row_id=account["id"],
            actor="self",
            reason="repeat real-name verification",
        )
        if stored_name == name:
            return None
    return Conflict("this account is already verified with another identity", code="already_verified")


async def _notify_holder(
    stores: Stores, conn: asyncpg.Connection, vault: Vault, holder: asyncpg.Record
) -> None:
    """Tell the holder of an ID number that another account tried it (no ID number in the text)."""
    await repository.add_event(conn, holder["id"], "id_number_claim_refused", "system")
    try:
        await _limiter(stores).hit(
            "realname-notice", str(holder["id"]), (Window("day", NOTICES_PER_DAY, 86400),)
        )
    except RateLimited:
        return  # already told today; the event row still records this attempt
    phone = await vault.decrypt(
        conn,
        holder["phone_enc"],
        table="accounts",
        column="phone",
        row_id=holder["id"],
        actor="system",
        reason="notify the holder of an ID number used in another account's real-name attempt",
    )
    await queue_sms(conn, vault, phone, "notice", {"text": NOTICE_TEXT})


def _taken() -> Conflict:
    return Conflict(
        "this ID number is already verified on another account", field="id_number", code="id_number_taken"
    )


async def _level_up(stores: Stores, claims: AccessClaims, level: int, amr: list[str]) -> LevelUp:
    """A new access token for the caller's current session (its acting enterprise kept)."""
    token, ttl = await issue_access_token(
        stores,
        account_id=claims.account_id,
        session_id=claims.session_id,
        level=level,
        amr=amr,
        enterprise=claims.ent,
    )
    return LevelUp(access_token=token, token_type="Bearer", expires_in=ttl, level=level, amr=amr)  # noqa: S106


async def store_identity(
    conn: asyncpg.Connection, vault: Vault, account_id: UUID, name: str, id_number: str
) -> asyncpg.Record:
    """Keep a verified identity: name and ID number sealed by the vault (row = the account), the blind
    index and masked forms, level 2. UniqueViolationError when another account holds the ID number."""
    return await repository.set_real_name(
        conn,
        account_id,
        name_enc=await vault.encrypt(conn, name, table="accounts", column="name", row_id=account_id),
        name_masked=mask_name(name),
        id_number_enc=await vault.encrypt(
            conn, id_number, table="accounts", column="id_number", row_id=account_id
        ),
        id_number_bidx=vault.blind_index(id_number, purpose=ID_NUMBER_INDEX, normalize=normalize_id_number),
        id_number_masked=mask_id_number(id_number),
    )


async def verify_real_name(
    stores: Stores,
    claims: AccessClaims,
    request: RealNameRequest,
    *,
    registry: PopulationRegistry | None = None,
) -> LevelUp:
    """L2: check the input, the one-ID-one-account rule, then the population registry; store the identity."""
    name = check_name(request.name)
    id_number = check_id_number(request.id_number)
    settings = stores.settings
    # Every attempt that reaches other people's data or the registry counts, typos caught above do not.
    await _limiter(stores).hit(
        "realname", claims.sub, (Window("hour", settings.auth_realname_per_hour, 3600),)
    )
    vault = await stores.vault()
    bidx = vault.blind_index(id_number, purpose=ID_NUMBER_INDEX, normalize=normalize_id_number)
    account_id = claims.account_id

    # Refusals are raised after the transaction commits: the holder's notice and the access log are kept.
    refusal: Conflict | None = None
    already: tuple[int, list[str]] | None = None
    async with transaction(stores.pool, settings) as conn:
        account = await _identity(conn, account_id)
        if account["level"] >= 2:
            refusal = await _refusal_if_other_identity(conn, vault, account, name, bidx)
            already = (account["level"], list(account["amr"]))
        else:
            holder = await repository.id_number_holder(conn, bidx)
            if holder is not None and holder["id"] != account_id:
                await _notify_holder(stores, conn, vault, holder)
                refusal = _taken()
    if refusal is not None:
        raise refusal
    if already is not None:
        return await _level_up(stores, claims, *already)

    if not await (registry or population_registry(settings)).matches(name, id_number):
        async with transaction(stores.pool, settings) as conn:
            await repository.add_event(conn, account_id, "real_name_failed", "self", {"reason": "mismatch"})
        raise InvalidInput(
            "the name and ID number do not match the population registry", code="real_name_mismatch"
        )

    async with transaction(stores.pool, settings) as conn:
        account = await _identity(conn, account_id, for_update=True)
        if account["level"] >= 2:  # a parallel request got there first
            refusal = await _refusal_if_other_identity(conn, vault, account, name, bidx)
            level, amr = account["level"], list(account["amr"])
        else:
            try:
                async with conn.transaction():  # a savepoint: the unique index may refuse the ID number
                    row = await store_identity(conn, vault, account_id, name, id_number)
            except asyncpg.UniqueViolationError:
                # Another account verified this ID number since the check above.
                holder = await repository.id_number_holder(conn, bidx)
                if holder is not None:
                    await _notify_holder(stores, conn, vault, holder)
                refusal = _taken()
            else:
                await repository.add_event(conn, account_id, "real_name_verified", "self", {"level": 2})
                level, amr = row["level"], list(row["amr"])
    if refusal is not None:
        raise refusal
    log.info("realname.verified", account=str(account_id), level=level)
    return await _level_up(stores, claims, level, amr)


async def verify_face(
    stores: Stores, claims: AccessClaims, request: FaceRequest, *, face: FaceCheck | None = None
) -> LevelUp:
    """L3: the face-check provider scores the image against the verified identity."""
    settings = stores.settings
    image = decode_image(request.image, settings.auth_face_image_max_bytes)
    await _limiter(stores).hit("face", claims.sub, (Window("hour", settings.auth_face_per_hour, 3600),))
    vault = await stores.vault()
    account_id = claims.account_id
    async with transaction(stores.pool, settings) as conn:
        account = await _identity(conn, account_id)
        if account["level"] < 2 or account["id_number_enc"] is None:
            raise Forbidden("real-name level L2 is required", code="insufficient_level")
        identity = {
            column: await vault.decrypt(
                conn,
                account[f"{column}_enc"],
                table="accounts",
                column=column,
                row_id=account_id,
                actor="self",
                reason="face check",
            )
            for column in ("name", "id_number")
        }
    score = await (face or face_check(settings)).score(identity["name"], identity["id_number"], image)
    if score < settings.auth_face_threshold:
        async with transaction(stores.pool, settings) as conn:
            await repository.add_event(
                conn, account_id, "face_check_failed", "self", {"score": round(score, 3)}
            )
        raise InvalidInput(
            "the face check did not match the verified identity", field="image", code="face_mismatch"
        )
    async with transaction(stores.pool, settings) as conn:
        row = await repository.set_face_verified(conn, account_id)
        await repository.add_event(conn, account_id, "face_verified", "self", {"level": 3})
    log.info("realname.face_verified", account=str(account_id))
    return await _level_up(stores, claims, row["level"], list(row["amr"]))


async def me(stores: Stores, claims: AccessClaims) -> Me:
    """The caller's account with masked personal data only."""
    async with transaction(stores.pool, stores.settings) as conn:
        row = await repository.account_overview(conn, claims.account_id)
    if row is None:
        raise NotFound("no such account")
    created_at: datetime = row["created_at"]
    return Me(
        id=row["id"],
        phone=row["phone_masked"],
        level=row["level"],
        amr=list(row["amr"]),
        status=row["status"],
        name=row["name_masked"],
        id_number=row["id_number_masked"],
        created_at=created_at,
    )
