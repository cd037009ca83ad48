"""The vault's primitives and blind index without a database: known answers, binding, domain separation."""

from __future__ import annotations

import hashlib
import hmac
import os

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.masterkey import key_id
from core.pii import Vault, describe, index_hash_for, normalize_id_number, normalize_phone
from core.pii import cipher as c
from core.pii.vault import PiiDecryptError, PiiError
from core.settings import Settings, SettingsError, load_settings

CIPHERS: list[c.CipherName] = ["aes-256-gcm", "sm4-gcm"]


def test_this_openssl_has_sm4_gcm_and_sm3() -> None:
    # The SM path is not optional for this deployment (GB/T 39786): fail loudly if a build drops it.
    assert c.sm_supported()


def test_sm4_gcm_matches_rfc_8998_vector() -> None:
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    nonce = bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    plaintext = bytes.fromhex(
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
        "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
    )
    expected = bytes.fromhex(
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
        "83DE3541E4C2B58177E065A9BF7B62EC"
    )
    assert c.seal("sm4-gcm", key, nonce, plaintext, aad) == expected
    assert c.unseal("sm4-gcm", key, nonce, expected, aad) == plaintext


def test_hmac_sm3_uses_sm3() -> None:
    # GB/T 32905 example 1: SM3("abc"); an HMAC over an empty key block must differ from it but be stable.
    from cryptography.hazmat.primitives import hashes

    digest = hashes.Hash(hashes.SM3())
    digest.update(b"abc")
    assert digest.finalize().hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert c.blind_index("hmac-sm3", b"k" * 32, "abc") != c.blind_index("hmac-sha256", b"k" * 32, "abc")


@pytest.mark.parametrize("cipher", CIPHERS)
@given(plaintext=st.binary(max_size=300), aad=st.binary(max_size=64))
def test_seal_round_trip_and_any_flipped_bit_fails(
    cipher: c.CipherName, plaintext: bytes, aad: bytes
) -> None:
    key, nonce = os.urandom(c.KEY_SIZES[cipher]), os.urandom(c.NONCE_SIZE)
    sealed = c.seal(cipher, key, nonce, plaintext, aad)
    assert len(sealed) == len(plaintext) + c.TAG_SIZE
    assert c.unseal(cipher, key, nonce, sealed, aad) == plaintext
    position = len(sealed) // 2
    flipped = sealed[:position] + bytes([sealed[position] ^ 0x80]) + sealed[position + 1 :]
    with pytest.raises(c.CipherError):
        c.unseal(cipher, key, nonce, flipped, aad)
    with pytest.raises(c.CipherError):
        c.unseal(cipher, key, nonce, sealed, aad + b"x")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_wrapped_key_is_bound_to_its_row_and_master_key(cipher: c.CipherName) -> None:
    master, other_master = os.urandom(32), os.urandom(32)
    material = os.urandom(32)
    common = {"kind": "data", "algorithm": "aes-256-gcm"}
    wrapped = c.wrap_key(cipher, master, key_id(master), key_id=7, material=material, **common)
    assert c.wrap_cipher(wrapped) == cipher
    assert material not in wrapped
    assert c.unwrap_key(master, key_id(master), key_id=7, wrapped=wrapped, **common) == material
    with pytest.raises(c.CipherError):  # another row's id
        c.unwrap_key(master, key_id(master), key_id=8, wrapped=wrapped, **common)
    with pytest.raises(c.CipherError):  # relabelled as an index key
        c.unwrap_key(master, key_id(master), key_id=7, wrapped=wrapped, kind="index", algorithm="aes-256-gcm")
    with pytest.raises(c.CipherError):  # another master key
        c.unwrap_key(other_master, key_id(master), key_id=7, wrapped=wrapped, **common)


def test_envelope_header_is_checked() -> None:
    header = c.envelope_header("sm4-gcm", 42)
    blob = header + bytes(c.NONCE_SIZE) + bytes(c.TAG_SIZE)
    assert describe(blob).algorithm == "sm4-gcm"
    assert describe(blob).key_id == 42
    for bad in (blob[:-1], b"\x02" + blob[1:], blob[:1] + b"\x09" + blob[2:]):
        with pytest.raises(PiiDecryptError):
            describe(bad)


def _vault(settings: Settings, index_key: bytes) -> Vault:
    return Vault(settings, index_key_id=1, index_key=index_key)


def test_blind_index_is_keyed_deterministic_and_separated_by_purpose() -> None:
    settings = load_settings({})
    key = os.urandom(32)
    vault = _vault(settings, key)
    value = "210102199001011234"
    index = vault.blind_index(value, purpose="accounts.id_number")
    assert len(index) == 32
    assert index == _vault(settings, key).blind_index(value, purpose="accounts.id_number")
    assert index != vault.blind_index(value, purpose="legal_persons.id_number")
    assert index != _vault(settings, os.urandom(32)).blind_index(value, purpose="accounts.id_number")
    # Not a plain hash of the value (the ID space is small enough to enumerate), nor an HMAC keyed by it.
    assert index != hashlib.sha256(value.encode()).digest()
    assert index != hmac.new(key, value.encode(), hashlib.sha256).digest()
    assert index != vault.blind_index(value[:-1] + "5", purpose="accounts.id_number")


def test_blind_index_normalises_before_hashing() -> None:
    vault = _vault(load_settings({}), os.urandom(32))

    def id_index(value: str) -> bytes:
        return vault.blind_index(value, purpose="id", normalize=normalize_id_number)

    assert (
        id_index("21010219900101123x")
        == id_index(" 210102 19900101 123X\n")
        == id_index("２１０１０２19900101123X")
    )
    assert id_index("21010219900101123X") != id_index("210102199001011230")
    assert vault.blind_index(
        "+86 138-1234-5678", purpose="p", normalize=normalize_phone
    ) == vault.blind_index("13812345678", purpose="p", normalize=normalize_phone)


def test_sm_selection_switches_blind_index_to_hmac_sm3() -> None:
    key = os.urandom(32)
    aes = load_settings({})
    sm = load_settings({"TONGBAN_PII_CIPHER": "sm4-gcm"})
    assert index_hash_for(aes) == "hmac-sha256"
    assert index_hash_for(sm) == "hmac-sm3"
    assert index_hash_for(msgspec.structs.replace(sm, pii_blind_index="hmac-sha256")) == "hmac-sha256"
    value = "210102199001011234"
    assert _vault(sm, key).blind_index(value, purpose="p") != _vault(aes, key).blind_index(value, purpose="p")


def test_blind_index_needs_a_purpose() -> None:
    with pytest.raises(PiiError):
        _vault(load_settings({}), os.urandom(32)).blind_index("x", purpose=" ")


def test_pii_settings_are_validated() -> None:
    assert load_settings({"TONGBAN_PII_KEY_CACHE_SECONDS": "2.5"}).pii_key_cache_seconds == 2.5
    with pytest.raises(SettingsError, match=r"^TONGBAN_PII_CIPHER:"):
        load_settings({"TONGBAN_PII_CIPHER": "des"})
    with pytest.raises(SettingsError, match=r"^TONGBAN_PII_BLIND_INDEX:"):
        load_settings({"TONGBAN_PII_BLIND_INDEX": "sha1"})


def test_sm_selected_on_an_openssl_without_sm_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.pii import vault as vault_module

    monkeypatch.setattr(vault_module.c, "sm_supported", lambda: False)
    vault_module._check_supported(load_settings({}))  # AES needs nothing special
    with pytest.raises(SettingsError, match=r"^TONGBAN_PII_CIPHER:"):
        vault_module._check_supported(load_settings({"TONGBAN_PII_CIPHER": "sm4-gcm"}))
    with pytest.raises(SettingsError, match=r"^TONGBAN_PII_CIPHER:"):
        vault_module._check_supported(load_settings({"TONGBAN_PII_BLIND_INDEX": "hmac-sm3"}))
