"""Trust: revocation ids, the TrustStore, our signed trust-list JSON, the EU DCC trust list, single
certificates, and telling the three apart."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from health_code import certs
from health_code.trust import (
    TRUST_LIST_FORMAT,
    TrustListError,
    TrustStore,
    build_trust_list,
    canonical_json,
    load_eu_trust_list,
    load_signer_certificate,
    load_trust_file,
    load_trust_list,
    parse_revocation,
    revocation_id,
)
from tests.unit.test_pass_certs import NOW, Pki

RID = revocation_id("CN-LN", "u_1")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def signed_list(pki: Pki, **overrides: Any) -> bytes:
    health, venue = pki.signer(["health"]), pki.signer(["venue"])
    args: dict[str, Any] = {
        "issuer": "CN-LN",
        "version": 3,
        "generated_at": NOW,
        "certificates": [(health.cert, "CN-LN"), (venue.cert, "CN-JL")],
        "revocations": [RID, revocation_id("CN-LN", "u_2") + ".1748764800"],
        "root_key": pki.root_key,
        "root_cert": pki.root,
    }
    return build_trust_list(**{**args, **overrides})


# --- revocation ids ---------------------------------------------------------------------------------------


def test_revocation_id_is_the_documented_sha256_prefix() -> None:
    expected = hashlib.sha256(b"tongban-rid/1\x00CN-LN\x00u_1").hexdigest()[:32]
    assert expected == RID
    assert revocation_id(None, "URN:UVCI:01:AT:X#1") == revocation_id("", "URN:UVCI:01:AT:X#1")
    # The issuer is part of it: the same subject id at another province is another subject.
    assert revocation_id("CN-JL", "u_1") != RID
    # NUL-separated, so shifting characters between iss and sub changes the id.
    assert revocation_id("CN-L", "Nu_1") != revocation_id("CN-LN", "u_1")


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [(RID, (RID, None)), (RID + ".0", (RID, 0)), (RID + ".1748764800", (RID, 1748764800))],
)
def test_revocation_entries_parse(entry: str, parsed: tuple[str, int | None]) -> None:
    assert parse_revocation(entry) == parsed


@pytest.mark.parametrize(
    "entry", [RID.upper(), RID[:-1], RID + ".", RID + ".-5", RID + ".01", RID + ".1.2", RID + " ", "", 5]
)
def test_bad_revocation_entries_are_refused(entry: Any) -> None:
    with pytest.raises(TrustListError):
        parse_revocation(entry)


def test_rid_revokes_everything_and_rid_ts_what_was_issued_before() -> None:
    store = TrustStore()
    other = revocation_id("CN-LN", "u_3")
    store.add_revocation(RID)
    store.add_revocation(other + ".1000")
    assert store.is_revoked(RID, 0) and store.is_revoked(RID, 10**10)
    assert (
        store.is_revoked(other, 999)
        and not store.is_revoked(other, 1000)
        and not store.is_revoked(other, 2000)
    )
    assert not store.is_revoked(revocation_id("CN-LN", "u_4"), 0)
    # Merging: a later cut-off wins, and a full revocation beats any cut-off.
    store.add_revocation(other + ".500")
    assert store.is_revoked(other, 999)
    store.add_revocation(other + ".2000")
    assert store.is_revoked(other, 1999)
    store.revoke(RID, issued_before=datetime.fromtimestamp(5, UTC))
    assert store.is_revoked(RID, 10**10)
    assert store.revocation_entries() == sorted([RID, other + ".2000"])
    with pytest.raises(TrustListError):
        store.revoke("not-a-rid")
    early = revocation_id("CN-LN", "u_6")
    store.revoke(early, issued_before=datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert not store.is_revoked(early, 0)


# --- our trust list ---------------------------------------------------------------------------------------


def test_built_trust_list_loads_with_its_root() -> None:
    pki = Pki.make()
    data = signed_list(pki)
    document = json.loads(data)
    assert (
        document["format"] == TRUST_LIST_FORMAT and document["issuer"] == "CN-LN" and document["version"] == 3
    )
    assert document["generated_at"] == "2025-06-01T08:00:00Z"
    assert set(document) == {
        "format",
        "issuer",
        "version",
        "generated_at",
        "certificates",
        "revocations",
        "signature",
    }
    store = load_trust_list(data, root=pki.root)
    assert store.info is not None and store.info.signature_checked and store.info.version == 3
    assert store.info.generated_at == NOW
    assert len(store) == 2
    by_region = {s.region: s for s in store.all_signers()}
    assert by_region["CN-LN"].pass_types == {"health"} and by_region["CN-JL"].pass_types == {"venue"}
    for entry in document["certificates"]:
        signer = store.signers(base64.b64decode(entry["kid"]))[0]
        assert base64.b64decode(entry["der"]) == certs.certificate_der(signer.certificate)
    assert store.is_revoked(RID, 0)
    assert store.is_revoked(revocation_id("CN-LN", "u_2"), 1748764799)
    assert not store.is_revoked(revocation_id("CN-LN", "u_2"), 1748764800)


def test_the_signature_is_es256_over_the_canonical_json_without_the_signature() -> None:
    pki = Pki.make()
    document = json.loads(signed_list(pki))
    signature = document.pop("signature")
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical == canonical_json({**document, "signature": signature})
    assert signature["alg"] == "ES256" and base64.b64decode(signature["kid"]) == certs.certificate_kid(
        pki.root
    )
    raw = base64.b64decode(signature["value"])
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    root_key = pki.root.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    root_key.verify(der, canonical, ec.ECDSA(hashes.SHA256()))  # raises if not


def _tampered(data: bytes, change: Any) -> bytes:
    document = json.loads(data)
    change(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["revocations"].pop(),  # un-revoke someone
        lambda d: d["revocations"].append(revocation_id("CN-LN", "u_9")),
        lambda d: d["certificates"][0].update(province="CN-SH"),
        lambda d: d.update(version=4),
        lambda d: d.update(extra="x"),
        lambda d: d["signature"].update(value=b64(bytes(64))),
    ],
)
def test_any_change_breaks_the_root_signature(change: Any) -> None:
    pki = Pki.make()
    data = _tampered(signed_list(pki), change)
    with pytest.raises(TrustListError, match="does not verify"):
        load_trust_list(data, root=pki.root)
    # Without a root nothing is checked, and the store says so.
    store = load_trust_list(data, root=None)
    assert store.info is not None and not store.info.signature_checked


def test_reformatting_does_not_break_the_signature() -> None:
    pki = Pki.make()
    data = _tampered(signed_list(pki), lambda d: None)  # other whitespace, other member order
    assert data != signed_list(pki)
    assert len(load_trust_list(data, root=pki.root)) == 2


def test_another_root_or_a_non_ca_root_is_refused() -> None:
    pki, other = Pki.make(), Pki.make()
    data = signed_list(pki)
    with pytest.raises(TrustListError, match="another root"):
        load_trust_list(data, root=other.root)
    with pytest.raises(TrustListError, match="must be a CA"):
        load_trust_list(data, root=pki.signer().cert)
    signed_by_other_key = build_trust_list(
        issuer="CN-LN",
        version=1,
        generated_at=NOW,
        certificates=[],
        revocations=[],
        root_key=other.root_key,
        root_cert=pki.root,
    )
    with pytest.raises(TrustListError, match="does not verify"):
        load_trust_list(signed_by_other_key, root=pki.root)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "not a Tongban trust list"),
        (b'{"format": "other/1"}', "not a Tongban trust list"),
        (b'{"format": "tongban-trust-list/1", "format": "tongban-trust-list/1"}', "duplicate"),
        (b'{"format": "tongban-trust-list/1", "version": 1.5}', "integers"),
        (b'{"format": "tongban-trust-list/1", "version": NaN}', "integers"),
    ],
)
def test_malformed_trust_lists_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(TrustListError, match=why):
        load_trust_list(data, root=None)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d["certificates"][0].update(kid=b64(b"12345678")), "not the certificate's kid"),
        (lambda d: d["certificates"][0].update(der="!!"), "base64"),
        (lambda d: d["certificates"][0].update(der=b64(b"junk")), "not a DER certificate"),
        (lambda d: d["certificates"][0].update(province=""), "province"),
        (lambda d: d.update(revocations=["nope"]), "revocation"),
        (lambda d: d.update(version=-1), "version"),
        (lambda d: d.update(issuer=""), "issuer"),
        (lambda d: d.update(generated_at="yesterday"), "generated_at"),
        (lambda d: d.update(certificates={}), "arrays"),
    ],
)
def test_bad_entries_are_refused_even_unsigned(change: Any, why: str) -> None:
    with pytest.raises(TrustListError, match=why):
        load_trust_list(_tampered(signed_list(Pki.make()), change), root=None)


def test_builder_refuses_bad_input() -> None:
    pki = Pki.make()
    with pytest.raises(TrustListError, match="revocation"):
        signed_list(pki, revocations=["x"])
    with pytest.raises(TrustListError, match="province"):
        signed_list(pki, certificates=[(pki.signer().cert, "bad/province")])
    with pytest.raises(TrustListError, match="version"):
        signed_list(pki, version=-1)


# --- EU DCC trust list, one certificate, any file ---------------------------------------------------------


def self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name(
        [x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"), x509.NameAttribute(NameOID.COMMON_NAME, "DSC")]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(9)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def eu_list(entries: dict[str, list[dict[str, Any]]]) -> bytes:
    return json.dumps({"dsc_trust_list": {cc: {"keys": keys} for cc, keys in entries.items()}}).encode()


def test_eu_trust_list_loads_p256_keys_under_their_kids_and_skips_the_rest() -> None:
    at, de = Pki.make("AT").signer(["test"]), Pki.make("DE").signer(["vaccination", "recovery"])
    rsa_cert = self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048))  # EU allows PS256
    data = eu_list(
        {
            "AT": [
                {"kid": b64(certs.certificate_kid(at.cert)), "x5c": [b64(certs.certificate_der(at.cert))]}
            ],
            "DE": [
                {
                    "kid": b64(b"listedkd"),
                    "x5c": [b64(certs.certificate_der(de.cert))],
                },  # the listed kid is used
                {"kid": b64(b"rsa-key!"), "x5c": [b64(certs.certificate_der(rsa_cert))]},
                {"kid": b64(b"broken!!"), "x5c": ["%%%"]},
                {"kid": b64(b"no-x5c!!")},
            ],
        }
    )
    store = load_eu_trust_list(data)
    assert len(store) == 2 and store.skipped == 3
    (signer_at,) = store.signers(certs.certificate_kid(at.cert))
    assert signer_at.region == "AT" and signer_at.pass_types == {"test"}
    (signer_de,) = store.signers(b"listedkd")
    assert signer_de.region == "DE" and signer_de.pass_types == {"vaccination", "recovery"}
    assert load_trust_file(data).signers(b"listedkd")
    with pytest.raises(TrustListError, match="not signed by a Tongban root"):
        load_trust_file(data, root=Pki.make().root)
    with pytest.raises(TrustListError, match="dsc_trust_list"):
        load_eu_trust_list(b'{"keys": []}')


def test_a_single_signer_certificate_loads_from_pem_or_der_and_checks_its_issuer() -> None:
    pki, other = Pki.make("CN-JL"), Pki.make()
    signer = pki.signer(["health"])
    for data in (certs.certificate_pem(signer.cert), certs.certificate_der(signer.cert)):
        store = load_trust_file(data)
        (trusted,) = store.signers(certs.certificate_kid(signer.cert))
        assert trusted.region == "CN-JL" and trusted.pass_types == {"health"}
        assert len(load_signer_certificate(data, root=pki.root)) == 1
        with pytest.raises(TrustListError, match="not issued by the root"):
            load_trust_file(data, root=other.root)
    with pytest.raises(TrustListError, match="P-256"):
        TrustStore().add_certificate(self_signed(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(TrustListError, match="PEM or DER"):
        load_trust_file(b"garbage")


def test_load_trust_file_reads_our_list_and_checks_it_with_a_root() -> None:
    pki = Pki.make()
    data = signed_list(pki)
    assert len(load_trust_file(data)) == 2
    assert len(load_trust_file(b"\n  " + data, root=pki.root)) == 2
    with pytest.raises(TrustListError, match="another root"):
        load_trust_file(data, root=Pki.make().root)


def test_update_merges_signers_and_revocations() -> None:
    ours = load_trust_list(signed_list(Pki.make()), root=None)
    other = TrustStore()
    other.add_certificate(Pki.make("CN-JL").signer().cert)
    other.add_revocation(revocation_id("CN-JL", "u_5"))
    ours.update(other)
    assert len(ours) == 3 and ours.is_revoked(revocation_id("CN-JL", "u_5"), 0) and ours.is_revoked(RID, 0)
    ours.update(other)  # the same certificate twice is one signer
    assert len(ours) == 3
