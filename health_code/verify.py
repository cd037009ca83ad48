"""Make and check health passes offline: `sign_pass` (the issuer) and `verify` (any checkpoint).

`verify(payload, trust, now)` is pure: no I/O, no clock of its own, and it never raises; every outcome is a
`Verdict`. The checks run in this order and the first failure is the reason:

    bad_prefix, too_large, bad_base45, bad_compression (too_large for a zip bomb), bad_cbor, bad_cose,
    unknown_kid, bad_signature, bad_claims, wrong_key_usage, signer_not_valid_at_time, revoked,
    not_yet_valid, expired

Only after the signature has verified are the claims read; from wrong_key_usage on, the verdict carries
them (authentic, but the pass is still not valid: show them only together with the reason).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import msgspec
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from health_code import codec
from health_code.certs import HEALTH, RECOVERY, TEST, VACCINATION, VENUE, allowed_pass_types, certificate_kid
from health_code.codec import (
    CLAIM_CTI,
    CLAIM_EXP,
    CLAIM_HCERT,
    CLAIM_IAT,
    CLAIM_ISS,
    CLAIM_SUB,
    CLAIM_TONGBAN,
    EU_PREFIX,
    HCERT_DGC_V1,
    MAX_PAYLOAD_CHARS,
    TB_COLOUR,
    TB_NAME,
    TB_NUMBER,
    TB_SINCE,
    TB_TYPE,
    TONGBAN_PREFIX,
)
from health_code.trust import TrustedSigner, TrustStore, revocation_id

log = structlog.get_logger(__name__)

Reason = Literal[
    "ok",
    "bad_prefix",
    "too_large",
    "bad_base45",
    "bad_compression",
    "bad_cbor",
    "bad_cose",
    "unknown_kid",
    "bad_signature",
    "bad_claims",
    "wrong_key_usage",
    "signer_not_valid_at_time",
    "revoked",
    "not_yet_valid",
    "expired",
    "internal_error",
]
# Every reason, in check order. "internal_error" is a bug in this module (logged); no input should cause it.
REASONS: Final[tuple[str, ...]] = Reason.__args__  # type: ignore[attr-defined]

Colour = Literal["green", "yellow", "red"]
COLOURS: Final = frozenset({"green", "yellow", "red"})
PassFormat = Literal["tongban", "eu_dcc"]

# A checkpoint's clock may run behind the issuer's: a pass issued up to this far "in the future" is valid.
DEFAULT_CLOCK_SKEW: Final = timedelta(minutes=5)
_MAX_TIME: Final = 2**40  # unix seconds; anything beyond (year 36812) is not a time
MAX_TEXT: Final = 256  # characters of iss, sub, name, number, ci
MAX_CTI: Final = 64
_EU_TYPES: Final = {"v": VACCINATION, "t": TEST, "r": RECOVERY}


class PassClaims(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a verified pass says. Times are unix seconds (CWT NumericDate, UTC), as on the wire;
    `iat_time` and friends give aware datetimes."""

    format: PassFormat  # "tongban" (TB1:) or "eu_dcc" (HC1:)
    pass_type: str  # health | venue (ours); vaccination | test | recovery (EU)
    kid: str  # the signer's kid, base64
    region: str | None  # the signer's province / country, from the trust store
    iss: str | None
    sub: str | None  # ours: the issuer's pseudonymous id of the holder; EU: none
    iat: int
    exp: int
    cti: str | None  # the pass id, hex
    rid: str  # the subject's revocation id (trust.revocation_id)
    colour: Colour | None = None  # health passes
    since: int | None = None  # health passes: when the colour took effect
    name: str | None = None  # health: the holder's masked name; venue: the venue's name
    number: str | None = None  # health: the masked ID number; venue: the venue's number
    hcert: dict[str, Any] | None = None  # EU: the DGC map (claim -260, key 1), JSON types only

    @property
    def iat_time(self) -> datetime:
        return datetime.fromtimestamp(self.iat, UTC)

    @property
    def exp_time(self) -> datetime:
        return datetime.fromtimestamp(self.exp, UTC)

    @property
    def since_time(self) -> datetime | None:
        return None if self.since is None else datetime.fromtimestamp(self.since, UTC)


class Verdict(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    valid: bool
    reason: Reason
    claims: PassClaims | None = None


class PassContent(msgspec.Struct, frozen=True, kw_only=True):
    """What the issuer puts in one of our passes. `sub` is a stable pseudonymous id of the holder at this
    issuer, never an ID number; for a health pass `name` and `number` are already masked (core.pii
    mask_name / mask_id_number), for a venue code they are the venue's name and number."""

    iss: str  # the issuing province, e.g. "CN-LN"
    sub: str
    iat: datetime
    exp: datetime
    name: str
    number: str
    pass_type: Literal["health", "venue"] = "health"  # noqa: S105 (a pass type, not a password)
    colour: Colour | None = None  # health: required
    since: datetime | None = None  # health: required
    cti: bytes | None = None  # the pass id; 16 random bytes when None


class PassSigningError(ValueError):
    """sign_pass refuses: the pass would not verify, or would put unmasked data in a QR code. One line."""


# ---------------------------------------------------------------------------------------------------------
# Signing


def _epoch(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise PassSigningError("pass times must be timezone-aware")
    return int(moment.timestamp())


def tongban_claims(content: PassContent) -> dict[int, Any]:
    """The CWT claims map of one of our passes (what sign_pass signs)."""
    private: dict[int, Any] = {TB_TYPE: content.pass_type}
    if content.colour is not None:
        private[TB_COLOUR] = content.colour
    if content.since is not None:
        private[TB_SINCE] = _epoch(content.since)
    private[TB_NAME] = content.name
    private[TB_NUMBER] = content.number
    return {
        CLAIM_ISS: content.iss,
        CLAIM_SUB: content.sub,
        CLAIM_EXP: _epoch(content.exp),
        CLAIM_IAT: _epoch(content.iat),
        CLAIM_CTI: content.cti if content.cti is not None else secrets.token_bytes(16),
        CLAIM_TONGBAN: private,
    }


def encode_pass(
    claims: Mapping[int, Any],
    *,
    key: ec.EllipticCurvePrivateKey,
    kid: bytes,
    prefix: str = TONGBAN_PREFIX,
    tagged: bool = True,
) -> str:
    """Any CWT claims map -> QR text, signed with `key` under `kid`, with no checks on the claims (the EU
    layout, prefix HC1: and claim -260, works too). Issuers of our passes use sign_pass."""
    payload = codec.cbor_dumps(claims)
    cose = codec.cose_sign1_encode(
        payload, kid=kid, sign=lambda data: codec.es256_sign(key, data), tagged=tagged
    )
    return codec.pack(cose, prefix)


def _public_der(key: ec.EllipticCurvePublicKey | Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def sign_pass(content: PassContent, *, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> str:
    """One of our passes as QR text ("TB1:..."), signed with the signer `key` whose certificate is `cert`.
    Refuses (PassSigningError) what would not verify or should not be in a QR code: a key that is not the
    certificate's, a pass type the certificate may not sign, iat/exp outside its validity (cut exp with
    certs.max_exp), exp not after iat, a health pass without colour and since or with an unmasked number,
    a venue code with a colour, empty or over-long text."""
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise PassSigningError("the signing key does not belong to the signer certificate")
    if content.pass_type not in allowed_pass_types(cert):
        raise PassSigningError(f"the signer certificate may not sign {content.pass_type} passes")
    iat, exp = _epoch(content.iat), _epoch(content.exp)
    if exp <= iat:
        raise PassSigningError("exp must be after iat")
    if iat < cert.not_valid_before_utc.timestamp() or exp > cert.not_valid_after_utc.timestamp():
        raise PassSigningError("iat and exp must lie within the signer certificate's validity (see max_exp)")
    if content.pass_type == HEALTH:
        if type(content.colour) is not str or content.colour not in COLOURS or content.since is None:
            raise PassSigningError("a health pass needs a colour (green, yellow, red) and since")
        if "*" not in content.number:
            raise PassSigningError("a health pass carries the masked ID number (mask_id_number)")
    elif content.colour is not None or content.since is not None:
        raise PassSigningError("a venue code has no colour or since")
    for field, value in (
        ("iss", content.iss),
        ("sub", content.sub),
        ("name", content.name),
        ("number", content.number),
    ):
        if not value or len(value) > MAX_TEXT:
            raise PassSigningError(f"{field}: 1 to {MAX_TEXT} characters")
    if content.cti is not None and not 0 < len(content.cti) <= MAX_CTI:
        raise PassSigningError(f"cti: 1 to {MAX_CTI} bytes")
    return encode_pass(tongban_claims(content), key=key, kid=certificate_kid(cert))


# ---------------------------------------------------------------------------------------------------------
# Verifying


class _BadClaims(Exception):
    pass


def _text(value: Any) -> str:
    if type(value) is not str or not value or len(value) > MAX_TEXT:
        raise _BadClaims
    return value


def _json_like(value: Any, depth: int = 0) -> bool:
    """Whether a decoded CBOR value is plain JSON (string keys, no bytes, tags or NaN), fit to show."""
    if depth > codec.MAX_CBOR_DEPTH:
        return False
    kind = type(value)
    if kind in (str, int, bool) or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_json_like(item, depth + 1) for item in value)
    if kind is dict:
        return all(type(k) is str and _json_like(v, depth + 1) for k, v in value.items())
    return False


def _tongban_claims(
    claims: dict[Any, Any], signer: TrustedSigner, iat: int, exp: int, cti: str | None
) -> PassClaims:
    private = claims.get(CLAIM_TONGBAN)
    if type(private) is not dict or CLAIM_HCERT in claims:
        raise _BadClaims
    iss: Any = claims.get(CLAIM_ISS)
    sub: Any = claims.get(CLAIM_SUB)
    name: Any = private.get(TB_NAME)
    number: Any = private.get(TB_NUMBER)
    # What _text checks, for the four at once (this runs for every pass).
    if not (type(iss) is type(sub) is type(name) is type(number) is str) or not (
        iss and sub and name and number and max(len(iss), len(sub), len(name), len(number)) <= MAX_TEXT
    ):
        raise _BadClaims
    pass_type = private.get(TB_TYPE)
    colour: Any = private.get(TB_COLOUR)  # checked against COLOURS below
    since: Any = private.get(TB_SINCE)
    if pass_type == HEALTH:
        if (
            type(colour) is not str
            or colour not in COLOURS
            or type(since) is not int
            or not 0 <= since < _MAX_TIME
        ):
            raise _BadClaims
    elif pass_type != VENUE or colour is not None or since is not None:
        raise _BadClaims
    return PassClaims(
        format="tongban",
        pass_type=pass_type,
        kid=signer.kid_b64,
        region=signer.region,
        iss=iss,
        sub=sub,
        iat=iat,
        exp=exp,
        cti=cti,
        rid=revocation_id(iss, sub),
        colour=colour,
        since=since,
        name=name,
        number=number,
    )


def _eu_claims(
    claims: dict[Any, Any], signer: TrustedSigner, iat: int, exp: int, cti: str | None
) -> PassClaims:
    hcert = claims.get(CLAIM_HCERT)
    if type(hcert) is not dict or CLAIM_TONGBAN in claims:
        raise _BadClaims
    dgc = hcert.get(HCERT_DGC_V1)
    if type(dgc) is not dict or not _json_like(dgc):
        raise _BadClaims
    present = [key for key in _EU_TYPES if dgc.get(key)]
    if len(present) != 1:
        raise _BadClaims  # exactly one of vaccination / test / recovery
    entries = dgc[present[0]]
    if type(entries) is not list or type(entries[0]) is not dict:
        raise _BadClaims
    uci = _text(entries[0].get("ci"))
    iss = claims.get(CLAIM_ISS)
    if iss is not None:
        _text(iss)
    return PassClaims(
        format="eu_dcc",
        pass_type=_EU_TYPES[present[0]],
        kid=signer.kid_b64,
        region=signer.region,
        iss=iss,
        sub=None,
        iat=iat,
        exp=exp,
        cti=cti,
        rid=revocation_id(iss, uci),
        hcert=dgc,
    )


def _claims(payload: bytes, fmt: PassFormat, signer: TrustedSigner) -> PassClaims:
    """The claims of a pass whose signature has verified. Raises _BadClaims (or codec.CborError)."""
    claims = codec.claims_loads(payload)
    if type(claims) is not dict:
        raise _BadClaims
    iat, exp = claims.get(CLAIM_IAT), claims.get(CLAIM_EXP)
    # Both times (whole seconds in range, as _time checks) and exp after iat, in one test.
    if type(iat) is not int or type(exp) is not int or not 0 <= iat < exp < _MAX_TIME:
        raise _BadClaims
    cti = claims.get(CLAIM_CTI)
    if cti is not None:
        if type(cti) is not bytes or len(cti) > MAX_CTI:
            raise _BadClaims
        cti = cti.hex()
    if fmt == "tongban":
        return _tongban_claims(claims, signer, iat, exp, cti)
    return _eu_claims(claims, signer, iat, exp, cti)


def _invalid(reason: Reason, claims: PassClaims | None = None) -> Verdict:
    return Verdict(valid=False, reason=reason, claims=claims)


def _check(payload: str, trust: TrustStore, now: datetime, clock_skew: timedelta) -> Verdict:
    if type(payload) is not str:
        return _invalid("bad_prefix")
    if len(payload) > MAX_PAYLOAD_CHARS + 2:
        return _invalid("too_large")
    if payload[-1:] in ("\n", "\r"):
        payload = payload.rstrip("\r\n")  # scanners in keyboard mode end the text with a line break
    prefix = payload[:4]
    if prefix == TONGBAN_PREFIX:
        fmt: PassFormat = "tongban"
    elif prefix == EU_PREFIX:
        fmt = "eu_dcc"
    else:
        return _invalid("bad_prefix")
    if len(payload) > MAX_PAYLOAD_CHARS:
        return _invalid("too_large")
    try:
        compressed = codec.b45decode(payload[4:])
    except codec.Base45Error:
        return _invalid("bad_base45")
    try:
        cose_bytes = codec.inflate(compressed)
    except codec.TooLarge:
        return _invalid("too_large")
    except codec.CompressionError:
        return _invalid("bad_compression")
    try:
        # EU issuers may leave the COSE_Sign1 untagged; ours are always tag 18.
        kid, to_be_signed, signed_claims, signature = codec.cose_sign1_signed(
            cose_bytes, require_tag=fmt == "tongban"
        )
    except codec.CborError:
        return _invalid("bad_cbor")
    except codec.CoseError:
        return _invalid("bad_cose")
    candidates = trust.signers(kid)
    if not candidates:
        return _invalid("unknown_kid")
    for signer in candidates:
        if codec.es256_verify(signer.public_key, to_be_signed, signature):
            break
    else:
        return _invalid("bad_signature")
    try:
        claims = _claims(signed_claims, fmt, signer)
    except (_BadClaims, codec.CborError):
        return _invalid("bad_claims")
    iat, exp = claims.iat, claims.exp
    if claims.pass_type not in signer.pass_types:
        return _invalid("wrong_key_usage", claims)
    if iat < signer.not_before or exp > signer.not_after:
        return _invalid("signer_not_valid_at_time", claims)
    if trust.is_revoked(claims.rid, iat):
        return _invalid("revoked", claims)
    moment = (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).timestamp()
    if iat > moment + clock_skew.total_seconds():
        return _invalid("not_yet_valid", claims)
    if moment >= exp:
        return _invalid("expired", claims)
    return Verdict(valid=True, reason="ok", claims=claims)


def verify(
    payload: str, trust: TrustStore, now: datetime, *, clock_skew: timedelta = DEFAULT_CLOCK_SKEW
) -> Verdict:
    """Check a scanned pass ("TB1:..." or "HC1:...") against `trust` at time `now` (aware; a naive time is
    read as UTC). Never raises: every input gets a Verdict (the module notes list the reasons in order).
    A pass issued up to `clock_skew` after `now` still counts as issued."""
    try:
        return _check(payload, trust, now, clock_skew)
    except Exception as exc:  # a bug here must not take a checkpoint down: an invalid verdict, logged
        log.error("pass.verify_internal_error", error=type(exc).__name__)
        return _invalid("internal_error")
