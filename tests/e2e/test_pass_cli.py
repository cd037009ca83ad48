"""`tongban pass verify` as a real process, as a checkpoint runs it offline: trust files on disk, the verdict
as JSON on stdout, exit 0 valid / 1 invalid / 2 usage error."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from health_code import certs, codec
from health_code.trust import build_trust_list, revocation_id
from health_code.verify import PassContent, encode_pass, sign_pass
from tests.support.server import ROOT, tongban_env
from tests.unit.test_pass_certs import NOW, Pki

pytestmark = pytest.mark.e2e


async def tongban(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.cli",
        *args,
        cwd=ROOT,
        env=tongban_env(COLUMNS="200"),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else None), timeout=60
    )
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def content(sub: str) -> PassContent:
    return PassContent(
        iss="CN-LN",
        sub=sub,
        iat=NOW - timedelta(minutes=5),
        exp=NOW + timedelta(hours=24),
        colour="yellow",
        since=NOW - timedelta(days=2),
        name="王**",
        number="2101**********123X",
    )


def verdict(out: str) -> dict[str, Any]:
    lines = out.strip().splitlines()
    assert len(lines) == 1, out  # one JSON document, nothing else on stdout
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


async def test_a_checkpoint_verifies_offline_with_each_kind_of_trust_file(tmp_path: Path) -> None:
    pki, other = Pki.make("CN-LN"), Pki.make("CN-JL")
    signer = pki.signer(["health"])
    eu_dsc = Pki.make("AT").signer(["vaccination"])
    good = sign_pass(content("u_good"), key=signer.key, cert=signer.cert)
    revoked = sign_pass(content("u_revoked"), key=signer.key, cert=signer.cert)
    eu_pass = encode_pass(
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
        key=eu_dsc.key,
        kid=certs.certificate_kid(eu_dsc.cert),
        prefix=codec.EU_PREFIX,
    )
    trust_list = tmp_path / "trust.json"
    trust_list.write_bytes(
        build_trust_list(
            issuer="CN-LN",
            version=1,
            generated_at=NOW,
            certificates=[(signer.cert, "CN-LN")],
            revocations=[revocation_id("CN-LN", "u_revoked")],
            root_key=pki.root_key,
            root_cert=pki.root,
        )
    )
    (tmp_path / "root.pem").write_bytes(certs.certificate_pem(pki.root))
    (tmp_path / "other-root.pem").write_bytes(certs.certificate_pem(other.root))
    (tmp_path / "signer.der").write_bytes(certs.certificate_der(signer.cert))
    eu_entry = {
        "kid": base64.b64encode(certs.certificate_kid(eu_dsc.cert)).decode(),
        "x5c": [base64.b64encode(certs.certificate_der(eu_dsc.cert)).decode()],
    }
    (tmp_path / "eu.json").write_text(json.dumps({"dsc_trust_list": {"AT": {"keys": [eu_entry]}}}))
    tampered = json.loads(trust_list.read_text())
    tampered["revocations"] = []
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    at = ["--at", "2025-06-01T16:30:00+08:00"]  # NOW + 30 min, given in Asia/Shanghai
    trust, root = str(trust_list), str(tmp_path / "root.pem")

    code, out, err = await tongban("pass", "verify", "--trust", trust, "--root", root, *at, good)
    assert code == 0, err
    result = verdict(out)
    assert result["valid"] is True and result["reason"] == "ok"
    claims = result["claims"]
    assert (claims["format"], claims["pass_type"], claims["colour"], claims["sub"]) == (
        "tongban",
        "health",
        "yellow",
        "u_good",
    )
    assert (claims["name"], claims["number"], claims["region"]) == ("王**", "2101**********123X", "CN-LN")
    assert claims["exp"] == int((NOW + timedelta(hours=24)).timestamp())

    code, out, _ = await tongban("pass", "verify", "--trust", trust, "--root", root, *at, revoked)
    assert code == 1 and verdict(out)["reason"] == "revoked"

    # The same signer as a single DER certificate, and the pass read from stdin as a scanner pipes it.
    code, out, err = await tongban(
        "pass", "verify", "--trust", str(tmp_path / "signer.der"), *at, "-", stdin=good + "\r\n"
    )
    assert code == 0 and verdict(out)["valid"], err

    code, out, _ = await tongban("pass", "verify", "--trust", trust, "--at", "2025-06-03T00:00:00Z", good)
    assert code == 1 and verdict(out)["reason"] == "expired"

    code, out, _ = await tongban("pass", "verify", *at, good)  # no trust file: nobody is trusted
    assert code == 1 and verdict(out) == {"valid": False, "reason": "unknown_kid", "claims": None}

    code, out, _ = await tongban(
        "pass", "verify", "--trust", trust, *at, good[:-3] + ("AAA" if good[-3:] != "AAA" else "BBB")
    )
    assert code == 1 and verdict(out)["reason"] != "ok"

    code, out, err = await tongban("pass", "verify", "--trust", str(tmp_path / "eu.json"), *at, eu_pass)
    assert code == 0, err
    assert verdict(out)["claims"]["pass_type"] == "vaccination" and verdict(out)["claims"]["region"] == "AT"

    # Usage errors: one line on stderr, exit 2, nothing on stdout.
    for args, message in [
        (["--trust", str(tmp_path / "tampered.json"), "--root", root], "does not verify"),
        (["--trust", trust, "--root", str(tmp_path / "other-root.pem")], "another root"),
        (
            ["--trust", str(tmp_path / "signer.der"), "--root", str(tmp_path / "other-root.pem")],
            "not issued by the root",
        ),
        (["--trust", str(tmp_path / "eu.json"), "--root", root], "not signed by a Tongban root"),
        (["--trust", str(tmp_path / "missing.json")], "missing.json"),
        (["--root", root], "give both"),
        (["--trust", trust, "--at", "next tuesday"], "--at"),
    ]:
        code, out, err = await tongban("pass", "verify", *args, good)
        assert code == 2, (args, out, err)
        assert out == "" and err.startswith("tongban: ") and message in err and err.count("\n") == 1, err
