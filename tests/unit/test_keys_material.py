"""Key material without a database: thumbprints, JWKs, private key wrapping, raw signatures."""

from __future__ import annotations

import hashlib
import secrets

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from core import keys

purposes = st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True)
master_keys = st.binary(min_size=32, max_size=32)


def test_thumbprint_matches_the_rfc_7638_example() -> None:
    # RFC 7638 section 3.1: the RSA example key and its published SHA-256 thumbprint.
    members = {
        "e": "AQAB",
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
            "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5h"
            "ajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
    }
    assert keys.jwk_thumbprint(members) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_new_key_kid_is_the_thumbprint_of_its_public_jwk() -> None:
    new = keys.generate_key()
    canonical = '{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}'.format(**new.jwk).encode()
    assert new.kid == keys.b64url(hashlib.sha256(canonical).digest())
    assert len(new.kid) == 43
    assert new.jwk["kid"] == new.kid and new.jwk["use"] == "sig" and new.jwk["alg"] == "ES256"
    assert "d" not in new.jwk
    assert "NewKey(" in repr(new) and "der" not in repr(new)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=1, max_value=2**64))
def test_jwk_coordinates_are_32_bytes_and_round_trip(seed: int) -> None:
    # Small scalars give points whose coordinates may have leading zero bytes: they must still be 32 bytes.
    private_key = ec.derive_private_key(seed, ec.SECP256R1())
    jwk = keys.public_jwk(private_key.public_key())
    assert len(keys.b64url_decode(jwk["x"])) == 32 and len(keys.b64url_decode(jwk["y"])) == 32
    assert keys.public_key_from_jwk(jwk).public_numbers() == private_key.public_key().public_numbers()
    # pyjwt reads the same JWK to the same key.
    loaded = jwt.PyJWK.from_dict(jwk).key
    assert loaded.public_numbers() == private_key.public_key().public_numbers()


@settings(max_examples=50, deadline=None)
@given(master_keys, st.binary(min_size=0, max_size=200), purposes)
def test_wrap_round_trips(master: bytes, der: bytes, purpose: str) -> None:
    kid = keys.b64url(hashlib.sha256(der).digest())
    blob = keys.wrap_private_key(master, der, kid=kid, purpose=purpose)
    if len(der) >= 16:  # shorter strings may occur in random bytes by chance
        assert der not in blob
    assert keys.unwrap_private_key(master, blob, kid=kid, purpose=purpose) == der


@settings(max_examples=50, deadline=None)
@given(master_keys, purposes, purposes)
def test_wrap_is_bound_to_kid_and_purpose(master: bytes, purpose: str, other_purpose: str) -> None:
    der = secrets.token_bytes(64)
    kid, other_kid = keys.b64url(secrets.token_bytes(32)), keys.b64url(secrets.token_bytes(32))
    blob = keys.wrap_private_key(master, der, kid=kid, purpose=purpose)
    with pytest.raises(keys.KeyStoreError, match="does not decrypt"):
        keys.unwrap_private_key(master, blob, kid=other_kid, purpose=purpose)
    if other_purpose != purpose:
        with pytest.raises(keys.KeyStoreError, match="does not decrypt"):
            keys.unwrap_private_key(master, blob, kid=kid, purpose=other_purpose)
    with pytest.raises(keys.KeyStoreError, match="does not decrypt"):
        keys.unwrap_private_key(master, blob, kid=kid, purpose=purpose, alg="ES384")


def test_wrong_master_key_or_altered_blob_fails_with_one_line() -> None:
    der, kid = secrets.token_bytes(64), keys.b64url(secrets.token_bytes(32))
    blob = keys.wrap_private_key(secrets.token_bytes(32), der, kid=kid, purpose="token")
    with pytest.raises(keys.KeyStoreError) as info:
        keys.unwrap_private_key(secrets.token_bytes(32), blob, kid=kid, purpose="token", master_key_id="abc")
    assert "abc" in str(info.value) and "\n" not in str(info.value)
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(keys.KeyStoreError):
        keys.unwrap_private_key(secrets.token_bytes(32), flipped, kid=kid, purpose="token")
    with pytest.raises(keys.KeyStoreError, match="unknown wrapping format"):
        keys.unwrap_private_key(secrets.token_bytes(32), b"\x02" + blob[1:], kid=kid, purpose="token")


def test_signer_signs_jwts_with_its_kid_and_raw_signatures_verify() -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    kid = keys.public_jwk(private_key.public_key())["kid"]
    signer = keys.Signer(kid=kid, purpose="token", alg="ES256", private_key=private_key)
    token = signer.sign_jwt({"sub": "a"}, headers={"kid": "spoofed", "typ": "at+jwt"})
    assert jwt.get_unverified_header(token)["kid"] == kid
    assert jwt.decode(token, private_key.public_key(), algorithms=["ES256"]) == {"sub": "a"}
    assert "private_key" not in repr(signer)

    signature = signer.sign_raw(b"payload")
    assert len(signature) == 64
    assert keys.verify_raw(private_key.public_key(), b"payload", signature)
    assert not keys.verify_raw(private_key.public_key(), b"payloaD", signature)
    assert not keys.verify_raw(private_key.public_key(), b"payload", signature[:-1])


def test_private_key_serialisation_is_pkcs8_der() -> None:
    new = keys.generate_key()
    loaded = serialization.load_der_private_key(new.der, password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert keys.public_jwk(loaded.public_key())["kid"] == new.kid
