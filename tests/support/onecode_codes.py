"""One-codes for tests: an issuer, phones, and raw codes with any field (also ones the library refuses to
make), signed for real."""

from __future__ import annotations

import secrets
import struct

from cryptography.hazmat.primitives.asymmetric import ec

from health_code.codec import es256_sign
from onecode import codec
from onecode.client import OneCodeClient, generate_device_key, public_key_bytes

NOW = 1_767_225_600  # 2026-01-01 00:00:00 UTC, a multiple of 30
ALL = codec.SCENE_TRANSIT | codec.SCENE_MEDICAL | codec.SCENE_PAYMENT


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def issue(
    issuer: ec.EllipticCurvePrivateKey,
    device: ec.EllipticCurvePrivateKey,
    *,
    issued_at: int = NOW - 3600,
    expires_at: int | None = None,
    scenes: int = ALL,
    ride_cap_fen: int = 500,
    code_id: bytes | None = None,
) -> bytes:
    """An authorisation as the server issues it (through the library)."""
    return codec.sign_authorisation(
        issuer,
        code_id=code_id or secrets.token_bytes(16),
        device_key=public_key_bytes(device),
        issued_at=issued_at,
        expires_at=expires_at if expires_at is not None else issued_at + 24 * 3600,
        scenes=scenes,
        ride_cap_fen=ride_cap_fen if scenes & codec.SCENE_TRANSIT else 0,
        medical_handle=secrets.token_bytes(16) if scenes & codec.SCENE_MEDICAL else bytes(16),
        payment_handle=secrets.token_bytes(16) if scenes & codec.SCENE_PAYMENT else bytes(16),
    )


def phone(issuer: ec.EllipticCurvePrivateKey, **fields: int) -> OneCodeClient:
    device = generate_device_key()
    return OneCodeClient(device, issue(issuer, device, **fields))  # type: ignore[arg-type]


def raw_code(
    issuer: ec.EllipticCurvePrivateKey,
    device: ec.EllipticCurvePrivateKey,
    *,
    version: int = codec.FORMAT_VERSION,
    kid: bytes | None = None,
    code_id: bytes = b"\x07" * 16,
    device_point: bytes | None = None,
    issued_at: int = NOW - 3600,
    expires_at: int = NOW + 3600,
    scenes: int = ALL,
    ride_cap_fen: int = 500,
    medical_handle: bytes = b"\x11" * 16,
    payment_handle: bytes = b"\x22" * 16,
    generated_at: int = NOW,
    counter: int = 1,
) -> bytes:
    """271 code bytes laid out by hand from any fields, signed by `issuer` and `device`."""
    signed = struct.pack(
        ">B8s16s65sIIBI16s16s",
        version,
        kid if kid is not None else codec.issuer_kid(issuer.public_key()),
        code_id,
        device_point if device_point is not None else public_key_bytes(device),
        issued_at,
        expires_at,
        scenes,
        ride_cap_fen,
        medical_handle,
        payment_handle,
    )
    authorisation = signed + es256_sign(issuer, signed)
    device_signed = authorisation + struct.pack(">II", generated_at, counter)
    return device_signed + es256_sign(device, device_signed)


def text_code(
    issuer: ec.EllipticCurvePrivateKey, device: ec.EllipticCurvePrivateKey, **fields: object
) -> str:
    return codec.pack(raw_code(issuer, device, **fields))  # type: ignore[arg-type]
