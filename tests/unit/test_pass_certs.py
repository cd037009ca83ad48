"""Pass certificates: the root CA, document signers, their pass-type OIDs, kids and max_exp.

`Pki` here is also the test PKI of the other pass tests (tests/unit/test_pass_*.py, tests/e2e/test_pass_cli.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from health_code import certs

NOW = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)


@dataclass
class Signer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


@dataclass
class Pki:
    """A province's root and the signers it certifies, valid around NOW."""

    province: str
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate

    @classmethod
    def make(cls, province: str = "CN-LN") -> Pki:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = certs.make_root_certificate(
            root_key,
            common_name=f"{province} health pass root",
            province=province,
            not_before=NOW - timedelta(days=30),
            not_after=NOW + timedelta(days=3650),
        )
        return cls(province=province, root_key=root_key, root=root)

    def signer(
        self,
        pass_types: Iterable[str] = ("health",),
        *,
        not_before: datetime = NOW - timedelta(days=1),
        not_after: datetime = NOW + timedelta(days=365),
    ) -> Signer:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certs.make_signer_certificate(
            key.public_key(),
            root_key=self.root_key,
            root_cert=self.root,
            common_name=f"{self.province} signer",
            province=self.province,
            pass_types=pass_types,
            not_before=not_before,
            not_after=not_after,
        )
        return Signer(key=key, cert=cert)


def _eku(cert: x509.Certificate) -> list[str]:
    return [oid.dotted_string for oid in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]


def _plain_cert(extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    """A self-issued P-256 certificate with exactly these extensions (for allowed_pass_types)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COUNTRY_NAME, "AT"), x509.NameAttribute(NameOID.COMMON_NAME, "DSC")]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def _key_usage(digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=not digital_signature,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def test_the_root_is_a_self_signed_ca_for_its_province() -> None:
    pki = Pki.make("CN-JL")
    root = pki.root
    root.verify_directly_issued_by(root)  # self-signed: raises if not
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert root.subject.get_attributes_for_oid(NameOID.STATE_OR_PROVINCE_NAME)[0].value == "CN-JL"
    assert certs.certificate_region(root) == "CN-JL"
    assert certs.allowed_pass_types(root) == frozenset()  # a CA signs certificates, not passes


def test_a_signer_is_a_non_ca_digital_signature_key_naming_its_pass_types() -> None:
    pki = Pki.make()
    signer = pki.signer(["venue", "health"])
    signer.cert.verify_directly_issued_by(pki.root)
    assert signer.cert.issuer == pki.root.subject
    assert not signer.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = signer.cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert sorted(_eku(signer.cert)) == sorted(
        [certs.OID_HEALTH_PASS.dotted_string, certs.OID_VENUE_CODE.dotted_string]
    )
    assert certs.allowed_pass_types(signer.cert) == {"health", "venue"}
    assert certs.allowed_pass_types(pki.signer(["venue"]).cert) == {"venue"}


def test_our_oids_sit_under_the_documented_uuid_arc_and_eu_oids_are_the_dcc_ones() -> None:
    assert certs.TONGBAN_ARC == "2.25.301376626344022276037057401674308357610"
    assert int(certs.TONGBAN_ARC.split(".")[2]) == 0xE2BB06E452BD48A4997D2164129D8DEA  # the UUID, X.667
    assert certs.OID_HEALTH_PASS.dotted_string == certs.TONGBAN_ARC + ".1.1"
    assert certs.OID_VENUE_CODE.dotted_string == certs.TONGBAN_ARC + ".1.2"
    eu = Pki.make().signer(["test", "vaccination", "recovery"])
    assert sorted(_eku(eu.cert)) == [f"1.3.6.1.4.1.1847.2021.1.{n}" for n in (1, 2, 3)]
    assert certs.allowed_pass_types(eu.cert) == {"test", "vaccination", "recovery"}


@pytest.mark.parametrize(
    ("extensions", "allowed"),
    [
        # The EU rule: a DSC without any pass-type OID may sign every EU type, and none of ours.
        ([], {"test", "vaccination", "recovery"}),
        ([(_key_usage(True), True)], {"test", "vaccination", "recovery"}),
        (
            [(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
            {"test", "vaccination", "recovery"},
        ),
        ([(x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.4.1.1847.2021.1.1")]), False)], {"test"}),
        # The misprinted arc some member states issued is honoured like the EU's verifiers do.
        (
            [(x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.4.1.0.1847.2021.1.2")]), False)],
            {"vaccination"},
        ),
        (
            [(x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.4.1.0.1847.2021.1.3")]), False)],
            {"recovery"},
        ),
        ([(x509.ExtendedKeyUsage([certs.OID_VENUE_CODE]), False)], {"venue"}),
        # Not a document signer at all.
        ([(_key_usage(False), True)], set()),
        ([(x509.BasicConstraints(ca=True, path_length=None), True)], set()),
    ],
)
def test_allowed_pass_types_follow_the_extensions(
    extensions: list[tuple[x509.ExtensionType, bool]], allowed: set[str]
) -> None:
    assert certs.allowed_pass_types(_plain_cert(extensions)) == allowed


def test_kid_is_the_first_8_bytes_of_sha256_over_the_der() -> None:
    cert = Pki.make().signer().cert
    der = cert.public_bytes(serialization.Encoding.DER)
    assert certs.certificate_kid(cert) == hashlib.sha256(der).digest()[:8]
    assert len(certs.certificate_kid(cert)) == 8


def test_max_exp_never_goes_beyond_the_signers_not_after() -> None:
    signer = Pki.make().signer(not_after=NOW + timedelta(days=10)).cert
    assert certs.max_exp(signer, NOW + timedelta(days=1)) == NOW + timedelta(days=1)
    assert (
        certs.max_exp(signer, NOW + timedelta(days=30))
        == signer.not_valid_after_utc
        == NOW + timedelta(days=10)
    )
    assert certs.max_exp(signer, NOW + timedelta(days=10)) == NOW + timedelta(days=10)


def test_make_signer_refuses_what_would_be_a_broken_certificate() -> None:
    pki, other = Pki.make(), Pki.make()
    key = ec.generate_private_key(ec.SECP256R1())
    base: dict[str, Any] = {
        "root_key": pki.root_key,
        "root_cert": pki.root,
        "common_name": "s",
        "province": "CN-LN",
        "pass_types": ["health"],
        "not_before": NOW,
        "not_after": NOW + timedelta(days=1),
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"pass_types": []}, "at least one"),
        ({"pass_types": ["health", "boarding"]}, "boarding"),
        ({"not_after": NOW + timedelta(days=99999)}, "within the root"),
        ({"not_before": NOW - timedelta(days=999)}, "within the root"),
        ({"not_after": NOW - timedelta(days=1)}, "after not_before"),
        ({"root_key": other.root_key}, "does not belong"),
        ({"not_before": datetime(2025, 6, 1)}, "timezone-aware"),
    ]
    for change, message in cases:
        with pytest.raises(certs.CertificateError, match=message):
            certs.make_signer_certificate(key.public_key(), **{**base, **change})
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(certs.CertificateError, match="P-256"):
        certs.make_signer_certificate(p384.public_key(), **base)
    with pytest.raises(certs.CertificateError, match="P-256"):
        certs.make_root_certificate(
            p384, common_name="r", province="x", not_before=NOW, not_after=NOW + timedelta(1)
        )


def test_certificates_load_from_pem_and_der() -> None:
    cert = Pki.make().signer().cert
    assert certs.load_certificate(certs.certificate_pem(cert)) == cert
    assert certs.load_certificate(b"\n  " + certs.certificate_pem(cert)) == cert
    assert certs.load_certificate(certs.certificate_der(cert)) == cert
    for junk in (
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ):
        with pytest.raises(certs.CertificateError):
            certs.load_certificate(junk)
