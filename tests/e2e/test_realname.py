"""L1 -> L2 -> L3 over real processes: the sandbox (SMS gateway, population registry, face check), the job
worker and a two-process API server; the registry is loaded with `tongban sandbox registry import`."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from core.pii.masking import mask_id_number, mask_name
from tests.support.auth import login
from tests.support.sandbox import start_sandbox
from tests.support.server import ROOT, free_port, running_server, start
from tests.unit.test_realname_validation import random_id_number, random_name

pytestmark = pytest.mark.e2e


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def verified_claims(api: str, token: str) -> dict[str, Any]:
    """The claims of `token`, checked against the published JWKS alone."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(httpx.get(api + "/.well-known/jwks.json").json())[kid]
    decoded: dict[str, Any] = jwt.decode(token, key.key, algorithms=["ES256"], audience="tongban-app")
    return decoded


async def accounts_rows_as_text(account_id: str) -> list[str]:
    conn = await asyncpg.connect(os.environ["TONGBAN_DATABASE_URL"])
    try:
        rows = await conn.fetch("SELECT t::text AS row FROM accounts t")
        assert any(account_id in row["row"] for row in rows)
        return [row["row"] for row in rows]
    finally:
        await conn.close()


def test_citizen_goes_from_l1_to_l3(tmp_path: Path) -> None:
    people = [(prefix + random_name(), random_id_number()) for prefix in "甲乙丙"]  # three distinct names
    name, id_number = people[1]
    phone = "136" + f"{secrets.randbelow(10**8):08d}"
    registry_csv = tmp_path / "registry.csv"
    registry_csv.write_text("name,id_number\n" + "".join(f"{n},{i}\n" for n, i in people), encoding="utf-8")

    sandbox = start_sandbox(
        tmp_path, only=["sms", "population", "face"], TONGBAN_AUTH_SMS_PER_IP_HOUR="10000"
    )
    worker = start(["worker"], sandbox.env, tmp_path / "worker.log", free_port())
    cli_output = ""
    try:
        with running_server(tmp_path, sandbox.env, workers=2) as api:
            url = api.base_url
            imported = subprocess.run(
                [sys.executable, "-m", "scripts.cli", "sandbox", "registry", "import", str(registry_csv)],
                cwd=ROOT,
                env=sandbox.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            cli_output = imported.stdout + imported.stderr
            assert imported.returncode == 0, cli_output
            assert "imported 3 records" in imported.stdout
            stats = httpx.get(sandbox.urls["population"] + "/registry/stats").json()
            assert stats == {"records": 3}

            tokens = login(url, sandbox.urls["sms"], phone)
            l1 = verified_claims(url, tokens["access_token"])
            assert (l1["acr"], l1["amr"]) == ("L1", ["sms"])

            mismatch = httpx.post(
                url + "/v1/me/real-name",
                json={"name": people[0][0], "id_number": id_number},
                headers=bearer(tokens["access_token"]),
            )
            assert mismatch.status_code == 422 and mismatch.json()["code"] == "real_name_mismatch"
            refused = httpx.post(
                url + "/v1/me/face",
                json={"image": base64.b64encode(b"face").decode()},
                headers=bearer(tokens["access_token"]),
            )
            assert refused.status_code == 403

            l2_answer = httpx.post(
                url + "/v1/me/real-name",
                json={"name": name, "id_number": id_number},
                headers=bearer(tokens["access_token"]),
            )
            assert l2_answer.status_code == 200, l2_answer.text
            l2 = verified_claims(url, l2_answer.json()["access_token"])
            assert (l2["acr"], l2["amr"], l2["sid"]) == ("L2", ["sms", "idcard"], l1["sid"])

            l3_answer = httpx.post(
                url + "/v1/me/face",
                json={"image": base64.b64encode(b"\xff\xd8\xff\xe0 a live face").decode()},
                headers=bearer(l2_answer.json()["access_token"]),
            )
            assert l3_answer.status_code == 200, l3_answer.text
            l3_token = l3_answer.json()["access_token"]
            l3 = verified_claims(url, l3_token)
            assert (l3["acr"], l3["amr"], l3["sid"]) == ("L3", ["sms", "idcard", "face"], l1["sid"])

            me = httpx.get(url + "/v1/me", headers=bearer(l3_token))
            assert me.status_code == 200
            assert me.json() | {"created_at": None} == {
                "id": tokens["account_id"],
                "phone": phone[:3] + "****" + phone[-4:],
                "level": 3,
                "amr": ["sms", "idcard", "face"],
                "status": "active",
                "name": mask_name(name),
                "id_number": mask_id_number(id_number),
                "created_at": None,
            }
            for secret in (name, id_number, id_number[4:14], phone):
                assert secret not in me.text

            # The session's refresh token carries the new level into its next access token.
            refreshed = httpx.post(url + "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
            assert verified_claims(url, refreshed.json()["access_token"])["acr"] == "L3"

            for row in asyncio.run(accounts_rows_as_text(tokens["account_id"])):
                for secret in (name, id_number, name.encode().hex(), id_number.encode().hex()):
                    assert secret not in row
    finally:
        worker.stop()
        sandbox.process.stop()

    logs = api.log() + worker.log() + sandbox.log() + cli_output
    for person_name, person_id in people:
        assert person_name not in logs and person_id not in logs
    assert phone not in logs
    assert "Traceback" not in logs
