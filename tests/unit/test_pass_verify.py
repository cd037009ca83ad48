"""verify(): a case for every reason, the sign -> verify pipeline as a property, fuzzing that no input makes
it raise, key usage, signer validity, revocation, other issuers (ours and the EU's), and a real EU DCC."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import cbor2
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from health_code import certs, codec
from health_code.codec import BASE45_ALPHABET, CLAIM_TONGBAN
from health_code.trust import TrustStore, build_trust_list, load_eu_trust_list, load_trust_list, revocation_id
from health_code.verify import (
    REASONS,
    PassContent,
    PassSigningError,
    Verdict,
    encode_pass,
    sign_pass,
    tongban_claims,
    verify,
)
from tests.unit.test_pass_certs import NOW, Pki, Signer

CONTENT = PassContent(
    iss="CN-LN",
    sub="u_8f3a9c2b7d1e4f60",
    iat=NOW - timedelta(minutes=10),
    exp=NOW + timedelta(hours=24),
    colour="green",
    since=NOW - timedelta(days=30),
    name="张*",
    number="2101**********1234",
)


@cache
def pki() -> Pki:
    return Pki.make("CN-LN")


@cache
def health_signer() -> Signer:
    return pki().signer(["health"])


@cache
def venue_signer() -> Signer:
    return pki().signer(["venue"])


@cache
def eu_dsc() -> Signer:
    """A DSC of an EU member state that may sign test certificates only."""
    return Pki.make("AT").signer(["test"])


def trust() -> TrustStore:
    store = TrustStore()
    store.add_certificate(health_signer().cert)
    store.add_certificate(venue_signer().cert)
    return store


def good_pass(**changes: Any) -> str:
    return sign_pass(
        msgspec.structs.replace(CONTENT, **changes), key=health_signer().key, cert=health_signer().cert
    )


def claims_map(**changes: Any) -> dict[Any, Any]:
    claims = tongban_claims(CONTENT)
    for key, value in changes.items():
        label = {"iss": 1, "sub": 2, "exp": 4, "iat": 6, "cti": 7, "private": CLAIM_TONGBAN, "hcert": -260}[
            key
        ]
        if value is None:
            claims.pop(label, None)
        else:
            claims[label] = value
    return claims


def signed(claims: dict[Any, Any], signer: Signer | None = None, prefix: str = codec.TONGBAN_PREFIX) -> str:
    signer = signer or health_signer()
    return encode_pass(claims, key=signer.key, kid=certs.certificate_kid(signer.cert), prefix=prefix)


def with_cose(cose: bytes, prefix: str = codec.TONGBAN_PREFIX) -> str:
    return codec.pack(cose, prefix)


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


def dgc(kind: str = "t", ci: str = "URN:UVCI:01:AT:B5921A35D6A0D696421B3E2462178297#I") -> dict[str, Any]:
    entry = {"tg": "840539006", "tt": "LP217198-3", "co": "AT", "is": "Ministry of Health, Austria", "ci": ci}
    return {"ver": "1.3.0", "nam": {"fn": "Musterfrau", "gn": "Gabriele"}, "dob": "1998-02-26", kind: [entry]}


def eu_claims(kind: str = "t", **changes: Any) -> dict[Any, Any]:
    claims: dict[Any, Any] = {
        1: "AT",
        4: ts(NOW + timedelta(days=2)),
        6: ts(NOW - timedelta(hours=1)),
        -260: {1: dgc(kind)},
    }
    claims.update(changes)
    return claims


def reason_of(payload: str, store: TrustStore | None = None, now: datetime = NOW) -> str:
    verdict = verify(payload, store if store is not None else trust(), now)
    assert isinstance(verdict, Verdict)
    msgspec.json.encode(verdict)  # every verdict can be printed
    return verdict.reason


# --- one case per reason ----------------------------------------------------------------------------------

PROTECTED = cbor2.dumps({1: -7, 4: b"\x00" * 8})


def _tb(data: bytes) -> str:
    return codec.TONGBAN_PREFIX + codec.b45encode(data)


CASES: dict[str, tuple[str, Callable[[], str]]] = {
    "valid pass": ("ok", lambda: good_pass()),
    "valid venue code": (
        "ok",
        lambda: sign_pass(
            msgspec.structs.replace(
                CONTENT, pass_type="venue", colour=None, since=None, name="沈阳站", number="V210102-0001"
            ),
            key=venue_signer().key,
            cert=venue_signer().cert,
        ),
    ),
    "no prefix": ("bad_prefix", lambda: good_pass()[4:]),
    "other prefix": ("bad_prefix", lambda: "HC2:" + good_pass()[4:]),
    "lower-case prefix": ("bad_prefix", lambda: "tb1:" + good_pass()[4:]),
    "empty": ("bad_prefix", lambda: ""),
    "longer than any QR": ("too_large", lambda: "TB1:" + "0" * 4300),
    "zip bomb": ("too_large", lambda: _tb(codec.deflate(bytes(1_000_000)))),
    "base45 3k+1": ("bad_base45", lambda: _base45_3k_plus_1(good_pass())),
    "base45 lower case": ("bad_base45", lambda: "TB1:" + good_pass()[4:].lower()),
    "base45 triple overflow": ("bad_base45", lambda: "TB1:GGW"),
    "not zlib": ("bad_compression", lambda: _tb(b"plain bytes, not zlib")),
    "truncated zlib": ("bad_compression", lambda: _tb(codec.deflate(b"x" * 200)[:-5])),
    "not cbor": ("bad_cbor", lambda: _tb(codec.deflate(b"\xff\xff"))),
    "bytes after the cose": ("bad_cbor", lambda: _tb(codec.deflate(codec.unpack(good_pass())[1] + b"\x00"))),
    "cbor but not cose": ("bad_cose", lambda: _tb(codec.deflate(cbor2.dumps({"hello": "world"})))),
    "untagged cose on TB1": (
        "bad_cose",
        lambda: _tb(codec.deflate(cbor2.dumps(list(cbor2.loads(codec.unpack(good_pass())[1]).value)))),
    ),
    "es384 header": (
        "bad_cose",
        lambda: with_cose(cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -35, 4: b"k"}), {}, b"", b"s"]))),
    ),
    "unknown kid": ("unknown_kid", lambda: signed(claims_map(), Pki.make().signer(["health"]))),
    "tampered claims": (
        "bad_signature",
        lambda: _swap_payload(good_pass(), cbor2.dumps(claims_map(sub="someone-else"))),
    ),
    "tampered signature": ("bad_signature", lambda: _swap_signature(good_pass(), bytes(64))),
    "short signature": ("bad_signature", lambda: _swap_signature(good_pass(), b"\x01" * 63)),
    "claims not a map": ("bad_claims", lambda: signed([1, 2, 3])),  # type: ignore[arg-type]
    "no exp": ("bad_claims", lambda: signed(claims_map(exp=None))),
    "exp before iat": ("bad_claims", lambda: signed(claims_map(exp=ts(NOW) - 7200))),
    "exp as text": ("bad_claims", lambda: signed(claims_map(exp="tomorrow"))),
    "iat as a bool": ("bad_claims", lambda: signed(claims_map(iat=True))),
    "no sub": ("bad_claims", lambda: signed(claims_map(sub=None))),
    "cti as text": ("bad_claims", lambda: signed(claims_map(cti="abc"))),
    "no private claim": ("bad_claims", lambda: signed(claims_map(private=None))),
    "unknown colour": (
        "bad_claims",
        lambda: signed(claims_map(private={1: "health", 2: "blue", 3: 1, 4: "张*", 5: "1**2"})),
    ),
    "colour not text": (
        "bad_claims",
        lambda: signed(claims_map(private={1: "health", 2: ["green"], 3: 1, 4: "张*", 5: "1**2"})),
    ),
    "unknown pass type": ("bad_claims", lambda: signed(claims_map(private={1: "boarding", 4: "x", 5: "y"}))),
    "venue with a colour": (
        "bad_claims",
        lambda: signed(claims_map(private={1: "venue", 2: "red", 4: "x", 5: "y"})),
    ),
    "EU claim on TB1": ("bad_claims", lambda: signed(claims_map(hcert={1: dgc()}))),
    "TB1 claims behind HC1": ("bad_claims", lambda: signed(claims_map(), prefix=codec.EU_PREFIX)),
    "claims not cbor": ("bad_claims", lambda: _swap_payload(good_pass(), b"\xff", resign=True)),
    "venue signer, health pass": ("wrong_key_usage", lambda: signed(claims_map(), venue_signer())),
    "exp after the signer's notAfter": (
        "signer_not_valid_at_time",
        lambda: signed(claims_map(exp=ts(health_signer().cert.not_valid_after_utc) + 1)),
    ),
    "iat before the signer's notBefore": (
        "signer_not_valid_at_time",
        lambda: signed(claims_map(iat=ts(health_signer().cert.not_valid_before_utc) - 1)),
    ),
    "subject revoked": ("revoked", lambda: signed(claims_map(sub="u_revoked"))),
    "issued in the future": ("not_yet_valid", lambda: good_pass(iat=NOW + timedelta(minutes=6))),
    "expired": ("expired", lambda: good_pass(iat=NOW - timedelta(hours=12), exp=NOW)),
}


def _base45_3k_plus_1(payload: str) -> str:
    body = payload[4:]  # Base45 of bytes is 3k or 3k+2 characters long
    return payload[:4] + body + "0" * ((1 - len(body)) % 3)


def _swap_payload(payload: str, new: bytes, resign: bool = False) -> str:
    cose = codec.cose_sign1_decode(codec.unpack(payload)[1])
    signature = (
        codec.es256_sign(health_signer().key, codec.sig_structure(cose.protected, new))
        if resign
        else cose.signature
    )
    return with_cose(cbor2.dumps(cbor2.CBORTag(18, [cose.protected, {}, new, signature])))


def _swap_signature(payload: str, signature: bytes) -> str:
    cose = codec.cose_sign1_decode(codec.unpack(payload)[1])
    return with_cose(cbor2.dumps(cbor2.CBORTag(18, [cose.protected, {}, cose.payload, signature])))


@pytest.mark.parametrize("case", list(CASES))
def test_reason(case: str) -> None:
    expected, make = CASES[case]
    store = trust()
    store.add_revocation(revocation_id("CN-LN", "u_revoked"))
    assert reason_of(make(), store) == expected


def test_every_reason_has_a_case() -> None:
    covered = {reason for reason, _ in CASES.values()} | {"internal_error"}  # internal_error: the test below
    assert covered == set(REASONS)


def test_a_bug_inside_is_an_internal_error_verdict_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str) -> bytes:
        raise RuntimeError("bug")

    monkeypatch.setattr(codec, "b45decode", broken)
    assert reason_of(good_pass()) == "internal_error"


def test_claims_are_shown_only_once_the_signature_holds() -> None:
    store = trust()
    for case in ("tampered claims", "unknown kid", "claims not a map"):
        assert verify(CASES[case][1](), store, NOW).claims is None
    for case in (
        "venue signer, health pass",
        "exp after the signer's notAfter",
        "expired",
        "issued in the future",
    ):
        verdict = verify(CASES[case][1](), store, NOW)
        assert not verdict.valid and verdict.claims is not None and verdict.claims.sub == CONTENT.sub


# --- the pipeline as a property ---------------------------------------------------------------------------


@given(
    sub=st.text(min_size=1, max_size=64),
    colour=st.sampled_from(["green", "yellow", "red"]),
    name=st.text(min_size=1, max_size=12),
    tail=st.text(alphabet="0123456789X", min_size=0, max_size=4),
    issued_ago=st.integers(0, 86_400 * 300),
    valid_for=st.integers(1, 86_400 * 30),
    cti=st.none() | st.binary(min_size=1, max_size=64),
    skew=st.integers(0, 299),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_what_is_signed_verifies_and_reads_back(
    sub: str, colour: str, name: str, tail: str, issued_ago: int, valid_for: int, cti: bytes | None, skew: int
) -> None:
    iat = NOW - timedelta(seconds=issued_ago % (86_400 - 1))
    exp = certs.max_exp(health_signer().cert, iat + timedelta(seconds=valid_for + issued_ago))
    content = PassContent(
        iss="CN-LN",
        sub=sub,
        iat=iat,
        exp=exp,
        colour=colour,  # type: ignore[arg-type]
        since=iat - timedelta(days=1),
        name=name,
        number="****" + tail,
        cti=cti,
    )
    payload = sign_pass(content, key=health_signer().key, cert=health_signer().cert)
    assert set(payload[4:]) <= set(BASE45_ALPHABET)
    at = iat - timedelta(seconds=skew)  # a checkpoint clock up to the allowed skew behind
    verdict = verify(payload, trust(), at)
    assert verdict.valid, verdict.reason
    claims = verdict.claims
    assert claims is not None
    assert (claims.format, claims.pass_type, claims.iss, claims.sub, claims.colour) == (
        "tongban",
        "health",
        "CN-LN",
        sub,
        colour,
    )
    assert (claims.name, claims.number) == (name, "****" + tail)
    assert (claims.iat, claims.exp, claims.since) == (ts(iat), ts(exp), ts(iat) - 86_400)
    assert claims.iat_time == datetime.fromtimestamp(
        ts(iat), UTC
    ) and claims.exp_time == datetime.fromtimestamp(ts(exp), UTC)
    if cti is not None:
        assert claims.cti == cti.hex()
    else:  # sign_pass made one: 16 random bytes
        assert claims.cti is not None and len(bytes.fromhex(claims.cti)) == 16
    assert claims.rid == revocation_id("CN-LN", sub)
    assert claims.kid == base64.b64encode(certs.certificate_kid(health_signer().cert)).decode()
    assert claims.region == "CN-LN"
    assert verify(payload, trust(), exp).reason == "expired"
    assert verify(payload + "\r\n", trust(), at).valid  # a scanner's line end


# --- fuzzing: nothing raises, nothing forged passes --------------------------------------------------------

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.floats(),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(-300, 300) | st.text(max_size=5), inner, max_size=5)
        | st.builds(cbor2.CBORTag, st.sampled_from([18, 1, 24, 61, 258]), inner)
    ),
    max_leaves=30,
)


def _never_raises(payload: Any) -> Verdict:
    verdict = verify(payload, trust(), NOW)
    assert isinstance(verdict, Verdict) and verdict.reason != "internal_error"
    msgspec.json.encode(verdict)
    return verdict


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_any_text_gets_a_verdict(text: str) -> None:
    assert not _never_raises(text).valid
    assert not _never_raises("TB1:" + text).valid
    assert not _never_raises("HC1:" + text).valid


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_any_bytes_under_the_prefix_get_a_verdict(data: bytes) -> None:
    assert not _never_raises("TB1:" + codec.b45encode(data)).valid
    assert not _never_raises("HC1:" + codec.b45encode(codec.deflate(data))).valid


@given(cbor_values, cbor_values)
@settings(max_examples=300, deadline=None)
def test_any_cbor_gets_a_verdict(outer: Any, claims: Any) -> None:
    assert not _never_raises(_tb(codec.deflate(cbor2.dumps(outer)))).valid
    # A real COSE_Sign1 from a trusted signer around arbitrary claims: bad_claims at worst, never a crash.
    try:
        payload = signed(claims)
    except (TypeError, ValueError, cbor2.CBOREncodeError):
        return
    assert _never_raises(payload).reason in ("bad_claims", "ok")
    assert _never_raises(signed(claims, prefix=codec.EU_PREFIX)).reason in ("bad_claims", "ok")


@cache
def fixed_pass() -> str:
    return good_pass()  # one pass for the whole run: hypothesis replays draws against the same bytes


# Where a claim can sit, as paths into the claims map: each is set, in turn, to any CBOR value.
TONGBAN_PATHS = [
    (1,),
    (2,),
    (4,),
    (6,),
    (7,),
    (CLAIM_TONGBAN,),
    *((CLAIM_TONGBAN, key) for key in range(1, 6)),
]
EU_PATHS = [
    (1,),
    (4,),
    (6,),
    (7,),
    (-260,),
    (-260, 1),
    (-260, 1, "t"),
    (-260, 1, "t", 0),
    (-260, 1, "t", 0, "ci"),
]


def _set(claims: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        claims = claims[key]
    claims[path[-1]] = value


@given(st.sampled_from([("TB1", p) for p in TONGBAN_PATHS] + [("HC1", p) for p in EU_PATHS]), cbor_values)
@settings(max_examples=400, deadline=None)
def test_any_value_in_any_claim_gets_a_verdict(where: tuple[str, tuple[Any, ...]], value: Any) -> None:
    # Signed by a trusted signer, so the value is read: it must be checked, never crash the verifier.
    kind, path = where
    claims = tongban_claims(CONTENT) if kind == "TB1" else eu_claims("t")
    _set(claims, path, value)
    signer, prefix = (health_signer(), codec.TONGBAN_PREFIX) if kind == "TB1" else (eu_dsc(), codec.EU_PREFIX)
    store = trust()
    store.update(_eu_trust(eu_dsc()))
    verdict = verify(signed(claims, signer, prefix), store, NOW)
    assert verdict.reason != "internal_error"
    msgspec.json.encode(verdict)


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_mutated_passes_never_raise_and_never_verify_as_something_else(data: st.DataObject) -> None:
    original = fixed_pass()
    expected = verify(original, trust(), NOW)
    assert expected.valid
    cose = bytearray(codec.unpack(original)[1])
    layer = data.draw(st.sampled_from(["cose", "text"]))
    if layer == "cose":
        position = data.draw(st.integers(0, len(cose) - 1))
        cose[position] ^= data.draw(st.integers(1, 255))
        mutated = with_cose(bytes(cose))
    else:
        text = list(original)
        position = data.draw(st.integers(4, len(text) - 1))
        text[position] = data.draw(st.sampled_from(BASE45_ALPHABET + "a~"))
        mutated = "".join(text)
    verdict = _never_raises(mutated)
    if verdict.valid:  # only a change that does not touch what is signed may still verify...
        assert verdict.claims == expected.claims  # ...and then it says exactly the same


# --- key usage, signer validity, revocation -------------------------------------------------------------


def test_a_venue_only_signer_cannot_sign_a_health_pass() -> None:
    with pytest.raises(PassSigningError, match="may not sign health"):
        sign_pass(CONTENT, key=venue_signer().key, cert=venue_signer().cert)
    verdict = verify(signed(claims_map(), venue_signer()), trust(), NOW)
    assert (
        verdict.reason == "wrong_key_usage"
        and verdict.claims is not None
        and verdict.claims.pass_type == "health"
    )


def test_exp_beyond_not_after_is_caught_and_max_exp_prevents_it() -> None:
    short = pki().signer(["health"], not_after=NOW + timedelta(hours=2))
    store = TrustStore()
    store.add_certificate(short.cert)
    wanted = CONTENT.exp  # 24 h, the signer has 2 h left
    with pytest.raises(PassSigningError, match="max_exp"):
        sign_pass(CONTENT, key=short.key, cert=short.cert)
    assert reason_of(signed(tongban_claims(CONTENT), short), store) == "signer_not_valid_at_time"
    clipped = sign_pass(
        msgspec.structs.replace(CONTENT, exp=certs.max_exp(short.cert, wanted)),
        key=short.key,
        cert=short.cert,
    )
    verdict = verify(clipped, store, NOW)
    assert verdict.valid and verdict.claims is not None
    assert verdict.claims.exp == ts(short.cert.not_valid_after_utc)


def test_revocation_by_rid_and_by_rid_before_a_time() -> None:
    payload = good_pass()  # iat = NOW - 10 min
    rid = revocation_id(CONTENT.iss, CONTENT.sub)
    iat = ts(CONTENT.iat)
    for entry, revoked in [
        (rid, True),
        (f"{rid}.{iat + 1}", True),  # re-issued after this pass: this one is revoked
        (f"{rid}.{iat}", False),  # the cut-off is this pass's own issue time: it is the new one
        (revocation_id(CONTENT.iss, "u_someone_else"), False),
        (revocation_id("CN-JL", CONTENT.sub), False),  # same sub at another issuer: another subject
    ]:
        store = trust()
        store.add_revocation(entry)
        assert reason_of(payload, store) == ("revoked" if revoked else "ok"), entry


def test_revocations_from_a_signed_trust_list_apply() -> None:
    rid = revocation_id(CONTENT.iss, CONTENT.sub)
    data = build_trust_list(
        issuer="CN-LN",
        version=1,
        generated_at=NOW,
        certificates=[(health_signer().cert, "CN-LN")],
        revocations=[f"{rid}.{ts(NOW)}"],
        root_key=pki().root_key,
        root_cert=pki().root,
    )
    store = load_trust_list(data, root=pki().root)
    assert reason_of(good_pass(), store) == "revoked"
    assert reason_of(good_pass(iat=NOW + timedelta(seconds=1), exp=NOW + timedelta(hours=1)), store) == "ok"


def test_clock_skew_and_naive_now() -> None:
    payload = good_pass(iat=NOW + timedelta(minutes=4))
    assert reason_of(payload) == "ok"
    assert verify(payload, trust(), NOW, clock_skew=timedelta(0)).reason == "not_yet_valid"
    assert verify(good_pass(), trust(), NOW.replace(tzinfo=None)).valid
    assert verify(good_pass(), trust(), (NOW + timedelta(days=2)).replace(tzinfo=None)).reason == "expired"


def test_signers_sharing_a_kid_are_all_tried() -> None:
    store = TrustStore()
    kid = certs.certificate_kid(health_signer().cert)
    store.add_certificate(pki().signer(["health"]).cert, kid=kid)  # another key under the same kid
    store.add_certificate(health_signer().cert)
    assert len(store.signers(kid)) == 2
    assert reason_of(good_pass(), store) == "ok"


def test_sign_pass_refuses_what_should_not_be_in_a_qr_code() -> None:
    signer = health_signer()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"number": "210102199001011234"}, "masked"),
        ({"colour": None}, "colour"),
        ({"since": None}, "colour"),
        ({"exp": CONTENT.iat}, "after iat"),
        ({"sub": ""}, "sub"),
        ({"name": "x" * 300}, "name"),
        ({"cti": b""}, "cti"),
        ({"iat": NOW.replace(tzinfo=None)}, "timezone-aware"),
        ({"pass_type": "venue"}, "may not sign venue"),
    ]
    for changes, why in cases:
        with pytest.raises(PassSigningError, match=why):
            sign_pass(msgspec.structs.replace(CONTENT, **changes), key=signer.key, cert=signer.cert)
    with pytest.raises(PassSigningError, match="does not belong"):
        sign_pass(CONTENT, key=venue_signer().key, cert=signer.cert)
    both = pki().signer(["health", "venue"])
    with pytest.raises(PassSigningError, match="venue code has no colour"):
        sign_pass(msgspec.structs.replace(CONTENT, pass_type="venue"), key=both.key, cert=both.cert)


# --- other issuers: another province, the EU ---------------------------------------------------------------


def test_another_provinces_pass_is_unknown_until_its_signer_is_trusted() -> None:
    jilin = Pki.make("CN-JL")
    signer = jilin.signer(["health"])
    payload = sign_pass(msgspec.structs.replace(CONTENT, iss="CN-JL"), key=signer.key, cert=signer.cert)
    store = trust()
    assert reason_of(payload, store) == "unknown_kid"
    # Mutual recognition: Liaoning's trust list, signed by Liaoning's root, now names Jilin's signer.
    data = build_trust_list(
        issuer="CN-LN",
        version=2,
        generated_at=NOW,
        certificates=[(health_signer().cert, "CN-LN"), (signer.cert, "CN-JL")],
        revocations=[],
        root_key=pki().root_key,
        root_cert=pki().root,
    )
    verdict = verify(payload, load_trust_list(data, root=pki().root), NOW)
    assert verdict.valid and verdict.claims is not None
    assert (verdict.claims.iss, verdict.claims.region) == ("CN-JL", "CN-JL")


def _eu_trust(dsc: Signer, country: str = "AT") -> TrustStore:
    entry = {
        "kid": base64.b64encode(certs.certificate_kid(dsc.cert)).decode(),
        "x5c": [base64.b64encode(certs.certificate_der(dsc.cert)).decode()],
    }
    return load_eu_trust_list(json.dumps({"dsc_trust_list": {country: {"keys": [entry]}}}))


def test_an_eu_dcc_verifies_once_its_dsc_is_in_the_trust_store() -> None:
    payload = signed(eu_claims("t"), eu_dsc(), prefix=codec.EU_PREFIX)
    assert payload.startswith("HC1:")
    assert reason_of(payload) == "unknown_kid"
    store = trust()
    store.update(_eu_trust(eu_dsc()))
    verdict = verify(payload, store, NOW)
    assert verdict.valid, verdict.reason
    claims = verdict.claims
    assert claims is not None
    assert (claims.format, claims.pass_type, claims.iss, claims.region, claims.sub) == (
        "eu_dcc",
        "test",
        "AT",
        "AT",
        None,
    )
    assert claims.hcert == dgc("t")
    assert claims.rid == revocation_id("AT", dgc("t")["t"][0]["ci"])
    # Untagged COSE is allowed for HC1 (some member states send it).
    untagged = encode_pass(
        eu_claims("t"),
        key=eu_dsc().key,
        kid=certs.certificate_kid(eu_dsc().cert),
        prefix=codec.EU_PREFIX,
        tagged=False,
    )
    assert verify(untagged, store, NOW).valid
    # The DSC may sign tests only: a vaccination certificate from it has the wrong key usage.
    assert reason_of(signed(eu_claims("v"), eu_dsc(), prefix=codec.EU_PREFIX), store) == "wrong_key_usage"
    store.add_revocation(claims.rid)
    assert reason_of(payload, store) == "revoked"


@pytest.mark.parametrize(
    "hcert",
    [
        {1: {"ver": "1.3.0"}},  # no v / t / r
        {1: {**dgc("t"), "v": dgc("v")["v"]}},  # two kinds at once
        {1: {**dgc("t"), "t": [{"tg": "840539006"}]}},  # no certificate identifier
        {1: {**dgc("t"), "t": ["not an entry"]}},
        {1: {**dgc("t"), "x": b"bytes are not JSON"}},
        {1: {**dgc("t"), 5: "non-text key"}},
        {1: {**dgc("t"), "x": float("nan")}},
        {2: dgc("t")},  # not under key 1
        {1: "not a map"},
    ],
)
def test_malformed_eu_certificates_are_bad_claims(hcert: Any) -> None:
    claims = eu_claims("t")
    claims[-260] = hcert
    assert reason_of(signed(claims, eu_dsc(), prefix=codec.EU_PREFIX), _eu_trust(eu_dsc())) == "bad_claims"


# A published EU test vector (eu-digital-green-certificates/dgc-testdata, AT/2DCode/raw/1.json): an Austrian
# vaccination certificate for a fictitious person and the DSC that signed it, to prove we read real HC1 codes.
AT_DSC = (
    "MIIBvTCCAWOgAwIBAgIKAXk8i88OleLsuTAKBggqhkjOPQQDAjA2MRYwFAYDVQQDDA1BVCBER0MgQ1NDQSAxMQswCQYDVQQGEwJBVDEPMA0GA1UE"
    "CgwGQk1TR1BLMB4XDTIxMDUwNTEyNDEwNloXDTIzMDUwNTEyNDEwNlowPTERMA8GA1UEAwwIQVQgRFNDIDExCzAJBgNVBAYTAkFUMQ8wDQYDVQQK"
    "DAZCTVNHUEsxCjAIBgNVBAUTATEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASt1Vz1rRuW1HqObUE9MDe7RzIk1gq4XW5GTyHuHTj5cFEn2Rge"
    "37+hINfCZZcozpwQKdyaporPUP1TE7UWl0F3o1IwUDAOBgNVHQ8BAf8EBAMCB4AwHQYDVR0OBBYEFO49y1ISb6cvXshLcp8UUp9VoGLQMB8GA1Ud"
    "IwQYMBaAFP7JKEOflGEvef2iMdtopsetwGGeMAoGCCqGSM49BAMCA0gAMEUCIQDG2opotWG8tJXN84ZZqT6wUBz9KF8D+z9NukYvnUEQ3QIgdBLF"
    "STSiDt0UJaDF6St2bkUQuVHW6fQbONd731/M4nc="
)
AT_PAYLOAD = (
    "HC1:NCFOXN%TS3DH3ZSUZK+.V0ETD%65NL-AH-R6IOOK.IR9B+9G4G50PHZF0AT4V22F/8X*G3M9JUPY0BX/KR96R/S09T./0LWTKD33236J3TA3M*4VV2"
    " 73-E3GG396B-43O058YIB73A*G3W19UEBY5:PI0EGSP4*2DN43U*0CEBQ/GXQFY73CIBC:G 7376BXBJBAJ UNFMJCRN0H3PQN*E33H3OA70M3FMJIJN"
    "523.K5QZ4A+2XEN QT QTHC31M3+E32R44$28A9H0D3ZCL4JMYAZ+S-A5$XKX6T2YC 35H/ITX8GL2-LH/CJTK96L6SR9MU9RFGJA6Q3QR$P2OIC0JVL"
    "A8J3ET3:H3A+2+33U SAAUOT3TPTO4UBZIC0JKQTL*QDKBO.AI9BVYTOCFOPS4IJCOT0$89NT2V457U8+9W2KQ-7LF9-DF07U$B97JJ1D7WKP/HLIJL8"
    "JF8JFHJP7NVDEBU1J*Z222E.GJ457661CFFTWM-8P2IUE7K*SSW613:9/:TT5IYQBTBU16R4I1A/9VRPJ-TS.7ZEM7MSVOCD4RG2L-TQJROXL2J:52J7F"
    "0Q10SMAP3CG3KHF0DWIH"
)
AT_CLOCK = datetime(2021, 5, 6, 18, 0, tzinfo=UTC)


def test_a_real_eu_dcc_from_the_eu_test_data_verifies() -> None:
    eu = json.dumps({"dsc_trust_list": {"AT": {"keys": [{"kid": "2Rk3X8HntrI=", "x5c": [AT_DSC]}]}}})
    store = load_eu_trust_list(eu)
    assert reason_of(AT_PAYLOAD, TrustStore(), AT_CLOCK) == "unknown_kid"
    verdict = verify(AT_PAYLOAD, store, AT_CLOCK)
    assert verdict.valid, verdict.reason
    claims = verdict.claims
    assert claims is not None and claims.format == "eu_dcc" and claims.pass_type == "vaccination"
    assert claims.iss == "AT" and claims.region == "AT" and claims.kid == "2Rk3X8HntrI="
    assert claims.hcert is not None and claims.hcert["nam"]["fnt"] == "MUSTERFRAU<GOESSINGER"
    assert claims.hcert["v"][0]["ci"] == "URN:UVCI:01:AT:10807843F94AEE0EE5093FBC254BD813#B"
    # Its kid is the EU's (and ours): the first 8 bytes of SHA-256 over the DSC.
    (signer,) = store.all_signers()
    assert signer.kid == certs.certificate_kid(signer.certificate)
    assert verify(AT_PAYLOAD, store, datetime(2021, 11, 3, tzinfo=UTC)).reason == "expired"
    assert reason_of(AT_PAYLOAD[:-1] + ("I" if AT_PAYLOAD[-1] != "I" else "J"), store, AT_CLOCK) != "ok"
