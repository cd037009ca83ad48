"""Offline verification of one-codes, as a bus validator does it: the issuer keys and revocation list come
from a bundle downloaded beforehand, the clock is the validator's own, and a bounded seen-set refuses a code
shown twice. docs/onecode-format.md lists the reasons and how a validator must behave.

verify() is pure apart from the seen-set it is handed and never raises: every input gets a Verdict.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final, NamedTuple

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from health_code.codec import es256_verify
from onecode import codec
from onecode.codec import Code, CodeError

BUNDLE_FORMAT: Final = "tongban-onecode-bundle/1"
DEFAULT_SKEW: Final = 30
DEFAULT_MAX_AGE: Final = 60
AUTHORISED_CACHE_SIZE: Final = 4096
KNOWN_SCENES: Final = frozenset((codec.SCENE_TRANSIT, codec.SCENE_MEDICAL, codec.SCENE_PAYMENT))

# Every reason verify() gives, in the order the checks run (after the codec's own).
REASONS: Final = (
    "ok",
    "bad_prefix",
    "too_large",
    "bad_base45",
    "bad_length",
    "unsupported_version",
    "unknown_issuer",
    "bad_issuer_signature",
    "bad_device_key",
    "bad_device_signature",
    "not_yet_valid",
    "expired",
    "stale",
    "future",
    "revoked",
    "wrong_scene",
    "over_cap",
    "replay",
)


class BundleError(ValueError):
    """A bundle document that is not one."""


# ---------------------------------------------------------------------------------------------------------
# The bundle: issuer keys and revoked code ids


class _IssuerKeyDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kid: str
    public_key: str


class _BundleDoc(msgspec.Struct, frozen=True):
    format: str
    generated_at: datetime
    issuer_keys: list[_IssuerKeyDoc]
    revoked: list[str]


class Bundle:
    """What a validator holds: issuer public keys by kid (loaded once, so each scan reuses the key objects)
    and the revoked code ids."""

    __slots__ = ("_authorised", "generated_at", "issuer_keys", "revoked")

    def __init__(
        self,
        issuer_keys: dict[bytes, ec.EllipticCurvePublicKey],
        revoked: frozenset[bytes],
        generated_at: datetime,
    ) -> None:
        self.issuer_keys = issuer_keys
        self.revoked = revoked
        self.generated_at = generated_at
        # Authorisations (all 199 bytes) whose issuer signature verified under these keys -> the device key
        # object: the next code of the same phone skips both steps. Bounded, oldest out first.
        self._authorised: dict[bytes, ec.EllipticCurvePublicKey] = {}

    def _remember(self, authorisation: bytes, device_key: ec.EllipticCurvePublicKey) -> None:
        if len(self._authorised) >= AUTHORISED_CACHE_SIZE:
            del self._authorised[next(iter(self._authorised))]
        self._authorised[authorisation] = device_key

    @classmethod
    def of(
        cls,
        public_keys: Iterable[ec.EllipticCurvePublicKey],
        revoked: Iterable[bytes] = (),
        generated_at: datetime | None = None,
    ) -> Bundle:
        """A bundle from key objects (their kids computed) and revoked code ids."""
        return cls(
            {codec.issuer_kid(key): key for key in public_keys},
            frozenset(revoked),
            generated_at or datetime.now(UTC),
        )

    def age_seconds(self, now: float) -> float:
        return now - self.generated_at.timestamp()

    def to_json(self) -> bytes:
        document = _BundleDoc(
            format=BUNDLE_FORMAT,
            generated_at=self.generated_at.astimezone(UTC),
            issuer_keys=[
                _IssuerKeyDoc(kid=kid.hex(), public_key=base64.b64encode(_spki(key)).decode("ascii"))
                for kid, key in sorted(self.issuer_keys.items())
            ],
            revoked=sorted(code_id.hex() for code_id in self.revoked),
        )
        return msgspec.json.encode(document)

    @classmethod
    def from_json(cls, data: bytes | str) -> Bundle:
        """Raises BundleError for anything but a well-formed bundle whose kids match their keys."""
        try:
            document = msgspec.json.decode(data, type=_BundleDoc)
        except msgspec.ValidationError as exc:
            raise BundleError(f"bundle: {exc}") from None
        except msgspec.DecodeError:
            raise BundleError("bundle: not JSON") from None
        if document.format != BUNDLE_FORMAT:
            raise BundleError(f"bundle: format is not {BUNDLE_FORMAT}")
        if document.generated_at.tzinfo is None:
            raise BundleError("bundle: generated_at needs a UTC offset")
        keys: dict[bytes, ec.EllipticCurvePublicKey] = {}
        for entry in document.issuer_keys:
            key = _load_p256(entry.public_key)
            kid = codec.issuer_kid(key)
            if entry.kid != kid.hex():
                raise BundleError(f"bundle: kid {entry.kid!r} is not the kid of its key ({kid.hex()})")
            keys[kid] = key
        revoked: set[bytes] = set()
        for text in document.revoked:
            if len(text) != 2 * codec.CODE_ID_BYTES:
                raise BundleError("bundle: a revoked code id is 32 hex digits")
            try:
                revoked.add(bytes.fromhex(text))
            except ValueError:
                raise BundleError("bundle: a revoked code id is 32 hex digits") from None
        return cls(keys, frozenset(revoked), document.generated_at)


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_p256(text: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise BundleError("bundle: public_key is not base64 DER SubjectPublicKeyInfo") from None
    except Exception:  # cryptography raises UnsupportedAlgorithm for keys it cannot load
        raise BundleError("bundle: public_key is not a key we can load") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BundleError("bundle: issuer keys are P-256")
    return key


# ---------------------------------------------------------------------------------------------------------
# The seen-set


class SeenSet:
    """(code id, counter) pairs already accepted, each kept until the moment its code would be refused anyway
    (too old or expired), and never more than `max_entries` (the oldest go first: memory stays bounded
    whatever a validator is shown)."""

    __slots__ = ("_entries", "dropped", "max_entries")

    def __init__(self, max_entries: int = 200_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries: at least 1")
        self.max_entries = max_entries
        self._entries: dict[tuple[bytes, int], int] = {}  # -> keep until (unix seconds), insertion order
        self.dropped = 0  # live entries pushed out by the bound

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[bytes, int]) -> bool:
        return key in self._entries

    def add(self, code_id: bytes, counter: int, keep_until: int, now: float) -> bool:
        """Record a pair; False (and no change) when it is already there."""
        key = (code_id, counter)
        if key in self._entries:
            return False
        if len(self._entries) >= self.max_entries:
            self.prune(now)
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
                self.dropped += 1
        self._entries[key] = keep_until
        return True

    def prune(self, now: float) -> int:
        """Forget the pairs whose codes can no longer pass; how many went."""
        gone = [key for key, keep_until in self._entries.items() if keep_until < now]
        for key in gone:
            del self._entries[key]
        return len(gone)

    def rows(self) -> list[tuple[str, int, int]]:
        """(code id hex, counter, keep until), for saving between runs."""
        return [(code_id.hex(), counter, until) for (code_id, counter), until in self._entries.items()]

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, int, int]], max_entries: int = 200_000) -> SeenSet:
        seen = cls(max_entries)
        for code_id, counter, until in rows:
            seen._entries[(bytes.fromhex(code_id), int(counter))] = int(until)
        while len(seen._entries) > max_entries:
            del seen._entries[next(iter(seen._entries))]
        return seen


# ---------------------------------------------------------------------------------------------------------
# verify


class Verdict(NamedTuple):
    valid: bool
    reason: str
    code: Code | None  # present once the bytes parsed, also on most refusals


def _refuse(reason: str, code: Code | None = None) -> Verdict:
    return Verdict(False, reason, code)


def verify(
    text: str,
    bundle: Bundle,
    now: float,
    *,
    scene: int,
    skew: int = DEFAULT_SKEW,
    max_age: int = DEFAULT_MAX_AGE,
    fare_fen: int | None = None,
    seen: SeenSet | None = None,
) -> Verdict:
    """Check a scanned text for `scene` at `now` (unix seconds, the validator's clock): the codec, the
    issuer signature with a bundle key, the device key and its signature, the time window widened by
    `skew` seconds, the code's age, the revocation list, the scene and (transit) the fare against the ride
    cap; last, when a seen-set is given, refuse a (code id, counter) it holds and record a new one."""
    try:
        code = codec.parse(codec.unpack(text))
    except CodeError as exc:
        return _refuse(exc.reason)
    auth = code.authorisation
    authorisation_bytes = code.raw[: codec.AUTHORISATION_BYTES]
    device_key = bundle._authorised.get(authorisation_bytes)
    if device_key is None:
        issuer_key = bundle.issuer_keys.get(auth.issuer_kid)
        if issuer_key is None:
            return _refuse("unknown_issuer", code)
        if not es256_verify(issuer_key, auth.signed, auth.signature):
            return _refuse("bad_issuer_signature", code)
        try:
            device_key = codec.device_public_key(auth.device_key)
        except CodeError as exc:
            return _refuse(exc.reason, code)
        bundle._remember(authorisation_bytes, device_key)
    if not es256_verify(device_key, code.device_signed, code.device_signature):
        return _refuse("bad_device_signature", code)
    if auth.issued_at > now + skew:
        return _refuse("not_yet_valid", code)
    if auth.expires_at < now - skew:
        return _refuse("expired", code)
    if code.generated_at < now - max_age - skew:
        return _refuse("stale", code)
    if code.generated_at > now + skew:
        return _refuse("future", code)
    if auth.code_id in bundle.revoked:
        return _refuse("revoked", code)
    if scene not in KNOWN_SCENES or not auth.scenes & scene:
        return _refuse("wrong_scene", code)
    if scene == codec.SCENE_TRANSIT and fare_fen is not None and fare_fen > auth.ride_cap_fen:
        return _refuse("over_cap", code)
    if seen is not None:
        # Past this moment the code is refused as stale or expired, so the pair need not be kept longer.
        keep_until = min(code.generated_at + max_age, auth.expires_at) + skew + 1
        if not seen.add(auth.code_id, code.counter, keep_until, now):
            return _refuse("replay", code)
    return Verdict(True, "ok", code)
