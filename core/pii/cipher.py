"""The vault's primitives: AEAD for values and for wrapped keys, the value envelope, and blind-index HMACs.

Value envelope (all integers big-endian):
    version (1 byte) | cipher (1 byte) | data key id (4 bytes) | nonce (12 bytes) | ciphertext + tag (16 bytes)
The AAD is the 6-byte header followed by the length-prefixed (table, column, row id), so a value moved to
another row or column, or relabelled with another key or cipher, fails authentication.

Wrapped key (stored in pii_keys.wrapped_key):
    version (1 byte) | cipher (1 byte) | nonce (12 bytes) | ciphertext + tag
under a wrapping key derived from the master key with HKDF (SHA-256 for AES, SM3 for SM4), with an AAD that
binds the key's row id, kind, algorithm and master key id.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
from typing import Final, Literal

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CipherName = Literal["aes-256-gcm", "sm4-gcm"]
IndexHash = Literal["hmac-sha256", "hmac-sm3"]
KeyKind = Literal["data", "index"]

FORMAT_VERSION: Final = 1
CIPHER_CODES: Final[dict[str, int]] = {"aes-256-gcm": 1, "sm4-gcm": 2}
CIPHERS_BY_CODE: Final[dict[int, CipherName]] = {1: "aes-256-gcm", 2: "sm4-gcm"}
KEY_SIZES: Final[dict[str, int]] = {"aes-256-gcm": 32, "sm4-gcm": 16, "hmac-sha256": 32, "hmac-sm3": 32}
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
HEADER: Final = struct.Struct(">BBI")
MIN_ENVELOPE: Final = HEADER.size + NONCE_SIZE + TAG_SIZE
_WRAP_HEADER: Final = struct.Struct(">BB")


class CipherError(Exception):
    """Authentication failed or the bytes are not a vault envelope; deliberately says nothing more."""


@functools.cache
def sm_supported() -> bool:
    """Whether this OpenSSL build offers SM4-GCM and SM3 (some distributions compile SM out)."""
    try:
        sealed = seal("sm4-gcm", bytes(16), bytes(NONCE_SIZE), b"probe", b"")
        hashes.Hash(hashes.SM3()).finalize()
        return unseal("sm4-gcm", bytes(16), bytes(NONCE_SIZE), sealed, b"") == b"probe"
    except (UnsupportedAlgorithm, ValueError, CipherError):
        return False


def seal(cipher: CipherName, key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ciphertext + 16-byte tag."""
    if cipher == "aes-256-gcm":
        return AESGCM(key).encrypt(nonce, plaintext, aad)
    encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    body = encryptor.update(plaintext) + encryptor.finalize()
    return body + encryptor.tag


def unseal(cipher: CipherName, key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < TAG_SIZE:
        raise CipherError("ciphertext too short")
    try:
        if cipher == "aes-256-gcm":
            return AESGCM(key).decrypt(nonce, sealed, aad)
        tag = sealed[-TAG_SIZE:]
        decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag, min_tag_length=TAG_SIZE)).decryptor()
        decryptor.authenticate_additional_data(aad)
        return decryptor.update(sealed[:-TAG_SIZE]) + decryptor.finalize()
    except InvalidTag:
        raise CipherError("authentication failed") from None


def length_prefixed(*parts: bytes) -> bytes:
    """Unambiguous concatenation: ("ab", "c") and ("a", "bc") never encode the same."""
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


# --- value envelope -------------------------------------------------------------------------------------


def value_aad(header: bytes, table: str, column: str, row_id: str) -> bytes:
    return header + length_prefixed(b"tongban/pii/value/v1", table.encode(), column.encode(), row_id.encode())


def envelope_header(cipher: CipherName, key_id: int) -> bytes:
    return HEADER.pack(FORMAT_VERSION, CIPHER_CODES[cipher], key_id)


def parse_envelope(blob: bytes) -> tuple[CipherName, int, bytes, bytes, bytes]:
    """(cipher, key id, header, nonce, ciphertext+tag); CipherError if it is not a v1 envelope."""
    if len(blob) < MIN_ENVELOPE:
        raise CipherError("not a vault envelope")
    version, code, key_id = HEADER.unpack_from(blob)
    cipher = CIPHERS_BY_CODE.get(code)
    if version != FORMAT_VERSION or cipher is None:
        raise CipherError("unknown envelope version or cipher")
    header = blob[: HEADER.size]
    nonce = blob[HEADER.size : HEADER.size + NONCE_SIZE]
    return cipher, key_id, header, nonce, blob[HEADER.size + NONCE_SIZE :]


# --- wrapped keys ---------------------------------------------------------------------------------------


def _wrapping_key(cipher: CipherName, master_key: bytes) -> bytes:
    # Derived, not the master key itself: the master key also wraps signing keys elsewhere.
    kdf_hash: hashes.HashAlgorithm = hashes.SHA256() if cipher == "aes-256-gcm" else hashes.SM3()
    kdf = HKDF(
        algorithm=kdf_hash, length=KEY_SIZES[cipher], salt=None, info=b"tongban/pii/wrap/" + cipher.encode()
    )
    return kdf.derive(master_key)


def _wrap_aad(key_id: int, kind: str, algorithm: str, master_key_id: str) -> bytes:
    return length_prefixed(
        b"tongban/pii/key/v1", str(key_id).encode(), kind.encode(), algorithm.encode(), master_key_id.encode()
    )


def wrap_key(
    cipher: CipherName,
    master_key: bytes,
    master_key_id: str,
    *,
    key_id: int,
    kind: str,
    algorithm: str,
    material: bytes,
) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    aad = _wrap_aad(key_id, kind, algorithm, master_key_id)
    sealed = seal(cipher, _wrapping_key(cipher, master_key), nonce, material, aad)
    return _WRAP_HEADER.pack(FORMAT_VERSION, CIPHER_CODES[cipher]) + nonce + sealed


def wrap_cipher(wrapped: bytes) -> CipherName:
    """The cipher a wrapped key is under (CipherError if the blob is not one)."""
    if len(wrapped) < _WRAP_HEADER.size + NONCE_SIZE + TAG_SIZE:
        raise CipherError("not a wrapped key")
    version, code = _WRAP_HEADER.unpack_from(wrapped)
    cipher = CIPHERS_BY_CODE.get(code)
    if version != FORMAT_VERSION or cipher is None:
        raise CipherError("unknown wrapped key version or cipher")
    return cipher


def unwrap_key(
    master_key: bytes, master_key_id: str, *, key_id: int, kind: str, algorithm: str, wrapped: bytes
) -> bytes:
    cipher = wrap_cipher(wrapped)
    nonce = wrapped[_WRAP_HEADER.size : _WRAP_HEADER.size + NONCE_SIZE]
    aad = _wrap_aad(key_id, kind, algorithm, master_key_id)
    material = unseal(
        cipher, _wrapping_key(cipher, master_key), nonce, wrapped[_WRAP_HEADER.size + NONCE_SIZE :], aad
    )
    if len(material) != KEY_SIZES[algorithm]:
        raise CipherError("unwrapped key has the wrong size")
    return material


# --- blind index ----------------------------------------------------------------------------------------


def _hmac(index_hash: IndexHash, key: bytes, message: bytes) -> bytes:
    if index_hash == "hmac-sha256":
        return hmac.new(key, message, hashlib.sha256).digest()
    # hashlib has SM3 only when its own OpenSSL does; cryptography's is the one sm_supported() probes.
    mac = crypto_hmac.HMAC(key, hashes.SM3())
    mac.update(message)
    return mac.finalize()


def purpose_key(index_hash: IndexHash, index_key: bytes, purpose: str) -> bytes:
    """A sub-key per purpose (domain separation): equal values under two purposes share no index."""
    return _hmac(index_hash, index_key, length_prefixed(b"tongban/pii/blind-index/v1", purpose.encode()))


def blind_index(index_hash: IndexHash, subkey: bytes, normalized: str) -> bytes:
    return _hmac(index_hash, subkey, normalized.encode())


def new_key_material(algorithm: str) -> bytes:
    return os.urandom(KEY_SIZES[algorithm])
