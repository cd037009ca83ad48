"""The phone side of the one-code, as a small reference library for app developers (and the tests and demo).

    key = generate_device_key()
    register(public_key_b64(key))                  # POST to the API; it answers with an authorisation
    phone = OneCodeClient(key, authorisation_b64)  # keep `phone.counter` across app restarts
    text = phone.code_for_display(time.time())     # show as a QR (alphanumeric mode, level M)

Codes are made offline: the authorisation (<= 24 h) certifies the device key, and each code adds the 30 s
generation step and a strictly increasing counter signed by that key. Depends on onecode.codec and
cryptography only, nothing of the server.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from onecode import codec

STEP_SECONDS: Final = 30


class ClientError(ValueError):
    """The client cannot make a code (no valid authorisation for this key, expired, counter exhausted)."""


def generate_device_key() -> ec.EllipticCurvePrivateKey:
    """A new P-256 device key. On a phone it belongs in the platform key store (Secure Enclave, StrongBox)."""
    return ec.generate_private_key(ec.SECP256R1())


def public_key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 65-byte uncompressed public key (04 || X || Y) the server certifies."""
    return codec.device_point(key.public_key())


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The uncompressed public key as standard base64 (88 characters), the form the API stores."""
    return base64.b64encode(public_key_bytes(key)).decode("ascii")


def private_key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted when a password is given (for tests and demos that keep a key in a file)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def load_private_key_pem(data: bytes, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(data, password)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ClientError("the device key is a P-256 key")
    return key


def decode_authorisation(text: str | bytes) -> bytes:
    """The 199 authorisation bytes from the API's base64 (standard or URL-safe, padded or not), or the
    bytes themselves."""
    if isinstance(text, bytes) and len(text) == codec.AUTHORISATION_BYTES:
        return text
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        data = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError("the authorisation is not base64") from None
    if len(data) != codec.AUTHORISATION_BYTES:
        raise ClientError(f"an authorisation is {codec.AUTHORISATION_BYTES} bytes")
    return data


class OneCodeClient:
    """Makes codes from one authorisation with one device key. `counter` is the last counter used: persist
    it, and hand it back when the app restarts (a counter used twice makes the second code a replay)."""

    def __init__(
        self, device_key: ec.EllipticCurvePrivateKey, authorisation: str | bytes, counter: int = 0
    ) -> None:
        raw = decode_authorisation(authorisation)
        try:
            parsed = codec.parse_authorisation(raw)
        except codec.CodeError as exc:
            raise ClientError(f"not an authorisation we can use: {exc.reason}") from None
        if parsed.device_key != public_key_bytes(device_key):
            raise ClientError("the authorisation certifies another device key")
        if not 0 <= counter <= codec.UINT32_MAX:
            raise ClientError("counter: 0 to 2**32 - 1")
        self._key = device_key
        self._raw = raw
        self.authorisation = parsed
        self.counter = counter
        self._shown: tuple[int, str] | None = None  # (step start, text) of code_for_display

    @property
    def code_id(self) -> bytes:
        return self.authorisation.code_id

    @property
    def expires_at(self) -> int:
        return self.authorisation.expires_at

    def needs_renewal(self, now: float, margin: int = 3600) -> bool:
        """True when the authorisation ends within `margin` seconds: time to ask the API for a new one."""
        return now + margin >= self.authorisation.expires_at

    def make_code(self, now: float) -> str:
        """A new code for the 30 s step holding `now`, with the next counter. Raises ClientError when the
        authorisation has expired or the counter is used up."""
        generated_at = int(now) // STEP_SECONDS * STEP_SECONDS
        if generated_at < 0 or int(now) > self.authorisation.expires_at:
            raise ClientError("the authorisation has expired: ask the API for a new one")
        if self.counter >= codec.UINT32_MAX:
            raise ClientError("the counter is used up: ask the API for a new authorisation")
        self.counter += 1
        text = codec.pack(codec.append_dynamic(self._raw, self._key, generated_at, self.counter))
        self._shown = (generated_at, text)
        return text

    def code_for_display(self, now: float) -> str:
        """The code to show now: the same text within a 30 s step, a new one (next counter) when the step
        changes. After a scan, call make_code() to show a fresh code at once (it becomes the one shown)."""
        step = int(now) // STEP_SECONDS * STEP_SECONDS
        if self._shown is None or self._shown[0] != step:
            return self.make_code(now)
        return self._shown[1]
