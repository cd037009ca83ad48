"""The one-code wire format (docs/onecode-format.md): a 199-byte authorisation signed by our issuer key, and a
72-byte dynamic block the phone appends every 30 s, signed by the device key the authorisation certifies.

    text = PREFIX + Base45( authorisation(199) || generated_at(4) || counter(4) || device signature(64) )

Offsets: version 0, issuer kid 1, code id 9, device key 25 (65 bytes, 04 || X || Y), issued at 90, expires at
94, scenes 98, ride cap 99, medical handle 103, payment handle 119, issuer signature 135 over [0, 135);
generated at 199, counter 203, device signature 207 over [0, 207); 271 bytes in all.

Pure, no I/O. Base45 and ES256 are the health pass's (health_code.codec): one implementation of each codec.
Every decoder raises a `CodeError` subclass, whose `reason` is the validator's reason string, and nothing else.
"""

from __future__ import annotations

import hashlib
import struct
from typing import ClassVar, Final, NamedTuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from health_code.codec import Base45Error, b45decode, b45encode, es256_sign

PREFIX: Final = "TBO1:"
FORMAT_VERSION: Final = 1
SCENE_TRANSIT: Final = 1
SCENE_MEDICAL: Final = 2
SCENE_PAYMENT: Final = 4
ALL_SCENES: Final = SCENE_TRANSIT | SCENE_MEDICAL | SCENE_PAYMENT
SCENE_NAMES: Final = {"transit": SCENE_TRANSIT, "medical": SCENE_MEDICAL, "payment": SCENE_PAYMENT}

KID_BYTES: Final = 8
CODE_ID_BYTES: Final = 16
# X9.62 uncompressed P-256 point, 04 || X || Y: loading it is an on-curve check, where a compressed point
# needs a modular square root on every new rider's scan (docs/onecode-format.md).
DEVICE_KEY_BYTES: Final = 65
UNCOMPRESSED: Final = 0x04
HANDLE_BYTES: Final = 16
SIGNATURE_BYTES: Final = 64  # ES256 r || s
MAX_VALIDITY_SECONDS: Final = 24 * 3600
UINT32_MAX: Final = 0xFFFFFFFF

# Big-endian, no padding. The authorisation's signed part, then its signature; then the dynamic block.
_SIGNED_LAYOUT: Final = ">B8s16s65sIIBI16s16s"
_AUTHORISATION: Final = struct.Struct(_SIGNED_LAYOUT + "64s")
_SIGNED: Final = struct.Struct(_SIGNED_LAYOUT)
_DYNAMIC_HEAD: Final = struct.Struct(">II")
_CODE: Final = struct.Struct(_SIGNED_LAYOUT + "64sII64s")

SIGNED_BYTES: Final = _SIGNED.size  # 135
AUTHORISATION_BYTES: Final = _AUTHORISATION.size  # 199
DEVICE_SIGNED_BYTES: Final = AUTHORISATION_BYTES + _DYNAMIC_HEAD.size  # 207
CODE_BYTES: Final = _CODE.size  # 271
# Base45 of 271 bytes: 135 pairs -> 405 characters, the odd byte -> 2.
TEXT_CHARS: Final = len(PREFIX) + (CODE_BYTES // 2) * 3 + (CODE_BYTES % 2) * 2  # 412

_ZERO_HANDLE: Final = bytes(HANDLE_BYTES)


# ---------------------------------------------------------------------------------------------------------
# Errors: one class per reason, so `except CodeError as exc: exc.reason` is the verdict.


class CodeError(ValueError):
    reason: ClassVar[str] = "bad_code"


class BadPrefix(CodeError):
    reason = "bad_prefix"


class TooLarge(CodeError):
    reason = "too_large"


class BadBase45(CodeError):
    reason = "bad_base45"


class BadLength(CodeError):
    reason = "bad_length"


class UnsupportedVersion(CodeError):
    reason = "unsupported_version"


class BadDeviceKey(CodeError):
    reason = "bad_device_key"


# ---------------------------------------------------------------------------------------------------------
# The parsed forms: tuples, made once per scan on the validator's hot path.


class Authorisation(NamedTuple):
    version: int
    issuer_kid: bytes
    code_id: bytes
    device_key: bytes  # 65 bytes, uncompressed point
    issued_at: int
    expires_at: int
    scenes: int
    ride_cap_fen: int
    medical_handle: bytes
    payment_handle: bytes
    signature: bytes  # the issuer's, over `signed`
    signed: bytes  # bytes [0, 135)

    def allows(self, scene: int) -> bool:
        return bool(self.scenes & scene)


class Code(NamedTuple):
    authorisation: Authorisation
    generated_at: int
    counter: int
    device_signature: bytes  # over `device_signed`
    raw: bytes  # all 271
    device_signed: bytes  # bytes [0, 207)

    @property
    def code_id(self) -> bytes:
        return self.authorisation.code_id


# ---------------------------------------------------------------------------------------------------------
# Keys


def issuer_kid(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The first 8 bytes of SHA-256 over the key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()[:KID_BYTES]


def device_point(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 65-byte X9.62 uncompressed point (04 || X || Y) the authorisation carries."""
    return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def device_public_key(device_key: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 key from its uncompressed point. Raises BadDeviceKey for anything else: another length,
    another first byte (compressed 02/03, hybrid 06/07), a coordinate >= p, or a point off the curve."""
    if len(device_key) != DEVICE_KEY_BYTES or device_key[0] != UNCOMPRESSED:
        raise BadDeviceKey("device key: not an uncompressed P-256 point (65 bytes, 04 first)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), device_key)
    except ValueError:
        raise BadDeviceKey("device key: not a point on P-256") from None


# ---------------------------------------------------------------------------------------------------------
# Making codes


def _check_uint32(name: str, value: int) -> None:
    if not 0 <= value <= UINT32_MAX:
        raise ValueError(f"{name}: {value} does not fit in 32 unsigned bits")


def sign_authorisation(
    key: ec.EllipticCurvePrivateKey,
    *,
    code_id: bytes,
    device_key: bytes,
    issued_at: int,
    expires_at: int,
    scenes: int,
    ride_cap_fen: int,
    medical_handle: bytes,
    payment_handle: bytes,
) -> bytes:
    """The 199-byte authorisation, signed with the issuer key. Raises ValueError for fields the format
    cannot carry or that break its rules (validity over 24 h, attributes of a scene that is off)."""
    if len(code_id) != CODE_ID_BYTES:
        raise ValueError(f"code_id: {CODE_ID_BYTES} bytes")
    device_public_key(device_key)  # a point on the curve, or BadDeviceKey (a ValueError)
    if len(medical_handle) != HANDLE_BYTES or len(payment_handle) != HANDLE_BYTES:
        raise ValueError(f"handles: {HANDLE_BYTES} bytes each")
    _check_uint32("issued_at", issued_at)
    _check_uint32("expires_at", expires_at)
    _check_uint32("ride_cap_fen", ride_cap_fen)
    if not issued_at < expires_at <= issued_at + MAX_VALIDITY_SECONDS:
        raise ValueError("expires_at: after issued_at and at most 24 h after it")
    if not 0 < scenes <= ALL_SCENES:
        raise ValueError("scenes: a non-empty combination of transit (1), medical (2), payment (4)")
    if not scenes & SCENE_TRANSIT and ride_cap_fen:
        raise ValueError("ride_cap_fen: 0 when transit is off")
    if not scenes & SCENE_MEDICAL and medical_handle != _ZERO_HANDLE:
        raise ValueError("medical_handle: zero bytes when medical is off")
    if not scenes & SCENE_PAYMENT and payment_handle != _ZERO_HANDLE:
        raise ValueError("payment_handle: zero bytes when payment is off")
    signed = _SIGNED.pack(
        FORMAT_VERSION,
        issuer_kid(key.public_key()),
        code_id,
        device_key,
        issued_at,
        expires_at,
        scenes,
        ride_cap_fen,
        medical_handle,
        payment_handle,
    )
    return signed + es256_sign(key, signed)


def append_dynamic(
    authorisation: bytes, device_key: ec.EllipticCurvePrivateKey, generated_at: int, counter: int
) -> bytes:
    """The 271 code bytes: the authorisation, generation time, counter, and the device signature over all
    207 bytes before it."""
    if len(authorisation) != AUTHORISATION_BYTES:
        raise ValueError(f"authorisation: {AUTHORISATION_BYTES} bytes")
    _check_uint32("generated_at", generated_at)
    _check_uint32("counter", counter)
    signed = authorisation + _DYNAMIC_HEAD.pack(generated_at, counter)
    return signed + es256_sign(device_key, signed)


def pack(raw: bytes) -> str:
    return PREFIX + b45encode(raw)


# ---------------------------------------------------------------------------------------------------------
# Reading codes


def unpack(text: str) -> bytes:
    """The code bytes in a scanned text (trailing CR/LF, which scanners in keyboard mode add, ignored). Raises
    BadPrefix, TooLarge (checked before decoding) or BadBase45."""
    if type(text) is not str or not text.startswith(PREFIX):
        raise BadPrefix("not a one-code: the text does not start with " + PREFIX)
    if text[-1] in "\r\n":
        text = text.rstrip("\r\n")
    if len(text) > TEXT_CHARS:
        raise TooLarge(f"a one-code is {TEXT_CHARS} characters")
    try:
        return b45decode(text[len(PREFIX) :])
    except Base45Error as exc:
        raise BadBase45(str(exc)) from None


def parse_authorisation(data: bytes) -> Authorisation:
    """The 199-byte authorisation (as issued, before any dynamic block). Signatures are not checked."""
    if type(data) is not bytes or len(data) != AUTHORISATION_BYTES:
        raise BadLength(f"an authorisation is {AUTHORISATION_BYTES} bytes")
    version, kid, code_id, device_key, issued, expires, scenes, cap, medical, payment, signature = (
        _AUTHORISATION.unpack(data)
    )
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(f"format version {version}")
    return Authorisation(
        version,
        kid,
        code_id,
        device_key,
        issued,
        expires,
        scenes,
        cap,
        medical,
        payment,
        signature,
        data[:SIGNED_BYTES],
    )


def parse(raw: bytes) -> Code:
    """The code in its 271 bytes: a struct unpack, no signature checked (validator.verify does that)."""
    if type(raw) is not bytes or len(raw) != CODE_BYTES:
        raise BadLength(f"a one-code is {CODE_BYTES} bytes")
    (
        version,
        kid,
        code_id,
        device_key,
        issued,
        expires,
        scenes,
        cap,
        medical,
        payment,
        signature,
        generated_at,
        counter,
        device_signature,
    ) = _CODE.unpack(raw)
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(f"format version {version}")
    authorisation = Authorisation(
        version,
        kid,
        code_id,
        device_key,
        issued,
        expires,
        scenes,
        cap,
        medical,
        payment,
        signature,
        raw[:SIGNED_BYTES],
    )
    return Code(authorisation, generated_at, counter, device_signature, raw, raw[:DEVICE_SIGNED_BYTES])
