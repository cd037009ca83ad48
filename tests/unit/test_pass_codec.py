"""The pass wire format layer by layer: Base45 (RFC 9285 vectors and properties), bounded zlib, strict CBOR,
COSE_Sign1 with ES256."""

from __future__ import annotations

import zlib
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from health_code import codec
from health_code.codec import (
    BASE45_ALPHABET,
    Base45Error,
    CborError,
    CompressionError,
    CoseError,
    TooLarge,
    b45decode,
    b45encode,
)

KEY = ec.generate_private_key(ec.SECP256R1())
KID = bytes.fromhex("0011223344556677")


def reference_b45decode(text: str) -> bytes:
    """RFC 9285 section 4.2, written the plain way, to check the fast decoder against."""
    if len(text) % 3 == 1 or any(c not in BASE45_ALPHABET for c in text):
        raise ValueError
    out = bytearray()
    for i in range(0, len(text), 3):
        chunk = [BASE45_ALPHABET.index(c) for c in text[i : i + 3]]
        value = sum(d * 45**n for n, d in enumerate(chunk))
        if len(chunk) == 3:
            if value > 0xFFFF:
                raise ValueError
            out += value.to_bytes(2, "big")
        else:
            if value > 0xFF:
                raise ValueError
            out.append(value)
    return bytes(out)


# --- Base45 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"AB", "BB8"),  # RFC 9285 section 4.3
        (b"Hello!!", "%69 VD92EX0"),
        (b"base-45", "UJCLQE7W581"),
        (b"ietf!", "QED8WEX0"),  # section 4.4 (decoding example)
        (b"", ""),
        (b"\xff\xff", "FGW"),  # the largest triple, 65535
        (b"\xff", "U5"),  # the largest pair, 255
    ],
)
def test_rfc9285_vectors(data: bytes, text: str) -> None:
    assert b45encode(data) == text
    assert b45decode(text) == data


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("GGW", "above 65535"),  # 65536
        (":::", "above 65535"),  # 91124, the largest three digits can say
        ("000GGW", "above 65535"),  # in a later triple
        ("V5", "above 255"),  # 256
        ("::", "above 255"),
        ("A", "3k\\+1"),
        ("BB8A", "3k\\+1"),
        ("bb8", "outside the alphabet"),  # lower case is not Base45
        ("BB=", "outside the alphabet"),
        ("BB\x00", "outside the alphabet"),
        ("ÄB8", "outside the alphabet"),
        ("B\nB", "outside the alphabet"),
    ],
)
def test_invalid_base45_is_rejected(text: str, why: str) -> None:
    with pytest.raises(Base45Error, match=why):
        b45decode(text)


@given(st.binary(max_size=3000))
def test_base45_round_trips_and_uses_only_the_alphabet(data: bytes) -> None:
    text = b45encode(data)
    assert set(text) <= set(BASE45_ALPHABET)
    assert len(text) == 3 * (len(data) // 2) + 2 * (len(data) % 2)
    assert b45decode(text) == data


@given(st.text(alphabet=BASE45_ALPHABET + "abc=\x00é", max_size=60))
@example("FGW")
@example("FGX")
@example("U5V5")
def test_fast_decoder_agrees_with_the_rfc_text_on_any_input(text: str) -> None:
    try:
        expected: bytes | None = reference_b45decode(text)
    except ValueError:
        expected = None
    try:
        got: bytes | None = b45decode(text)
    except Base45Error:
        got = None
    assert got == expected


def test_non_text_is_a_base45_error() -> None:
    with pytest.raises(Base45Error):
        b45decode(b"BB8")  # type: ignore[arg-type]


# --- zlib -------------------------------------------------------------------------------------------------


@given(st.binary(max_size=5000))
def test_inflate_round_trips(data: bytes) -> None:
    assert codec.inflate(codec.deflate(data), limit=5000) == data


def test_inflate_stops_at_the_limit_and_accepts_exactly_the_limit() -> None:
    assert codec.inflate(codec.deflate(bytes(100)), limit=100) == bytes(100)
    with pytest.raises(TooLarge):
        codec.inflate(codec.deflate(bytes(101)), limit=100)


def test_zip_bomb_is_refused_without_inflating_it() -> None:
    bomb = codec.deflate(bytes(50_000_000))  # 50 MB of zeros in ~50 KB
    assert len(bomb) < 60_000
    with pytest.raises(TooLarge, match="more than 16384 bytes"):
        codec.inflate(bomb)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated"),
        (codec.deflate(b"x" * 300)[:-4], "truncated"),
        (codec.deflate(b"x" * 300) + b"\x00", "after the end"),
        (b"not zlib at all", "incorrect header"),
        (zlib.compress(b"x")[:1] + b"\x00" + zlib.compress(b"x")[2:], "header"),
    ],
)
def test_broken_zlib_is_a_compression_error(data: bytes, why: str) -> None:
    with pytest.raises(CompressionError, match=why):
        codec.inflate(data)


# --- CBOR -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00",  # bytes after the item
        bytes.fromhex("a201010102"),  # {1: 1, 1: 2}: duplicate keys
        b"\x81" * 40 + b"\x00",  # nested too deep
        bytes.fromhex("5b0000010000000000"),  # a byte string longer than the data
        bytes.fromhex("c11b8000000000000000"),  # an epoch time out of range
    ],
)
def test_strict_cbor_rejects(data: bytes) -> None:
    with pytest.raises(CborError):
        codec.cbor_loads(data)


def test_claims_cbor_rejects_duplicate_keys_and_depth() -> None:
    with pytest.raises(CborError):
        codec.claims_loads(bytes.fromhex("a201010102"))
    with pytest.raises(CborError):
        codec.claims_loads(b"\x81" * 40 + b"\x00")
    assert codec.claims_loads(cbor2.dumps({4: 1, 6: 0})) == {4: 1, 6: 0}


# --- COSE_Sign1 -------------------------------------------------------------------------------------------


def sign(data: bytes) -> bytes:
    return codec.es256_sign(KEY, data)


@given(st.binary(max_size=70_000), st.binary(max_size=300))
@settings(max_examples=60, deadline=None)
def test_sig_structure_is_the_cbor_array_of_rfc9052(payload: bytes, protected: bytes) -> None:
    assert codec.sig_structure(protected, payload) == cbor2.dumps(["Signature1", protected, b"", payload])


@given(st.binary(max_size=400), st.booleans())
@settings(max_examples=50, deadline=None)
def test_cose_sign1_round_trips_and_verifies(payload: bytes, tagged: bool) -> None:
    data = codec.cose_sign1_encode(payload, kid=KID, sign=sign, tagged=tagged)
    decoded = codec.cose_sign1_decode(data, require_tag=False)
    assert (decoded.kid, decoded.payload, decoded.alg) == (KID, payload, codec.ALG_ES256)
    assert decoded.protected == cbor2.dumps({1: -7, 4: KID})
    assert codec.es256_verify(KEY.public_key(), decoded.to_be_signed(), decoded.signature)
    assert not codec.es256_verify(
        KEY.public_key(), codec.sig_structure(decoded.protected, payload + b"x"), decoded.signature
    )
    item = cbor2.loads(data)
    assert (item.tag == 18) if tagged else isinstance(item, list)
    if not tagged:
        with pytest.raises(CoseError, match="not tagged"):
            codec.cose_sign1_decode(data)


def _cose(
    protected: Any, unprotected: Any, payload: Any = b"p", signature: Any = b"s" * 64, tag: int = 18
) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(tag, [protected, unprotected, payload, signature]))


def test_cose_kid_may_be_in_the_unprotected_header_and_odd_encodings_decode() -> None:
    decoded = codec.cose_sign1_decode(_cose(cbor2.dumps({1: -7}), {4: KID}))
    assert decoded.kid == KID
    # A non-minimal length head (0x59 for 2 bytes of payload) takes the generic path, same result.
    plain = _cose(cbor2.dumps({1: -7, 4: KID}), {}, b"pp")
    odd = plain.replace(b"\x42pp", b"\x59\x00\x02pp")
    assert codec.cose_sign1_decode(odd) == codec.cose_sign1_decode(plain)


@pytest.mark.parametrize(
    ("data", "error", "why"),
    [
        (_cose(cbor2.dumps({1: -35, 4: KID}), {}), CoseError, "not ES256"),  # ES384
        (_cose(cbor2.dumps({4: KID}), {}), CoseError, "no algorithm"),
        (_cose(b"", {}), CoseError, "no algorithm"),
        (_cose(cbor2.dumps({1: -7}), {}), CoseError, "no kid"),
        (_cose(cbor2.dumps({1: -7, 4: "text"}), {}), CoseError, "kid is not a byte string"),
        (_cose(cbor2.dumps({1: -7, 4: KID}), {4: KID}), CoseError, "both"),
        (_cose(cbor2.dumps({1: -7, 2: [4], 4: KID}), {}), CoseError, "critical"),
        (_cose(cbor2.dumps({1: -7, 4: KID}), {1: -7}), CoseError, "protected header"),
        (_cose(cbor2.dumps([1, -7]), {}), CoseError, "not a map"),
        (_cose(b"\xa2\x01", {}), CoseError, "not CBOR"),
        (_cose(cbor2.dumps({1: -7, 4: KID}), {}, tag=17), CoseError, "tag 17"),
        (_cose(cbor2.dumps({1: -7, 4: KID}), {}, payload=None), CoseError, "byte strings"),
        (_cose(cbor2.dumps({1: -7, 4: KID}), [], payload=b"p"), CoseError, "malformed"),
        (cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"p"])), CoseError, "array of four"),
        (cbor2.dumps({"not": "cose"}), CoseError, "not tagged"),
        (_cose(cbor2.dumps({1: -7, 4: KID}), {}) + b"\x00", CborError, "after the item"),
        (b"\xd2\x84", CborError, "CBOR"),
    ],
)
def test_cose_rejects(data: bytes, error: type[Exception], why: str) -> None:
    with pytest.raises(error, match=why):
        codec.cose_sign1_decode(data)


def test_es256_signatures_are_64_bytes_r_s() -> None:
    signature = codec.es256_sign(KEY, b"data")
    assert len(signature) == 64
    assert codec.es256_verify(KEY.public_key(), b"data", signature)
    assert not codec.es256_verify(KEY.public_key(), b"data", signature[:63])
    assert not codec.es256_verify(KEY.public_key(), b"data", bytes(64))
    assert not codec.es256_verify(ec.generate_private_key(ec.SECP256R1()).public_key(), b"data", signature)
    with pytest.raises(CoseError, match="64 bytes"):
        codec.cose_sign1_encode(b"p", kid=KID, sign=lambda data: b"short")


def test_pack_and_unpack_the_whole_text() -> None:
    cose = codec.cose_sign1_encode(b"claims", kid=KID, sign=sign)
    text = codec.pack(cose)
    assert text.startswith("TB1:") and set(text[4:]) <= set(BASE45_ALPHABET)
    assert codec.unpack(text) == ("TB1:", cose)
    assert codec.unpack(codec.pack(cose, codec.EU_PREFIX)) == ("HC1:", cose)
    with pytest.raises(codec.CodecError, match="prefix"):
        codec.unpack("XX1:" + text[4:])
    with pytest.raises(TooLarge):
        codec.unpack("TB1:" + "0" * codec.MAX_PAYLOAD_CHARS)
