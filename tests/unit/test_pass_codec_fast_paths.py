"""The verifier's short cuts give exactly what the general code gives: the DER signature built by hand is
encode_dss_signature's, and cose_sign1_signed (the common layout cut from the bytes) agrees with
cose_sign1_decode + sig_structure on every input, raising the same errors."""

from __future__ import annotations

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import example, given
from hypothesis import strategies as st

from health_code import codec
from health_code.codec import CborError, CoseError

KID = bytes.fromhex("0011223344556677")
SIGNATURE = bytes(range(1, 65))


def reference(data: bytes, require_tag: bool) -> tuple[bytes, bytes, bytes, bytes] | type[Exception]:
    try:
        cose = codec.cose_sign1_decode(data, require_tag=require_tag)
    except (CborError, CoseError) as exc:
        return type(exc)
    return cose.kid, codec.sig_structure(cose.protected, cose.payload), cose.payload, cose.signature


def signed(data: bytes, require_tag: bool) -> tuple[bytes, bytes, bytes, bytes] | type[Exception]:
    try:
        return codec.cose_sign1_signed(data, require_tag=require_tag)
    except (CborError, CoseError) as exc:
        return type(exc)


@given(st.binary(min_size=64, max_size=64))
@example(bytes(64))
@example(bytes(32) + b"\x80" * 32)
@example(b"\x00\x7f" + bytes(30) + b"\x00\x00\x80" + bytes(29))
@example(b"\xff" * 64)
def test_der_signature_is_encode_dss_signatures(signature: bytes) -> None:
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    assert codec._der_signature(signature) == encode_dss_signature(r, s)


@given(
    payload=st.binary(max_size=600),
    kid=st.binary(min_size=0, max_size=20),
    signature_size=st.sampled_from([64, 64, 63, 65, 0]),
    tagged=st.booleans(),
    require_tag=st.booleans(),
    unprotected=st.sampled_from([{}, {4: KID}, {1: -7}]),
    alg=st.sampled_from([-7, -7, -35]),
)
def test_the_common_layout_agrees_with_the_general_decoder(
    payload: bytes,
    kid: bytes,
    signature_size: int,
    tagged: bool,
    require_tag: bool,
    unprotected: dict[int, object],
    alg: int,
) -> None:
    protected = cbor2.dumps({1: alg, 4: kid} if kid else {1: alg})
    body = [protected, unprotected, payload, SIGNATURE[:signature_size] + bytes(max(0, signature_size - 64))]
    data = cbor2.dumps(cbor2.CBORTag(18, body) if tagged else body)
    assert signed(data, require_tag) == reference(data, require_tag)


@given(st.binary(max_size=400), st.booleans())
def test_any_bytes_get_the_general_decoders_answer(data: bytes, require_tag: bool) -> None:
    assert signed(data, require_tag) == reference(data, require_tag)


@pytest.mark.parametrize(
    "data",
    [
        # A payload of 30 bytes with a two-byte length head (not the shortest form): re-encoded, not cut.
        b"\xd2\x84\x4d"
        + cbor2.dumps({1: -7, 4: KID})
        + b"\xa0\x59\x00\x1e"
        + bytes(30)
        + b"\x58\x40"
        + SIGNATURE,
        # The same with a one-byte length under 24.
        b"\xd2\x84\x4d" + cbor2.dumps({1: -7, 4: KID}) + b"\xa0\x58\x05" + bytes(5) + b"\x58\x40" + SIGNATURE,
        # Bytes after the signature, a truncated signature, a non-empty unprotected header.
        b"\xd2\x84\x4d"
        + cbor2.dumps({1: -7, 4: KID})
        + b"\xa0\x58\x1e"
        + bytes(30)
        + b"\x58\x40"
        + SIGNATURE
        + b"\0",
        b"\xd2\x84\x4d"
        + cbor2.dumps({1: -7, 4: KID})
        + b"\xa0\x58\x1e"
        + bytes(30)
        + b"\x58\x40"
        + SIGNATURE[:-1],
        b"\xd2\x84\x4d"
        + cbor2.dumps({1: -7, 4: KID})
        + b"\xa1\x04\x41\x00\x58\x1e"
        + bytes(30)
        + b"\x58\x40"
        + SIGNATURE,
    ],
)
def test_unusual_encodings_take_the_general_path(data: bytes) -> None:
    assert signed(data, True) == reference(data, True)


def test_passes_as_issued_take_the_short_path() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for size in (30, 200, 300):  # one-byte and two-byte payload lengths
        cose = codec.cose_sign1_encode(bytes(size), kid=KID, sign=lambda data: codec.es256_sign(key, data))
        assert codec._common_layout(cose, True) == reference(cose, True)
