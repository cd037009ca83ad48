"""Offline verification: every reason a validator gives, the skew edges, the seen-set, the bundle document,
and a fuzzer proving verify() answers every input with a documented verdict."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from onecode import codec
from onecode.client import OneCodeClient, generate_device_key
from onecode.validator import REASONS, Bundle, BundleError, SeenSet, Verdict, verify
from tests.support.onecode_codes import ALL, NOW, issue, new_key, phone, raw_code, text_code

ISSUER = new_key()
DEVICE = new_key()
BUNDLE = Bundle.of([ISSUER.public_key()], generated_at=datetime(2026, 1, 1, tzinfo=UTC))
TRANSIT = codec.SCENE_TRANSIT


def check(text: str, reason: str, *, bundle: Bundle = BUNDLE, now: float = NOW, **kwargs: object) -> Verdict:
    kwargs.setdefault("scene", TRANSIT)
    verdict = verify(text, bundle, now, **kwargs)  # type: ignore[arg-type]
    assert verdict.reason == reason, verdict
    assert verdict.valid == (reason == "ok")
    return verdict


def test_a_code_from_the_reference_client_is_valid_in_every_scene_it_has() -> None:
    client = phone(ISSUER)
    text = client.make_code(NOW)
    for scene in (codec.SCENE_TRANSIT, codec.SCENE_MEDICAL, codec.SCENE_PAYMENT):
        verdict = check(text, "ok", scene=scene)
    assert verdict.code is not None and verdict.code.code_id == client.code_id
    assert verdict.code.counter == 1 and verdict.code.generated_at == NOW


# --- the codec's reasons ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "bad_prefix"),
        ("TB1:NCFOXN", "bad_prefix"),  # a health pass is not a one-code
        ("tbo1:" + "0" * 407, "bad_prefix"),
        ("TBO1:" + "0" * 408, "too_large"),
        ("TBO1:" + "~" * 10_000, "too_large"),  # checked before the characters are looked at
        ("TBO1:abc", "bad_base45"),
        ("TBO1:A", "bad_base45"),  # 3k+1 characters
        ("TBO1:GGW", "bad_base45"),  # a triple above 65535
        ("TBO1:", "bad_length"),
        ("TBO1:BB8", "bad_length"),
    ],
)
def test_texts_that_are_not_one_codes_are_refused_with_the_codec_reason(text: str, reason: str) -> None:
    assert check(text, reason).code is None


def test_a_code_one_byte_short_or_long_is_bad_length() -> None:
    raw = raw_code(ISSUER, DEVICE)
    check(codec.pack(raw[:-1]), "bad_length")
    check(codec.pack(raw + b"\x00"), "too_large")  # 272 bytes -> 413 characters: over the size limit
    check(codec.pack(raw[:-2]), "bad_length")


def test_another_format_version_is_unsupported() -> None:
    check(text_code(ISSUER, DEVICE, version=2), "unsupported_version")


# --- signatures -------------------------------------------------------------------------------------------


def test_a_code_from_an_issuer_outside_the_bundle_is_unknown_issuer() -> None:
    stranger = new_key()
    check(text_code(stranger, DEVICE), "unknown_issuer")


def test_a_forged_authorisation_is_refused() -> None:
    # Signed by another key that claims our kid.
    forged = text_code(new_key(), DEVICE, kid=codec.issuer_kid(ISSUER.public_key()))
    check(forged, "bad_issuer_signature")
    # A genuine authorisation with a raised ride cap: the issuer signature no longer covers it.
    raw = bytearray(raw_code(ISSUER, DEVICE, ride_cap_fen=200))
    raw[99:103] = (100_000).to_bytes(4, "big")
    check(codec.pack(bytes(raw)), "bad_issuer_signature")


def test_an_authorisation_for_anything_but_an_uncompressed_point_on_the_curve_is_bad_device_key() -> None:
    point = codec.device_point(DEVICE.public_key())
    off_curve = point[:-1] + bytes([point[-1] ^ 1])  # y changed: no longer on the curve
    with pytest.raises(codec.BadDeviceKey):
        codec.device_public_key(off_curve)
    check(text_code(ISSUER, DEVICE, device_point=off_curve), "bad_device_key")
    hybrid = bytes([6 + (point[-1] & 1)]) + point[1:]  # the same coordinates, the hybrid first byte
    check(text_code(ISSUER, DEVICE, device_point=hybrid), "bad_device_key")
    compressed = bytes([2 + (point[-1] & 1)]) + point[1:33] + bytes(32)  # the compressed form, padded
    check(text_code(ISSUER, DEVICE, device_point=compressed), "bad_device_key")
    check(text_code(ISSUER, DEVICE, device_point=b"\x04" + b"\x01" * 64), "bad_device_key")


def test_a_code_signed_by_another_device_or_altered_after_signing_is_bad_device_signature() -> None:
    authorisation = issue(ISSUER, DEVICE)
    thief = new_key()
    check(codec.pack(codec.append_dynamic(authorisation, thief, NOW, 1)), "bad_device_signature")
    raw = bytearray(codec.append_dynamic(authorisation, DEVICE, NOW, 1))
    raw[203:207] = (2).to_bytes(4, "big")  # a replayed code with the counter bumped
    check(codec.pack(bytes(raw)), "bad_device_signature")


# --- time -------------------------------------------------------------------------------------------------


def test_the_time_window_with_its_skew_edges() -> None:
    skew = 30
    early = text_code(ISSUER, DEVICE, issued_at=NOW + skew, generated_at=NOW)
    check(early, "ok")
    check(text_code(ISSUER, DEVICE, issued_at=NOW + skew + 1, generated_at=NOW), "not_yet_valid")
    check(text_code(ISSUER, DEVICE, expires_at=NOW - skew), "ok")
    check(text_code(ISSUER, DEVICE, expires_at=NOW - skew - 1), "expired")
    max_age = 60
    check(text_code(ISSUER, DEVICE, generated_at=NOW - max_age - skew), "ok")
    check(text_code(ISSUER, DEVICE, generated_at=NOW - max_age - skew - 1), "stale")
    check(text_code(ISSUER, DEVICE, generated_at=NOW + skew), "ok")
    check(text_code(ISSUER, DEVICE, generated_at=NOW + skew + 1), "future")


def test_an_expired_authorisation_is_refused_even_with_a_fresh_dynamic_block() -> None:
    text = text_code(ISSUER, DEVICE, issued_at=NOW - 2 * 86400, expires_at=NOW - 86400, generated_at=NOW)
    check(text, "expired")


def test_skew_and_max_age_are_the_validators_choice() -> None:
    text = text_code(ISSUER, DEVICE, generated_at=NOW - 200)
    check(text, "stale")
    check(text, "ok", max_age=180, skew=20)
    check(text, "stale", max_age=180, skew=19)


# --- revocation, scene, cap -------------------------------------------------------------------------------


def test_a_revoked_code_id_is_refused() -> None:
    code_id = b"\x42" * 16
    text = text_code(ISSUER, DEVICE, code_id=code_id)
    revoked = Bundle.of([ISSUER.public_key()], [code_id, b"\x43" * 16])
    check(text, "revoked", bundle=revoked)
    check(text, "ok")


def test_a_scene_the_authorisation_lacks_is_wrong_scene() -> None:
    transit_only = text_code(
        ISSUER, DEVICE, scenes=TRANSIT, medical_handle=bytes(16), payment_handle=bytes(16)
    )
    check(transit_only, "ok", scene=TRANSIT)
    check(transit_only, "wrong_scene", scene=codec.SCENE_MEDICAL)
    check(transit_only, "wrong_scene", scene=codec.SCENE_PAYMENT)
    everything = text_code(ISSUER, DEVICE, scenes=ALL)
    for not_a_scene in (0, 3, 8, -1, ALL):
        check(everything, "wrong_scene", scene=not_a_scene)


def test_a_fare_over_the_ride_cap_is_refused_and_the_cap_is_only_for_transit() -> None:
    text = text_code(ISSUER, DEVICE, ride_cap_fen=300)
    check(text, "ok", fare_fen=300)
    check(text, "over_cap", fare_fen=301)
    check(text, "ok", fare_fen=None)
    check(text, "ok", scene=codec.SCENE_PAYMENT, fare_fen=10_000)


# --- replays and the seen-set -----------------------------------------------------------------------------


def test_the_same_code_twice_is_a_replay_and_the_next_code_is_not() -> None:
    seen = SeenSet()
    client = phone(ISSUER)
    first = client.make_code(NOW)
    check(first, "ok", seen=seen)
    check(first, "replay", seen=seen)
    check(client.make_code(NOW), "ok", seen=seen)  # same step, next counter
    assert len(seen) == 2
    check(first, "ok")  # without a seen-set nothing is remembered


def test_the_seen_set_is_consulted_and_updated_only_when_everything_else_passed() -> None:
    seen = SeenSet()
    client = phone(ISSUER, ride_cap_fen=100)
    text = client.make_code(NOW)
    check(text, "over_cap", seen=seen, fare_fen=200)
    check(text, "wrong_scene", seen=seen, scene=8)
    assert len(seen) == 0
    check(text, "ok", seen=seen, fare_fen=100)
    check(text, "replay", seen=seen, fare_fen=100)
    # Once the code is too old, it is stale, not a replay: the pair can be forgotten by then.
    later = NOW + 60 + 30 + 1
    check(text, "stale", seen=seen, now=later)
    assert seen.prune(later + 1) == 1 and len(seen) == 0


def test_the_seen_set_stays_within_its_bound() -> None:
    seen = SeenSet(max_entries=3)
    for counter in range(5):
        assert seen.add(b"\x01" * 16, counter, keep_until=NOW + 100, now=NOW)
    assert len(seen) == 3 and seen.dropped == 2
    assert (b"\x01" * 16, 4) in seen and (b"\x01" * 16, 0) not in seen
    # Expired pairs go before live ones are pushed out.
    seen = SeenSet(max_entries=2)
    seen.add(b"a" * 16, 1, keep_until=NOW - 1, now=NOW)
    seen.add(b"b" * 16, 1, keep_until=NOW + 100, now=NOW)
    seen.add(b"c" * 16, 1, keep_until=NOW + 100, now=NOW)
    assert (b"b" * 16, 1) in seen and seen.dropped == 0
    with pytest.raises(ValueError):
        SeenSet(max_entries=0)


def test_the_seen_set_rows_survive_a_round_trip() -> None:
    seen = SeenSet()
    seen.add(b"\x05" * 16, 9, keep_until=NOW + 5, now=NOW)
    again = SeenSet.from_rows(json.loads(json.dumps(seen.rows())))
    assert (b"\x05" * 16, 9) in again and again.rows() == seen.rows()


# --- the bundle's cache of verified authorisations ---------------------------------------------------------


def test_the_next_code_of_a_phone_seen_before_is_verified_the_same_way() -> None:
    bundle = Bundle.of([ISSUER.public_key()])
    client = phone(ISSUER)
    check(client.make_code(NOW), "ok", bundle=bundle)
    check(client.make_code(NOW + 30), "ok", bundle=bundle, now=NOW + 30)
    # The device signature is still checked on every code.
    raw = bytearray(codec.unpack(client.make_code(NOW)))
    raw[-1] ^= 1
    check(codec.pack(bytes(raw)), "bad_device_signature", bundle=bundle)
    # A bundle without the issuer key does not trust what another bundle verified.
    other = Bundle.of([new_key().public_key()])
    check(client.make_code(NOW), "unknown_issuer", bundle=other)


# --- the bundle document ----------------------------------------------------------------------------------


def test_the_bundle_document_round_trips_in_the_contract_shape() -> None:
    second = new_key()
    bundle = Bundle.of(
        [ISSUER.public_key(), second.public_key()],
        [b"\x01" * 16],
        generated_at=datetime(2026, 1, 1, 8, 0, tzinfo=UTC),
    )
    document = json.loads(bundle.to_json())
    assert document["format"] == "tongban-onecode-bundle/1"
    assert document["generated_at"] == "2026-01-01T08:00:00Z"
    assert document["revoked"] == ["01" * 16]
    kids = {entry["kid"] for entry in document["issuer_keys"]}
    assert kids == {codec.issuer_kid(ISSUER.public_key()).hex(), codec.issuer_kid(second.public_key()).hex()}
    loaded = Bundle.from_json(bundle.to_json())
    assert set(loaded.issuer_keys) == set(bundle.issuer_keys) and loaded.revoked == bundle.revoked
    assert loaded.generated_at == bundle.generated_at
    check(text_code(second, DEVICE), "ok", bundle=loaded)


def _document(**changes: object) -> bytes:
    document = json.loads(Bundle.of([ISSUER.public_key()]).to_json())
    document.update(changes)
    return json.dumps(document).encode()


def _key_entry(key: object, kid: str | None = None) -> dict[str, str]:
    der = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {"kid": kid or "00" * 8, "public_key": base64.b64encode(der).decode()}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        _document(format="tongban-onecode-bundle/2"),
        _document(generated_at="yesterday"),
        _document(generated_at="2026-01-01T00:00:00"),  # no offset
        _document(issuer_keys=[{"kid": "00" * 8, "public_key": "%%%"}]),
        _document(issuer_keys=[_key_entry(ISSUER.public_key())]),  # kid not the key's
        _document(issuer_keys=[_key_entry(ed25519.Ed25519PrivateKey.generate().public_key())]),
        _document(issuer_keys=[_key_entry(ec.generate_private_key(ec.SECP384R1()).public_key())]),
        _document(revoked=["zz" * 16]),
        _document(revoked=["01" * 8]),
        _document(revoked="01"),
    ],
)
def test_a_malformed_bundle_is_refused(data: bytes) -> None:
    with pytest.raises(BundleError):
        Bundle.from_json(data)


# --- every reason has a test; the fuzzer ------------------------------------------------------------------


def _replayed() -> tuple[str, dict[str, object]]:
    seen = SeenSet()
    text = phone(ISSUER).make_code(NOW)
    verify(text, BUNDLE, NOW, scene=TRANSIT, seen=seen)
    return text, {"seen": seen}


# One case per reason, in REASONS order: a reason added to the validator without a case here fails below.
REASON_CASES: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
    "ok": lambda: (text_code(ISSUER, DEVICE), {}),
    "bad_prefix": lambda: ("HC1:6BF", {}),
    "too_large": lambda: ("TBO1:" + "0" * 408, {}),
    "bad_base45": lambda: ("TBO1:0000", {}),
    "bad_length": lambda: ("TBO1:000", {}),
    "unsupported_version": lambda: (text_code(ISSUER, DEVICE, version=0), {}),
    "unknown_issuer": lambda: (text_code(new_key(), DEVICE), {}),
    "bad_issuer_signature": lambda: (
        text_code(new_key(), DEVICE, kid=codec.issuer_kid(ISSUER.public_key())),
        {},
    ),
    "bad_device_key": lambda: (text_code(ISSUER, DEVICE, device_point=b"\x04" + b"\xff" * 64), {}),
    "bad_device_signature": lambda: (
        codec.pack(codec.append_dynamic(issue(ISSUER, DEVICE), new_key(), NOW, 1)),
        {},
    ),
    "not_yet_valid": lambda: (text_code(ISSUER, DEVICE, issued_at=NOW + 3600, expires_at=NOW + 7200), {}),
    "expired": lambda: (text_code(ISSUER, DEVICE, expires_at=NOW - 3600), {}),
    "stale": lambda: (text_code(ISSUER, DEVICE, generated_at=NOW - 3600), {}),
    "future": lambda: (text_code(ISSUER, DEVICE, generated_at=NOW + 3600), {}),
    "revoked": lambda: (
        text_code(ISSUER, DEVICE, code_id=b"\x09" * 16),
        {"bundle": Bundle.of([ISSUER.public_key()], [b"\x09" * 16])},
    ),
    "wrong_scene": lambda: (
        text_code(ISSUER, DEVICE, scenes=codec.SCENE_MEDICAL, ride_cap_fen=0, payment_handle=bytes(16)),
        {},
    ),
    "over_cap": lambda: (text_code(ISSUER, DEVICE, ride_cap_fen=100), {"fare_fen": 101}),
    "replay": _replayed,
}


@pytest.mark.parametrize("reason", REASONS)
def test_every_documented_reason_has_a_case(reason: str) -> None:
    text, kwargs = REASON_CASES[reason]()
    check(text, reason, **kwargs)


def test_the_reasons_are_the_contracts() -> None:
    assert list(REASON_CASES) == list(REASONS)
    assert len(set(REASONS)) == 18


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=500))
def test_verify_answers_any_text_with_a_documented_reason(text: str) -> None:
    verdict = verify(text, BUNDLE, NOW, scene=TRANSIT, seen=SeenSet())
    assert verdict.reason in REASONS and not verdict.valid


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:", min_size=403, max_size=410))
def test_verify_answers_any_base45_text_of_about_the_right_length(body: str) -> None:
    verdict = verify("TBO1:" + body, BUNDLE, NOW, scene=TRANSIT)
    assert verdict.reason in REASONS and not verdict.valid


GOOD = codec.unpack(OneCodeClient(DEVICE, issue(ISSUER, DEVICE)).make_code(NOW))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, codec.CODE_BYTES - 1), st.integers(1, 255))
def test_changing_any_byte_of_a_valid_code_makes_it_invalid(position: int, flip: int) -> None:
    raw = bytearray(GOOD)
    raw[position] ^= flip
    verdict = verify(codec.pack(bytes(raw)), BUNDLE, NOW, scene=TRANSIT)
    assert not verdict.valid and verdict.reason in REASONS


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=codec.CODE_BYTES, max_size=codec.CODE_BYTES))
def test_verify_answers_any_code_sized_bytes(raw: bytes) -> None:
    verdict = verify(codec.pack(raw), BUNDLE, NOW, scene=TRANSIT)
    assert not verdict.valid and verdict.reason in REASONS


def test_a_phone_with_a_new_device_key_and_an_old_authorisation_cannot_make_codes() -> None:
    authorisation = issue(ISSUER, DEVICE)
    with pytest.raises(ValueError, match="another device key"):
        OneCodeClient(generate_device_key(), authorisation)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        JSON_VALUES.map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries(
            {
                "format": st.just("tongban-onecode-bundle/1"),
                "generated_at": st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01", "x", ""]),
                "issuer_keys": st.lists(
                    st.fixed_dictionaries({"kid": st.text(max_size=20), "public_key": st.text(max_size=120)}),
                    max_size=2,
                ),
                "revoked": st.lists(st.text(max_size=40), max_size=3),
            }
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_bundle_from_json_raises_only_bundle_errors(data: bytes) -> None:
    with contextlib.suppress(BundleError):
        Bundle.from_json(data)
