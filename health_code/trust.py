"""Whom a verifier trusts: signer certificates by kid, and revoked subjects.

Three sources load into a `TrustStore`:

- our trust-list JSON (docs/pass-format.md), signed by the provincial root with a detached ES256 signature
  over its canonical form: `load_trust_list`, made by `build_trust_list`;
- the EU DCC trust-list JSON `{"dsc_trust_list": {"XX": {"keys": [{"kid", "x5c"}]}}}`: `load_eu_trust_list`;
- one signer certificate, PEM or DER: `load_signer_certificate`.

`load_trust_file` tells them apart. Revocations name a subject by its revocation id (`revocation_id`):
`<rid>` revokes every pass of the subject, `<rid>.<unix seconds>` every pass issued (iat) before then.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from health_code.certs import (
    CertificateError,
    allowed_pass_types,
    certificate_der,
    certificate_kid,
    certificate_region,
    load_certificate,
)
from health_code.codec import es256_sign, es256_verify

TRUST_LIST_FORMAT: Final = "tongban-trust-list/1"
_RID_RE: Final = re.compile(r"[0-9a-f]{32}")
_REVOCATION_RE: Final = re.compile(r"([0-9a-f]{32})(?:\.(0|[1-9][0-9]{0,11}))?")
_REGION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")
_EVERY_PASS: Final = -1  # marks a revocation without a cut-off time


class TrustListError(ValueError):
    """A trust list or certificate cannot be loaded (malformed, wrong signature, wrong root). One line."""


def revocation_id(iss: str | None, subject: str) -> str:
    """A subject's revocation id: the first 16 bytes of SHA-256("tongban-rid/1" NUL iss NUL subject) as 32
    lowercase hex digits. `iss` is claim 1 ("" when absent); `subject` is claim 2 (sub) for our passes and
    the certificate identifier `ci` (UVCI) for EU passes. Issuers compute it the same way to revoke."""
    # One string, encoded once: this runs for every pass verified.
    return hashlib.sha256(f"tongban-rid/1\x00{iss or ''}\x00{subject}".encode()).hexdigest()[:32]


def parse_revocation(entry: str) -> tuple[str, int | None]:
    """`<rid>` -> (rid, None); `<rid>.<unix seconds>` -> (rid, seconds). Raises TrustListError."""
    match = _REVOCATION_RE.fullmatch(entry) if isinstance(entry, str) else None
    if match is None:
        raise TrustListError(
            "revocation entries are a revocation id (32 lowercase hex digits), optionally '.<unix seconds>'"
        )
    return match[1], int(match[2]) if match[2] is not None else None


@dataclass(frozen=True, slots=True)
class TrustedSigner:
    """A signer certificate the verifier trusts, with what it may sign and where it signs for."""

    kid: bytes
    certificate: x509.Certificate
    public_key: ec.EllipticCurvePublicKey
    region: str | None  # province (ours) or country code (EU)
    pass_types: frozenset[str]
    not_before: int  # unix seconds
    not_after: int
    kid_b64: str  # kid in base64, as shown in verdicts and trust lists


@dataclass(frozen=True, slots=True)
class TrustListInfo:
    """The header of a loaded Tongban trust list."""

    issuer: str
    version: int
    generated_at: datetime
    signature_checked: bool  # False when loaded without a root certificate


def _p256_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


class TrustStore:
    """Signer certificates by kid and revocations by revocation id. Build one, then only read it: verify()
    calls `signers` and `is_revoked`; to change what is trusted, build a new store and swap the reference."""

    def __init__(self) -> None:
        self._signers: dict[bytes, tuple[TrustedSigner, ...]] = {}
        self._revoked: dict[str, int] = {}  # rid -> revoke passes with iat before this; _EVERY_PASS: all
        self.info: TrustListInfo | None = None
        self.skipped: int = 0  # EU trust-list keys left out (not P-256, unreadable)

    # -- signers --------------------------------------------------------------------------------------

    def add_certificate(
        self, cert: x509.Certificate, *, region: str | None = None, kid: bytes | None = None
    ) -> TrustedSigner:
        """Trust `cert` as a signer under `kid` (default: its own kid, certs.certificate_kid). The pass
        types it may sign come from its extensions (certs.allowed_pass_types). Raises TrustListError for a
        key that is not ECDSA P-256."""
        public_key = _p256_key(cert)
        if public_key is None:
            raise TrustListError("signer certificates must hold an ECDSA P-256 key (ES256)")
        kid_bytes = certificate_kid(cert) if kid is None else kid
        signer = TrustedSigner(
            kid=kid_bytes,
            certificate=cert,
            public_key=public_key,
            region=region if region is not None else certificate_region(cert),
            pass_types=allowed_pass_types(cert),
            not_before=int(cert.not_valid_before_utc.timestamp()),
            not_after=int(cert.not_valid_after_utc.timestamp()),
            kid_b64=_b64(kid_bytes),
        )
        present = self._signers.get(signer.kid, ())
        if all(s.certificate != cert for s in present):
            self._signers[signer.kid] = (*present, signer)
        return signer

    def signers(self, kid: bytes) -> tuple[TrustedSigner, ...]:
        """The trusted signers with this kid (usually one; 8-byte kids may collide, so all are tried)."""
        return self._signers.get(kid, ())

    def all_signers(self) -> list[TrustedSigner]:
        return [signer for group in self._signers.values() for signer in group]

    def __len__(self) -> int:
        return sum(len(group) for group in self._signers.values())

    # -- revocations ----------------------------------------------------------------------------------

    def revoke(self, rid: str, *, issued_before: datetime | None = None) -> None:
        """Revoke the subject's passes: all of them, or those issued (iat) before `issued_before`."""
        if not _RID_RE.fullmatch(rid):
            raise TrustListError("a revocation id is 32 lowercase hex digits")
        # A cut-off before 1970 revokes nothing (iat >= 0), and must not read as _EVERY_PASS.
        cutoff = _EVERY_PASS if issued_before is None else max(0, int(issued_before.timestamp()))
        current = self._revoked.get(rid)
        if current == _EVERY_PASS:
            return
        if current is None or cutoff == _EVERY_PASS or cutoff > current:
            self._revoked[rid] = cutoff

    def add_revocation(self, entry: str) -> None:
        """A trust-list revocation entry: `<rid>` or `<rid>.<unix seconds>`."""
        rid, cutoff = parse_revocation(entry)
        self.revoke(rid, issued_before=None if cutoff is None else datetime.fromtimestamp(cutoff, UTC))

    def is_revoked(self, rid: str, iat: int) -> bool:
        """Whether a pass of subject `rid` issued at `iat` (unix seconds) is revoked."""
        cutoff = self._revoked.get(rid)
        return cutoff is not None and (cutoff == _EVERY_PASS or iat < cutoff)

    def revocation_entries(self) -> list[str]:
        """The revocations as trust-list entries, sorted."""
        return sorted(
            rid if cutoff == _EVERY_PASS else f"{rid}.{cutoff}" for rid, cutoff in self._revoked.items()
        )

    def update(self, other: TrustStore) -> None:
        """Add everything `other` trusts and revokes (e.g. our list plus the EU list)."""
        for signer in other.all_signers():
            self.add_certificate(signer.certificate, region=signer.region, kid=signer.kid)
        for entry in other.revocation_entries():
            self.add_revocation(entry)


# ---------------------------------------------------------------------------------------------------------
# Our trust list


def _b64decode(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise TrustListError(f"{what}: a base64 string is required")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TrustListError(f"{what}: not valid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise TrustListError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _no_float(text: str) -> Any:
    raise TrustListError("numbers in a trust list are integers")


def _parse_json(data: bytes | str) -> Any:
    try:
        return json.loads(
            data,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise TrustListError("not valid JSON") from None


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The bytes the root signs: the document without its "signature" member, as RFC 8785 (JCS) JSON.
    For a trust list (ASCII member names, strings, integers below 2**53) that is: members sorted, no
    whitespace, UTF-8, only '"', '\\' and control characters escaped."""
    unsigned = {key: value for key, value in document.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _timestamp_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_timestamp(text: object) -> datetime:
    if not isinstance(text, str) or not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text):
        raise TrustListError("generated_at: RFC 3339 UTC time like 2025-01-31T08:00:00Z")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise TrustListError("generated_at: not a valid time") from None


def _check_root(root: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = _p256_key(root)
    try:
        is_ca = root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if key is None or not is_ca:
        raise TrustListError("the root certificate must be a CA with an ECDSA P-256 key")
    return key


def build_trust_list(
    *,
    issuer: str,
    version: int,
    generated_at: datetime,
    certificates: Iterable[tuple[x509.Certificate, str]],
    revocations: Iterable[str],
    root_key: ec.EllipticCurvePrivateKey,
    root_cert: x509.Certificate,
) -> bytes:
    """Our trust-list JSON, signed by the root: `certificates` are (signer certificate, province) pairs,
    `revocations` trust-list entries (`<rid>` or `<rid>.<unix seconds>`)."""
    _check_root(root_cert)
    if not isinstance(version, int) or not 0 <= version < 2**53:
        raise TrustListError("version: an integer from 0 to 2**53 - 1")
    entries = []
    for cert, province in certificates:
        if _p256_key(cert) is None:
            raise TrustListError("signer certificates must hold an ECDSA P-256 key (ES256)")
        if not _REGION_RE.fullmatch(province):
            raise TrustListError(f"province {province!r}: letters, digits, ' ', '_', '.', '-' (1-64)")
        entries.append(
            {"kid": _b64(certificate_kid(cert)), "der": _b64(certificate_der(cert)), "province": province}
        )
    revoked = sorted(set(revocations))
    for entry in revoked:
        parse_revocation(entry)
    document: dict[str, Any] = {
        "format": TRUST_LIST_FORMAT,
        "issuer": issuer,
        "version": version,
        "generated_at": _timestamp_text(generated_at),
        "certificates": entries,
        "revocations": revoked,
    }
    document["signature"] = {
        "alg": "ES256",
        "kid": _b64(certificate_kid(root_cert)),
        "value": _b64(es256_sign(root_key, canonical_json(document))),
    }
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _check_signature(document: Mapping[str, Any], root: x509.Certificate) -> None:
    root_key = _check_root(root)
    signature = document.get("signature")
    if not isinstance(signature, dict) or signature.get("alg") != "ES256":
        raise TrustListError("trust list: no ES256 signature")
    if _b64decode(signature.get("kid"), "signature.kid") != certificate_kid(root):
        raise TrustListError("trust list: signed by another root certificate")
    if not es256_verify(
        root_key, canonical_json(document), _b64decode(signature.get("value"), "signature.value")
    ):
        raise TrustListError(
            "trust list: the root signature does not verify (altered or signed by another key)"
        )


def load_trust_list(data: bytes | str, *, root: x509.Certificate | None) -> TrustStore:
    """Our trust-list JSON -> TrustStore. With `root`, the detached signature must verify against that root
    certificate; with None the signature is not checked (store.info.signature_checked is False). Every
    certificate's kid must be its own (certs.certificate_kid). Raises TrustListError."""
    return _our_store(_parse_json(data), root)


def _our_store(document: Any, root: x509.Certificate | None) -> TrustStore:
    if not isinstance(document, dict) or document.get("format") != TRUST_LIST_FORMAT:
        raise TrustListError(f"not a Tongban trust list (format {TRUST_LIST_FORMAT})")
    if root is not None:
        _check_signature(document, root)
    issuer, version = document.get("issuer"), document.get("version")
    certificates, revocations = document.get("certificates"), document.get("revocations")
    if not isinstance(issuer, str) or not issuer:
        raise TrustListError("issuer: a non-empty string")
    if type(version) is not int or version < 0:
        raise TrustListError("version: a non-negative integer")
    if not isinstance(certificates, list) or not isinstance(revocations, list):
        raise TrustListError("certificates and revocations: arrays")
    store = TrustStore()
    for index, entry in enumerate(certificates):
        if not isinstance(entry, dict):
            raise TrustListError(f"certificates[{index}]: an object")
        province = entry.get("province")
        if not isinstance(province, str) or not _REGION_RE.fullmatch(province):
            raise TrustListError(f"certificates[{index}].province: a short code")
        try:
            cert = x509.load_der_x509_certificate(_b64decode(entry.get("der"), f"certificates[{index}].der"))
        except ValueError as exc:
            raise TrustListError(f"certificates[{index}].der: not a DER certificate ({exc})") from None
        if _b64decode(entry.get("kid"), f"certificates[{index}].kid") != certificate_kid(cert):
            raise TrustListError(f"certificates[{index}].kid: is not the certificate's kid")
        store.add_certificate(cert, region=province)
    for entry in revocations:
        store.add_revocation(entry)
    store.info = TrustListInfo(
        issuer=issuer,
        version=version,
        generated_at=_parse_timestamp(document.get("generated_at")),
        signature_checked=root is not None,
    )
    return store


# ---------------------------------------------------------------------------------------------------------
# EU DCC trust list, single certificates, any file


def load_eu_trust_list(data: bytes | str) -> TrustStore:
    """`{"dsc_trust_list": {"XX": {"keys": [{"kid": "<base64>", "x5c": ["<base64 DER>", ...]}]}}}` ->
    TrustStore, each signer under its listed kid with region XX. Keys that are not ECDSA P-256 (the EU also
    allows RSA-PSS) or cannot be read are left out and counted in `store.skipped`. The list's own
    signature (it comes from a national backend) is the caller's to check."""
    return _eu_store(_parse_json(data))


def _eu_store(document: Any) -> TrustStore:
    countries = document.get("dsc_trust_list") if isinstance(document, dict) else None
    if not isinstance(countries, dict):
        raise TrustListError('not an EU DCC trust list (no "dsc_trust_list" object)')
    store = TrustStore()
    for country, body in countries.items():
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list):
            raise TrustListError(f"dsc_trust_list.{country}.keys: an array")
        for key in keys:
            try:
                chain = key["x5c"]
                cert = x509.load_der_x509_certificate(_b64decode(chain[0], "x5c"))
                kid = _b64decode(key["kid"], "kid") if key.get("kid") is not None else certificate_kid(cert)
                store.add_certificate(cert, region=country, kid=kid)
            except (TrustListError, ValueError, KeyError, IndexError, TypeError, AttributeError):
                store.skipped += 1
    return store


def load_signer_certificate(
    data: bytes, *, root: x509.Certificate | None = None, region: str | None = None
) -> TrustStore:
    """One signer certificate (PEM or DER) -> TrustStore. With `root`, the certificate must be issued by
    that root (its signature is checked)."""
    try:
        cert = load_certificate(data)
    except CertificateError as exc:
        raise TrustListError(str(exc)) from None
    if root is not None:
        _check_root(root)
        try:
            cert.verify_directly_issued_by(root)
        except Exception as exc:  # InvalidSignature, ValueError, TypeError: not issued by this root
            raise TrustListError(
                f"the certificate is not issued by the root certificate ({type(exc).__name__})"
            ) from None
    store = TrustStore()
    store.add_certificate(cert, region=region)
    return store


def load_trust_file(data: bytes, *, root: x509.Certificate | None = None) -> TrustStore:
    """Whichever of the three formats `data` is: our trust list (signature checked when `root` is given),
    an EU DCC trust list (refused with `root`: it is not signed by our root), or one signer certificate
    (with `root`: must be issued by it)."""
    if data.lstrip()[:1] != b"{":
        return load_signer_certificate(data, root=root)
    document = _parse_json(data)
    if isinstance(document, dict) and "dsc_trust_list" in document:
        if root is not None:
            raise TrustListError("an EU DCC trust list is not signed by a Tongban root: load it without one")
        return _eu_store(document)
    return _our_store(document, root)
