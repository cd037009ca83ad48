"""WeChat-style open data: the encryptedData / iv a mini-app's front end receives for user data, and the
signature of rawData.

- encryptedData: AES-128-CBC with the user's session_key (16 bytes, base64) as the key, a random 16-byte iv,
  PKCS#7 padding, over UTF-8 JSON that carries a watermark {"appid", "timestamp"}; encryptedData and iv are
  base64. The receiver checks watermark.appid against its own appid.
- signature: sha1(rawData + session_key) in hex, with session_key in its base64 text form.

The same bytes as WeChat's, so a mini-app server's existing decryption code (WXBizDataCrypt and friends)
works unchanged: tests/unit/test_sdk_opendata.py checks WeChat's published worked example byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from typing import Any

import msgspec
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 16
IV_BYTES = 16
_BLOCK_BITS = 128


class OpenDataError(ValueError):
    """The data does not decrypt, is not JSON, or its watermark names another app. Says no more."""


def _b64(text: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise OpenDataError(f"{what}: not base64") from None
    if size is not None and len(raw) != size:
        raise OpenDataError(f"{what}: expected {size} bytes")
    return raw


def new_session_key() -> str:
    """A fresh session_key: 16 random bytes, base64 (24 characters)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def encrypt(plaintext: bytes, session_key: str, iv: bytes | None = None) -> tuple[str, str]:
    """(encryptedData, iv), both base64. A random iv unless one is given (tests reproduce examples)."""
    key = _b64(session_key, "session_key", KEY_BYTES)
    iv = os.urandom(IV_BYTES) if iv is None else iv
    if len(iv) != IV_BYTES:
        raise OpenDataError(f"iv: expected {IV_BYTES} bytes")
    padder = padding.PKCS7(_BLOCK_BITS).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    sealed = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(sealed).decode(), base64.b64encode(iv).decode()


def decrypt(encrypted_data: str, iv: str, session_key: str) -> bytes:
    """The plaintext bytes; OpenDataError for bad base64, sizes or padding."""
    key = _b64(session_key, "session_key", KEY_BYTES)
    iv_bytes = _b64(iv, "iv", IV_BYTES)
    sealed = _b64(encrypted_data, "encryptedData")
    if not sealed or len(sealed) % IV_BYTES:
        raise OpenDataError("encryptedData: not a whole number of AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv_bytes)).decryptor()
    padded = decryptor.update(sealed) + decryptor.finalize()
    unpadder = padding.PKCS7(_BLOCK_BITS).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise OpenDataError("encryptedData: does not decrypt under this session_key") from None


def seal_user_data(
    data: dict[str, Any], *, appid: str, session_key: str, timestamp: int | None = None
) -> tuple[str, str]:
    """(encryptedData, iv) of `data` with the watermark {timestamp, appid} added, as WeChat sends it."""
    watermark = {"timestamp": int(time.time()) if timestamp is None else timestamp, "appid": appid}
    return encrypt(msgspec.json.encode({**data, "watermark": watermark}), session_key)


def open_user_data(encrypted_data: str, iv: str, session_key: str, *, appid: str) -> dict[str, Any]:
    """The decrypted JSON object, after checking that its watermark names `appid`."""
    plaintext = decrypt(encrypted_data, iv, session_key)
    try:
        data = msgspec.json.decode(plaintext)
    except msgspec.DecodeError:
        raise OpenDataError("encryptedData: not JSON") from None
    if not isinstance(data, dict):
        raise OpenDataError("encryptedData: not a JSON object")
    watermark = data.get("watermark")
    if not isinstance(watermark, dict) or watermark.get("appid") != appid:
        raise OpenDataError("watermark: issued for another app")
    return data


def raw_data_signature(raw_data: str, session_key: str) -> str:
    """WeChat's rawData signature: sha1(rawData + session_key), hex."""
    return hashlib.sha1((raw_data + session_key).encode(), usedforsecurity=False).hexdigest()


def check_raw_data(raw_data: str, signature: str, session_key: str) -> bool:
    return hmac.compare_digest(raw_data_signature(raw_data, session_key), signature.lower())


def session_signature(session_key: str, payload: bytes = b"") -> str:
    """The login-state signature of checkSessionKey and resetUserSessionKey: HMAC-SHA256 keyed with the
    session_key's base64 text over the request body (empty for GET), hex."""
    return hmac.new(session_key.encode(), payload, hashlib.sha256).hexdigest()
