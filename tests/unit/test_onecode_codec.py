"""The one-code wire format: the byte layout of the contract, the size limits, the errors of each decoder, the
published test vectors (docs/onecode-vectors.json), and property tests that fuzz unpack and parse.

Regenerate the vectors after a deliberate format change with `python -m tests.unit.test_onecode_codec`."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import segno
import zxingcpp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from health_code.codec import BASE45_ALPHABET, es256_verify
from onecode import codec
from onecode.validator import Bundle, SeenSet, verify
from tests.support.onecode_codes import NOW, issue, new_key, raw_code

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "docs" / "onecode-vectors.json"
ISSUER = new_key()
DEVICE = new_key()
COMPRESSED = DEVICE.public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
)
HYBRID = (
    bytes([6 + (DEVICE.public_key().public_numbers().y & 1)]) + codec.device_point(DEVICE.public_key())[1:]
)


# --- layout -----------------------------------------------------------------------------------------------


def test_the_sizes_are_the_contracts() -> None:
    assert (codec.DEVICE_KEY_BYTES, codec.SIGNED_BYTES, codec.AUTHORISATION_BYTES) == (65, 135, 199)
    assert (codec.DEVICE_SIGNED_BYTES, codec.CODE_BYTES) == (207, 271)
    assert len("TBO1:") + 407 == codec.TEXT_CHARS == 412


def test_every_field_sits_at_its_offset() -> None:
    device_point = codec.device_point(DEVICE.public_key())
    authorisation = codec.sign_authorisation(
        ISSUER,
        code_id=bytes(range(16)),
        device_key=device_point,
        issued_at=0x01020304,
        expires_at=0x01020304 + 86400,
        scenes=7,
        ride_cap_fen=0x0A0B0C0D,
        medical_handle=b"\x11" * 16,
        payment_handle=b"\x22" * 16,
    )
    raw = codec.append_dynamic(authorisation, DEVICE, 0x05060708, 0x090A0B0C)
    assert len(authorisation) == 199 and raw[:199] == authorisation and len(raw) == 271
    assert raw[0] == 1
    assert (
        raw[1:9]
        == hashlib.sha256(
            ISSUER.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).digest()[:8]
    )
    assert raw[9:25] == bytes(range(16))
    numbers = DEVICE.public_key().public_numbers()
    assert raw[25] == 4 and raw[26:58] == numbers.x.to_bytes(32, "big")
    assert raw[58:90] == numbers.y.to_bytes(32, "big") and raw[25:90] == device_point
    assert raw[90:94] == bytes.fromhex("01020304")
    assert raw[94:98] == (0x01020304 + 86400).to_bytes(4, "big")
    assert raw[98] == 7
    assert raw[99:103] == bytes.fromhex("0A0B0C0D")
    assert raw[103:119] == b"\x11" * 16 and raw[119:135] == b"\x22" * 16
    assert es256_verify(ISSUER.public_key(), raw[:135], raw[135:199])
    assert raw[199:203] == bytes.fromhex("05060708") and raw[203:207] == bytes.fromhex("090A0B0C")
    assert es256_verify(DEVICE.public_key(), raw[:207], raw[207:271])

    code = codec.parse(raw)
    auth = code.authorisation
    assert auth == codec.parse_authorisation(authorisation)
    assert (auth.version, auth.code_id, auth.device_key) == (1, bytes(range(16)), device_point)
    assert (auth.issued_at, auth.scenes, auth.ride_cap_fen) == (0x01020304, 7, 0x0A0B0C0D)
    assert auth.signed == raw[:135] and auth.signature == raw[135:199]
    assert (code.generated_at, code.counter) == (0x05060708, 0x090A0B0C)
    assert code.device_signed == raw[:207] and code.device_signature == raw[207:] and code.raw == raw
    assert code.code_id == auth.code_id and auth.allows(codec.SCENE_MEDICAL)


def test_pack_and_unpack_are_base45_behind_the_prefix() -> None:
    raw = raw_code(ISSUER, DEVICE)
    text = codec.pack(raw)
    assert text.startswith("TBO1:") and len(text) == 412
    assert set(text[5:]) <= set(BASE45_ALPHABET)
    assert codec.unpack(text) == raw
    # What a scanner in keyboard mode adds is ignored; anything else after the code is not.
    assert codec.unpack(text + "\r\n") == codec.unpack(text + "\n") == raw
    with pytest.raises(codec.TooLarge):
        codec.unpack(text + " ")


# --- making codes: what the format cannot carry is refused ------------------------------------------------


def _authorise(**changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "code_id": b"\x01" * 16,
        "device_key": codec.device_point(DEVICE.public_key()),
        "issued_at": NOW,
        "expires_at": NOW + 3600,
        "scenes": 7,
        "ride_cap_fen": 300,
        "medical_handle": b"\x02" * 16,
        "payment_handle": b"\x03" * 16,
    }
    fields.update(changes)
    return codec.sign_authorisation(ISSUER, **fields)


@pytest.mark.parametrize(
    "changes",
    [
        {"code_id": b"\x01" * 15},
        {"device_key": b"\x04" + b"\x01" * 64},  # no point on P-256
        {"device_key": COMPRESSED},  # the compressed form of a real key
        {"device_key": HYBRID},  # the hybrid form (06/07) of a real key
        {"device_key": b"\x03" + codec.device_point(DEVICE.public_key())[1:]},  # 65 bytes, not 04 first
        {"medical_handle": b"\x02" * 15},
        {"issued_at": -1},
        {"issued_at": 2**32},
        {"expires_at": NOW},  # not after issued_at
        {"expires_at": NOW + 86400 + 1},  # over 24 h
        {"scenes": 0},
        {"scenes": 8},
        {"ride_cap_fen": -1},
        {"scenes": 6, "ride_cap_fen": 300},  # a cap without transit
        {"scenes": 5, "medical_handle": b"\x02" * 16},  # a handle without medical
        {"scenes": 3, "payment_handle": b"\x03" * 16},  # a handle without payment
    ],
)
def test_sign_authorisation_refuses_what_the_format_cannot_carry(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _authorise(**changes)


def test_sign_authorisation_accepts_exactly_24_hours_and_a_single_scene() -> None:
    _authorise(expires_at=NOW + 86400)
    _authorise(scenes=1, medical_handle=bytes(16), payment_handle=bytes(16))


@pytest.mark.parametrize(("generated_at", "counter"), [(-1, 1), (2**32, 1), (NOW, -1), (NOW, 2**32)])
def test_append_dynamic_refuses_numbers_over_32_bits(generated_at: int, counter: int) -> None:
    with pytest.raises(ValueError):
        codec.append_dynamic(_authorise(), DEVICE, generated_at, counter)


def test_append_dynamic_needs_a_whole_authorisation() -> None:
    with pytest.raises(ValueError):
        codec.append_dynamic(_authorise()[:-1], DEVICE, NOW, 1)


# --- reading: each decoder's errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("TB1:ABC", codec.BadPrefix),
        (b"TBO1:000", codec.BadPrefix),
        (None, codec.BadPrefix),
        ("TBO1:" + "0" * 408, codec.TooLarge),
        ("TBO1:" + "\u4e00" * 500, codec.TooLarge),  # long text is refused before it is decoded
        ("TBO1:\u4e00", codec.BadBase45),
        ("TBO1:0", codec.BadBase45),
        ("TBO1:::", codec.BadBase45),
    ],
)
def test_unpack_errors(text: Any, error: type[codec.CodeError]) -> None:
    with pytest.raises(error) as caught:
        codec.unpack(text)
    assert caught.value.reason == error.reason


def test_parse_errors_and_their_reasons() -> None:
    raw = raw_code(ISSUER, DEVICE)
    for bad in (raw[:-1], raw + b"\x00", b"", bytearray(raw), "text"):
        with pytest.raises(codec.BadLength) as caught:
            codec.parse(bad)  # type: ignore[arg-type]
        assert caught.value.reason == "bad_length"
    with pytest.raises(codec.UnsupportedVersion) as version:
        codec.parse(b"\x02" + raw[1:])
    assert version.value.reason == "unsupported_version"
    with pytest.raises(codec.BadLength):
        codec.parse_authorisation(raw)
    with pytest.raises(codec.UnsupportedVersion):
        codec.parse_authorisation(b"\x00" + raw[1:199])


def test_every_error_class_names_a_validator_reason() -> None:
    from onecode.validator import REASONS

    classes = [codec.BadPrefix, codec.TooLarge, codec.BadBase45, codec.BadLength]
    classes += [codec.UnsupportedVersion, codec.BadDeviceKey]
    assert all(issubclass(c, codec.CodeError) and c.reason in REASONS for c in classes)


def test_issuer_kid_is_the_first_8_bytes_of_the_spki_hash() -> None:
    der = ISSUER.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert codec.issuer_kid(ISSUER.public_key()) == hashlib.sha256(der).digest()[:8]


# --- the device key: the uncompressed point only ---------------------------------------------------------

P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1


def test_the_device_key_is_the_uncompressed_point_and_loads_back() -> None:
    point = codec.device_point(DEVICE.public_key())
    assert len(point) == codec.DEVICE_KEY_BYTES == 65 and point[0] == 4
    assert codec.device_public_key(point).public_numbers() == DEVICE.public_key().public_numbers()


@pytest.mark.parametrize(
    "device_key",
    [
        COMPRESSED,  # 33 bytes: the format carries the uncompressed point only
        COMPRESSED + bytes(32),  # the compressed point padded to 65 bytes
        HYBRID,  # 06/07 || X || Y: the same coordinates, another first byte
        b"\x04" + codec.device_point(DEVICE.public_key())[1:33] + bytes(32),  # y = 0: off the curve
        b"\x04" + P256_P.to_bytes(32, "big") + codec.device_point(DEVICE.public_key())[33:],  # x = p
        b"\x00" * 65,
        b"\x00",  # the point at infinity
        codec.device_point(DEVICE.public_key())[:-1],
        codec.device_point(DEVICE.public_key()) + b"\x00",
    ],
    # Named: the keys are random per process, and pytest-xdist needs the same test ids in every worker.
    ids=[
        "compressed",
        "compressed-padded",
        "hybrid",
        "y-zero",
        "x-is-p",
        "zeros",
        "infinity",
        "short",
        "long",
    ],
)
def test_anything_but_an_uncompressed_point_on_the_curve_is_a_bad_device_key(device_key: bytes) -> None:
    with pytest.raises(codec.BadDeviceKey) as caught:
        codec.device_public_key(device_key)
    assert caught.value.reason == "bad_device_key"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(min_size=65, max_size=65).map(lambda tail: b"\x04" + tail[1:]), st.binary(max_size=70)
    )
)
def test_device_public_key_of_any_bytes_raises_only_bad_device_key(device_key: bytes) -> None:
    try:
        key = codec.device_public_key(device_key)
    except codec.BadDeviceKey:
        return
    assert codec.device_point(key) == device_key


# --- the QR -----------------------------------------------------------------------------------------------


def test_a_code_fits_qr_version_13_at_level_m_and_scans_back() -> None:
    text = codec.pack(codec.append_dynamic(issue(ISSUER, DEVICE), DEVICE, NOW, 1))
    qr = segno.make(text, error="m", micro=False, boost_error=False)
    assert qr.error == "M" and qr.mode == "alphanumeric"
    assert isinstance(qr.version, int) and qr.version <= 13
    png = io.BytesIO()
    qr.save(png, kind="png", scale=4)
    png.seek(0)
    found = zxingcpp.read_barcodes(
        Image.open(png), formats=zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
    )
    assert len(found) == 1 and found[0].text == text
    bundle = Bundle.of([ISSUER.public_key()])
    assert verify(found[0].text, bundle, NOW, scene=codec.SCENE_TRANSIT).valid


# --- properties -------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=450), st.text(alphabet=BASE45_ALPHABET, max_size=450).map("TBO1:".__add__)))
def test_unpack_and_parse_raise_only_code_errors(text: str) -> None:
    try:
        codec.parse(codec.unpack(text))
    except codec.CodeError as exc:
        assert exc.reason in {"bad_prefix", "too_large", "bad_base45", "bad_length", "unsupported_version"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=330))
def test_parse_of_any_bytes_raises_only_code_errors(raw: bytes) -> None:
    try:
        code = codec.parse(raw)
    except codec.CodeError:
        return
    assert len(raw) == 271 and code.raw == raw


FIELDS = st.tuples(
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=65, max_size=65),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=64, max_size=64),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=64, max_size=64),
)


@settings(max_examples=200, deadline=None)
@given(FIELDS)
def test_parse_reads_back_every_field_through_the_text(fields: tuple[Any, ...]) -> None:
    raw = struct.pack(">B8s16s65sIIBI16s16s64sII64s", 1, *fields)
    code = codec.parse(codec.unpack(codec.pack(raw)))
    assert tuple(code.authorisation[1:11]) == fields[:10]
    assert (code.generated_at, code.counter, code.device_signature) == fields[10:]


# --- published test vectors -------------------------------------------------------------------------------

VECTOR_ISSUER_SCALAR = hashlib.sha256(b"tongban onecode test vector: issuer").digest()
VECTOR_DEVICE_SCALAR = hashlib.sha256(b"tongban onecode test vector: device").digest()
VECTOR_ISSUED_AT = 1_767_225_600  # 2026-01-01T00:00:00Z


def _key(scalar: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())


def _rfc6979(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """Deterministic ECDSA (RFC 6979), so the published signatures can be reproduced exactly."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _vector_code(fields: dict[str, Any], generated_at: int, counter: int) -> tuple[bytes, bytes]:
    """(authorisation, code) laid out by the library, with RFC 6979 signatures in place of random ones."""
    issuer, device = _key(VECTOR_ISSUER_SCALAR), _key(VECTOR_DEVICE_SCALAR)
    signed = codec.sign_authorisation(issuer, **fields)[: codec.SIGNED_BYTES]
    authorisation = signed + _rfc6979(issuer, signed)
    device_signed = codec.append_dynamic(authorisation, device, generated_at, counter)[
        : codec.DEVICE_SIGNED_BYTES
    ]
    return authorisation, device_signed + _rfc6979(device, device_signed)


def build_vectors() -> dict[str, Any]:
    issuer, device = _key(VECTOR_ISSUER_SCALAR), _key(VECTOR_DEVICE_SCALAR)
    device_point = codec.device_point(device.public_key())
    bundle = Bundle.of([issuer.public_key()], generated_at=datetime(2026, 1, 1, tzinfo=UTC))
    t0 = VECTOR_ISSUED_AT
    cases: list[dict[str, Any]] = []
    definitions = [
        (
            "all scenes",
            {"scenes": 7, "ride_cap_fen": 400, "medical": b"\x11" * 16, "payment": b"\x22" * 16},
            t0 + 3600,
            1,
            [
                {"now": t0 + 3605, "scene": "transit", "fare_fen": 200, "expect": "ok"},
                {"now": t0 + 3605, "scene": "medical", "expect": "ok"},
                {"now": t0 + 3605, "scene": "transit", "fare_fen": 401, "expect": "over_cap"},
                {"now": t0 + 3600 + 91, "scene": "transit", "expect": "stale"},
                {"now": t0 + 3600 - 31, "scene": "payment", "expect": "future"},
                {"now": t0 + 86400 + 31, "scene": "transit", "expect": "expired"},
                {"now": t0 + 3605, "scene": "transit", "revoked": True, "expect": "revoked"},
            ],
        ),
        (
            "transit only",
            {"scenes": 1, "ride_cap_fen": 300, "medical": bytes(16), "payment": bytes(16)},
            t0 + 7200,
            42,
            [
                {"now": t0 + 7200, "scene": "transit", "fare_fen": 300, "expect": "ok"},
                {"now": t0 + 7200, "scene": "medical", "expect": "wrong_scene"},
                {"now": t0 + 7200, "scene": "payment", "expect": "wrong_scene"},
            ],
        ),
    ]
    for index, (name, spec, generated_at, counter, checks) in enumerate(definitions):
        fields = {
            "code_id": bytes([index + 1]) * 16,
            "device_key": device_point,
            "issued_at": t0,
            "expires_at": t0 + 86400,
            "scenes": spec["scenes"],
            "ride_cap_fen": spec["ride_cap_fen"],
            "medical_handle": spec["medical"],
            "payment_handle": spec["payment"],
        }
        authorisation, raw = _vector_code(fields, generated_at, counter)
        cases.append(
            {
                "name": name,
                "fields": {
                    key: value.hex() if isinstance(value, bytes) else value for key, value in fields.items()
                }
                | {"generated_at": generated_at, "counter": counter},
                "authorisation_hex": authorisation.hex(),
                "code_hex": raw.hex(),
                "text": codec.pack(raw),
                "checks": checks,
            }
        )
    tampered = bytearray(bytes.fromhex(cases[0]["code_hex"]))
    tampered[203:207] = (2).to_bytes(4, "big")
    return {
        "format": "tongban-onecode-vectors/1",
        "about": "docs/onecode-format.md. Signatures are RFC 6979 deterministic ECDSA P-256/SHA-256 (r || s),"
        " so they can be reproduced from the private keys; any ES256 signature verifies the same way.",
        "issuer_private_key": VECTOR_ISSUER_SCALAR.hex(),
        "issuer_kid": codec.issuer_kid(issuer.public_key()).hex(),
        "device_private_key": VECTOR_DEVICE_SCALAR.hex(),
        "device_public_key": device_point.hex(),
        "bundle": json.loads(bundle.to_json()),
        "vectors": cases,
        "refused": [
            {"name": "counter changed after signing", "text": codec.pack(bytes(tampered)),
             "now": t0 + 3605, "scene": "transit", "expect": "bad_device_signature"},
            {"name": "a health pass", "text": "TB1:6BFOXN", "now": t0, "scene": "transit", "expect": "bad_prefix"},
        ],
    }  # fmt: skip


def _check(vectors: dict[str, Any], text: str, check: dict[str, Any], code_id: bytes) -> None:
    bundle = Bundle.from_json(json.dumps(vectors["bundle"]))
    if check.get("revoked"):
        bundle = Bundle(bundle.issuer_keys, frozenset([code_id]), bundle.generated_at)
    verdict = verify(
        text,
        bundle,
        check["now"],
        scene=codec.SCENE_NAMES[check["scene"]],
        fare_fen=check.get("fare_fen"),
        seen=SeenSet(),
    )
    assert verdict.reason == check["expect"], (text, check)


def test_the_published_vectors_are_what_the_library_makes_and_verifies() -> None:
    published = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert published == build_vectors(), "docs/onecode-vectors.json is stale: regenerate it (see top)"
    for case in published["vectors"]:
        raw = bytes.fromhex(case["code_hex"])
        assert codec.unpack(case["text"]) == raw and raw[:199] == bytes.fromhex(case["authorisation_hex"])
        fields = case["fields"]
        code = codec.parse(raw)
        assert code.authorisation.code_id.hex() == fields["code_id"]
        assert (code.generated_at, code.counter) == (fields["generated_at"], fields["counter"])
        for check in case["checks"]:
            _check(published, case["text"], check, code.code_id)
    for case in published["refused"]:
        _check(published, case["text"], case, b"")


def write_vectors() -> None:
    VECTORS.write_text(json.dumps(build_vectors(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_vectors()
