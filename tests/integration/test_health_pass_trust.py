"""`tongban trust import` / `tongban trust list` against the real PostgreSQL, with passes signed here by
throwaway issuers: another province's signed trust list (its root required, older versions and tampered
lists refused, its revocations honoured), the EU DCC trust list with an HC1: pass, one signer certificate.
Each issuer's pass verifies after the import and not before, in the API process within its poll."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from click.testing import Result
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from api.app import create_app
from core.settings import Settings
from core.stores import Stores
from health_code import certs, codec
from health_code.trust import build_trust_list, revocation_id
from health_code.trustlist import TRUST, load_trust_store
from health_code.verify import PassContent, encode_pass, sign_pass, verify
from scripts.cli import app as cli_app
from tests.integration.test_health_pass_support import eventually
from tests.unit.test_pass_certs import NOW, Pki

# The throwaway issuers' certificates are valid around NOW (2025): passes are checked as of then.
AT = NOW + timedelta(minutes=30)


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    fast = msgspec.structs.replace(settings, health_pass_poll_seconds=0.2)
    async with AsyncTestClient(app=create_app(fast)) as client:
        yield client


async def cli(*args: str) -> Result:
    # The command runs its own event loop (asyncio.run), so it goes to a thread off this test's loop.
    return await asyncio.to_thread(CliRunner(env={"COLUMNS": "200"}).invoke, cli_app, list(args))


def content(sub: str, iss: str) -> PassContent:
    return PassContent(
        iss=iss,
        sub=sub,
        iat=NOW - timedelta(minutes=5),
        exp=NOW + timedelta(hours=24),
        colour="green",
        since=NOW - timedelta(days=2),
        name="李*",
        number="2201**********1234",
    )


async def reason_in_api_process(payload: str) -> str:
    """What this process's TrustStore (kept by the API's watcher) says."""
    return verify(payload, TRUST.store, AT).reason


async def test_another_provinces_list_is_trusted_after_import_only(
    api: AsyncTestClient,  # type: ignore[type-arg]
    stores: Stores,
    tmp_path: Path,
) -> None:
    province = "CN-JL"
    pki = Pki.make(province)
    signer = pki.signer(["health"])
    good = sign_pass(content("u_jl_good", province), key=signer.key, cert=signer.cert)
    revoked = sign_pass(content("u_jl_revoked", province), key=signer.key, cert=signer.cert)

    def trust_list(version: int, revocations: list[str]) -> bytes:
        return build_trust_list(
            issuer=province,
            version=version,
            generated_at=NOW,
            certificates=[(signer.cert, province)],
            revocations=revocations,
            root_key=pki.root_key,
            root_cert=pki.root,
        )

    listed = tmp_path / "cn-jl.json"
    listed.write_bytes(trust_list(7, [revocation_id(province, "u_jl_revoked")]))
    root = tmp_path / "cn-jl-root.pem"
    root.write_bytes(certs.certificate_pem(pki.root))

    assert verify(good, await load_trust_store(stores), AT).reason == "unknown_kid"

    # Without its root nothing vouches for the list; a tampered list fails the signature.
    refused = await cli("trust", "import", str(listed))
    assert refused.exit_code == 1 and "--root" in refused.output
    tampered = json.loads(listed.read_text())
    tampered["revocations"] = []
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    refused = await cli("trust", "import", str(tmp_path / "tampered.json"), "--root", str(root))
    assert refused.exit_code == 1 and "does not verify" in refused.output
    assert verify(good, await load_trust_store(stores), AT).reason == "unknown_kid"

    done = await cli("trust", "import", str(listed), "--root", str(root))
    assert done.exit_code == 0, done.output
    assert "CN-JL" in done.output and "yes" in done.output

    trusted = await load_trust_store(stores)
    verdict = verify(good, trusted, AT)
    assert verdict.valid and verdict.claims is not None and verdict.claims.region == province
    assert verify(revoked, trusted, AT).reason == "revoked"

    async def picked_up() -> str | None:
        reason = await reason_in_api_process(good)
        return reason if reason == "ok" else None

    assert await eventually(picked_up, timeout=5) == "ok"

    # An older version is refused; the same version again is fine (and replaces it).
    (tmp_path / "old.json").write_bytes(trust_list(6, []))
    refused = await cli("trust", "import", str(tmp_path / "old.json"), "--root", str(root))
    assert refused.exit_code == 1 and "older" in refused.output
    newer = tmp_path / "newer.json"
    newer.write_bytes(trust_list(8, []))  # the revocation lifted
    assert (await cli("trust", "import", str(newer), "--root", str(root))).exit_code == 0
    assert verify(revoked, await load_trust_store(stores), AT).valid

    shown = await cli("trust", "list")
    assert shown.exit_code == 0, shown.output
    assert "tongban CN-JL" in shown.output and base64.b64encode(
        certs.certificate_kid(signer.cert)
    ).decode() in (shown.output)


async def test_the_eu_dcc_list_makes_hc1_passes_verify(stores: Stores, tmp_path: Path) -> None:
    dsc = Pki.make("AT").signer(["vaccination"])
    hc1 = encode_pass(
        {
            1: "AT",
            4: int((NOW + timedelta(days=30)).timestamp()),
            6: int((NOW - timedelta(days=1)).timestamp()),
            -260: {
                1: {
                    "ver": "1.3.0",
                    "nam": {"fn": "Muster"},
                    "dob": "1990",
                    "v": [{"ci": "URN:UVCI:01:AT:1#X"}],
                }
            },
        },
        key=dsc.key,
        kid=certs.certificate_kid(dsc.cert),
        prefix=codec.EU_PREFIX,
    )
    assert verify(hc1, await load_trust_store(stores), AT).reason == "unknown_kid"
    entry = {
        "kid": base64.b64encode(certs.certificate_kid(dsc.cert)).decode(),
        "x5c": [base64.b64encode(certs.certificate_der(dsc.cert)).decode()],
    }
    eu = tmp_path / "eu.json"
    eu.write_text(json.dumps({"dsc_trust_list": {"AT": {"keys": [entry]}}}))

    done = await cli("trust", "import", str(eu))
    assert done.exit_code == 0, done.output
    verdict = verify(hc1, await load_trust_store(stores), AT)
    assert verdict.valid, verdict.reason
    assert verdict.claims is not None
    assert (verdict.claims.format, verdict.claims.pass_type, verdict.claims.region) == (
        "eu_dcc",
        "vaccination",
        "AT",
    )


async def test_one_signer_certificate_is_trusted_when_its_root_issued_it(
    stores: Stores, tmp_path: Path
) -> None:
    pki, stranger = Pki.make("CN-HL"), Pki.make("CN-HL")
    signer = pki.signer(["health"])
    payload = sign_pass(content("u_hl", "CN-HL"), key=signer.key, cert=signer.cert)
    pem = tmp_path / "signer.pem"
    pem.write_bytes(certs.certificate_pem(signer.cert))
    (tmp_path / "stranger.pem").write_bytes(certs.certificate_pem(stranger.root))
    (tmp_path / "root.pem").write_bytes(certs.certificate_pem(pki.root))

    refused = await cli("trust", "import", str(pem), "--root", str(tmp_path / "stranger.pem"))
    assert refused.exit_code == 1 and "not issued by the root" in refused.output
    assert verify(payload, await load_trust_store(stores), AT).reason == "unknown_kid"

    done = await cli("trust", "import", str(pem), "--root", str(tmp_path / "root.pem"))
    assert done.exit_code == 0, done.output
    verdict = verify(payload, await load_trust_store(stores), AT)
    assert verdict.valid and verdict.claims is not None and verdict.claims.region == "CN-HL"


async def test_our_own_list_and_unreadable_files_are_refused(
    api: AsyncTestClient,  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    ours = tmp_path / "ours.json"
    ours.write_bytes((await api.get("/v1/trust-list")).content)
    (tmp_path / "root.pem").write_bytes((await api.get("/v1/trust-list/root.pem")).content)
    refused = await cli("trust", "import", str(ours), "--root", str(tmp_path / "root.pem"))
    assert refused.exit_code == 1 and "our own province" in refused.output

    (tmp_path / "junk.json").write_text("{not json")
    refused = await cli("trust", "import", str(tmp_path / "junk.json"), "--root", str(tmp_path / "root.pem"))
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    missing = await cli("trust", "import", str(tmp_path / "nothing.json"))
    assert missing.exit_code == 1 and "nothing.json" in missing.output
