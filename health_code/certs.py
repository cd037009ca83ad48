"""Certificates of the health pass: the provincial root CA and the document signers it certifies.

The key store holds the private keys; these functions take `cryptography` key objects and return
`x509.Certificate`s. Everything is ECDSA P-256 / SHA-256 (ES256), as the passes are.

Which pass types a signer may sign is written in its extendedKeyUsage:

- our private arc `2.25.301376626344022276037057401674308357610` (an X.667 UUID arc, unique without
  registration): `.1.1` health pass, `.1.2` venue code;
- the EU DCC OIDs `1.3.6.1.4.1.1847.2021.1.1` test, `.1.2` vaccination, `.1.3` recovery, and the
  misprinted `1.3.6.1.4.1.0.1847.2021.1.x` that some member states issued (EU verifiers accept both).

A signer with none of these OIDs may sign every EU type (the EU rule) and none of ours.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# X.667: 2.25.<the UUID e2bb06e4-52bd-48a4-997d-2164129d8dea as an integer>.
TONGBAN_ARC: Final = "2.25.301376626344022276037057401674308357610"
OID_HEALTH_PASS: Final = x509.ObjectIdentifier(TONGBAN_ARC + ".1.1")
OID_VENUE_CODE: Final = x509.ObjectIdentifier(TONGBAN_ARC + ".1.2")
OID_EU_TEST: Final = x509.ObjectIdentifier("1.3.6.1.4.1.1847.2021.1.1")
OID_EU_VACCINATION: Final = x509.ObjectIdentifier("1.3.6.1.4.1.1847.2021.1.2")
OID_EU_RECOVERY: Final = x509.ObjectIdentifier("1.3.6.1.4.1.1847.2021.1.3")

HEALTH: Final = "health"
VENUE: Final = "venue"
TEST: Final = "test"
VACCINATION: Final = "vaccination"
RECOVERY: Final = "recovery"
TONGBAN_PASS_TYPES: Final = frozenset({HEALTH, VENUE})
EU_PASS_TYPES: Final = frozenset({TEST, VACCINATION, RECOVERY})
PASS_TYPES: Final = TONGBAN_PASS_TYPES | EU_PASS_TYPES

# The OID written for each pass type when we make a certificate.
PASS_TYPE_OIDS: Final[dict[str, x509.ObjectIdentifier]] = {
    HEALTH: OID_HEALTH_PASS,
    VENUE: OID_VENUE_CODE,
    TEST: OID_EU_TEST,
    VACCINATION: OID_EU_VACCINATION,
    RECOVERY: OID_EU_RECOVERY,
}
# Every OID honoured when reading a certificate.
_OID_PASS_TYPES: Final[dict[str, str]] = {
    OID_HEALTH_PASS.dotted_string: HEALTH,
    OID_VENUE_CODE.dotted_string: VENUE,
    "1.3.6.1.4.1.1847.2021.1.1": TEST,
    "1.3.6.1.4.1.1847.2021.1.2": VACCINATION,
    "1.3.6.1.4.1.1847.2021.1.3": RECOVERY,
    "1.3.6.1.4.1.0.1847.2021.1.1": TEST,
    "1.3.6.1.4.1.0.1847.2021.1.2": VACCINATION,
    "1.3.6.1.4.1.0.1847.2021.1.3": RECOVERY,
}
KID_BYTES: Final = 8


class CertificateError(ValueError):
    """A certificate cannot be made or read as asked. One line."""


def _require_p256(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise CertificateError(f"{what}: an ECDSA P-256 key is required")


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise CertificateError("certificate times must be timezone-aware")
    return moment.astimezone(UTC)


def _name(common_name: str, province: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, province),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tongban health pass"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _serial() -> int:
    return secrets.randbits(159) | 1  # positive, at most 20 octets, never zero (RFC 5280 4.1.2.2)


def make_root_certificate(
    key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str,
    province: str,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """The self-signed provincial root CA: basicConstraints CA (path length 0: it certifies signers only),
    keyUsage keyCertSign and cRLSign. `province` goes into the subject's stateOrProvinceName."""
    _require_p256(key, "root key")
    start, end = _utc(not_before), _utc(not_after)
    if end <= start:
        raise CertificateError("root certificate: not_after must be after not_before")
    name = _name(common_name, province)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def make_signer_certificate(
    public_key: ec.EllipticCurvePublicKey,
    *,
    root_key: ec.EllipticCurvePrivateKey,
    root_cert: x509.Certificate,
    common_name: str,
    province: str,
    pass_types: Iterable[str],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """A document signer certified by the root: not a CA, keyUsage digitalSignature, and an
    extendedKeyUsage naming exactly the pass types it may sign (see the module notes for the OIDs).
    Its validity must lie within the root's."""
    _require_p256(public_key, "signer key")
    _require_p256(root_key, "root key")
    types = sorted(set(pass_types))
    unknown = [t for t in types if t not in PASS_TYPE_OIDS]
    if not types or unknown:
        raise CertificateError(
            f"signer pass types: one or more of {', '.join(sorted(PASS_TYPES))} (got {', '.join(unknown)})"
            if unknown
            else "signer pass types: at least one is required"
        )
    start, end = _utc(not_before), _utc(not_after)
    if end <= start:
        raise CertificateError("signer certificate: not_after must be after not_before")
    if start < root_cert.not_valid_before_utc or end > root_cert.not_valid_after_utc:
        raise CertificateError("signer certificate: its validity must lie within the root certificate's")
    root_public = root_key.public_key()
    if root_public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != root_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CertificateError("root key does not belong to the root certificate")
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, province))
        .issuer_name(root_cert.subject)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([PASS_TYPE_OIDS[t] for t in types]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_public),
            critical=False,
        )
    )
    return builder.sign(root_key, hashes.SHA256())


def certificate_kid(cert: x509.Certificate) -> bytes:
    """The COSE kid of a signer: the first 8 bytes of SHA-256 over the certificate's DER (as the EU DCC)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()[:KID_BYTES]


def max_exp(cert: x509.Certificate, wanted_exp: datetime) -> datetime:
    """The expiry a pass signed by `cert` may carry: `wanted_exp`, cut back to the signer's notAfter
    (a pass never outlives its signer; verifiers reject it with signer_not_valid_at_time)."""
    return min(_utc(wanted_exp), cert.not_valid_after_utc)


def allowed_pass_types(cert: x509.Certificate) -> frozenset[str]:
    """The pass types `cert` may sign. None for a CA, or when keyUsage is present without
    digitalSignature. Otherwise the types its extendedKeyUsage names; with none of our or the EU's
    OIDs there, the three EU types (the EU DCC rule) and none of ours."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return frozenset()
    except x509.ExtensionNotFound:
        pass
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return frozenset()
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return EU_PASS_TYPES
    named = frozenset(
        _OID_PASS_TYPES[oid.dotted_string] for oid in usages if oid.dotted_string in _OID_PASS_TYPES
    )
    return named or EU_PASS_TYPES


def certificate_region(cert: x509.Certificate) -> str | None:
    """The subject's stateOrProvinceName, else its countryName (a signer's province or country)."""
    for oid in (NameOID.STATE_OR_PROVINCE_NAME, NameOID.COUNTRY_NAME):
        attrs = cert.subject.get_attributes_for_oid(oid)
        if attrs:
            value = attrs[0].value
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate from PEM or DER bytes."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"not a PEM or DER certificate: {exc}") from None


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
