"""Issue #6's journey over real processes (API, worker, sandbox transit operator, medical-insurance platform
and payment acquirer): an L3 citizen links all three -> the reference client makes codes offline -> a
validator (the real `tongban validator` CLI) verifies offline, refuses a replay and uploads its rides -> the
worker settles the fares -> a hospital counter resolves a code to an ecToken -> a shop POS charges and the
ledger balances -> lost phone revokes (online at once, offline with the next bundle) -> reconciliation
reports zero mismatches, then the one injected into the acquirer's statement."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec
import pytest

from onecode.client import OneCodeClient, generate_device_key, public_key_b64
from onecode.terminal_auth import signed_headers
from tests.support.auth import bearer
from tests.support.stack import Stack, running_stack, verified_citizen

pytestmark = pytest.mark.e2e

PROVIDERS = ["sms", "population", "face", "transit", "medical", "acquirer"]
# A test card number (Luhn-valid, the acquirer's sandbox accepts it); only its token stays with us.
CARD = "4111111111111111"


class Terminal:
    def __init__(self, stack: Stack, kind: str, name: str, *extra: str) -> None:
        added = stack.cli("terminals", "add", "--kind", kind, "--name", name, *extra)
        assert added.returncode == 0, added.stderr + added.stdout
        self.id = re.search(r"^id:\s+(\S+)$", added.stdout, re.M).group(1)  # type: ignore[union-attr]
        self.secret = re.search(r"^secret:\s+([0-9a-f]{64})$", added.stdout, re.M).group(1)  # type: ignore[union-attr]
        self.url = stack.url

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        raw = msgspec.json.encode(body)
        headers = signed_headers(self.id, bytes.fromhex(self.secret), "POST", path, raw)
        return httpx.post(
            self.url + path, content=raw, headers={**headers, "Content-Type": "application/json"}
        )


def _words(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


def _poll(fetch: Any, done: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_link_code_ride_resolve_settle_revoke_reconcile(tmp_path: Path, own_database: str) -> None:
    # A database of its own: the day's reconciliation must see only this story's fares and payments.
    with running_stack(tmp_path, PROVIDERS, TONGBAN_DATABASE_URL=own_database) as stack:
        _journey(stack, tmp_path)


def _journey(stack: Stack, tmp: Path) -> None:
    # An L2 citizen becomes L3 with the sandbox face check (the medical e-voucher needs L3).
    _, _, l2 = verified_citizen(stack, device="onecode-phone")
    face = httpx.post(
        stack.url + "/v1/me/face",
        json={"image": base64.b64encode(b"\xff\xd8\xff\xe0 a live face").decode()},
        headers=bearer(l2),
    )
    assert face.status_code == 200, face.text
    citizen = bearer(face.json()["access_token"])

    # Link all three.
    for body in ({"kind": "transit"}, {"kind": "medical"}, {"kind": "payment", "card_number": CARD}):
        linked = httpx.post(stack.url + "/v1/onecode/links", json=body, headers=citizen)
        assert linked.status_code == 201, linked.text
        assert CARD not in linked.text
    assert sorted(linked.json()["scenes"]) == ["medical", "payment", "transit"]

    # The phone registers its device key and gets an authorisation; from here it makes codes offline.
    device_key = generate_device_key()
    device = httpx.post(
        stack.url + "/v1/onecode/devices", json={"public_key": public_key_b64(device_key)}, headers=citizen
    )
    assert device.status_code == 201, device.text
    issued = httpx.post(
        stack.url + "/v1/onecode/authorisation", json={"device_id": device.json()["id"]}, headers=citizen
    )
    assert issued.status_code == 201, issued.text
    phone = OneCodeClient(device_key, issued.json()["authorisation"])

    # Terminals: two bus validators, a hospital counter, a shop POS.
    bus = Terminal(stack, "validator", "沈阳 215路 前门")
    other_bus = Terminal(stack, "validator", "沈阳 216路 前门")
    counter = Terminal(stack, "counter", "省人民医院 门诊收费1号窗", "--org-code", "H21010200001")
    pos = Terminal(stack, "pos", "中街 便利店 收银台1")

    # The validator downloads the bundle, then works offline: two rides, a replay refused.
    secret_file = tmp / "bus.secret"
    secret_file.write_text(bus.secret)
    auth = ["--server", stack.url, "--terminal", bus.id, "--secret-file", str(secret_file)]
    bundle = tmp / "bundle.json"
    fetched = stack.cli("validator", "bundle", *auth, "--out", str(bundle))
    assert fetched.returncode == 0, fetched.stderr + fetched.stdout
    seen, rides = tmp / "seen.json", tmp / "rides.jsonl"
    offline = ["validator", "verify", "--bundle", str(bundle), "--seen", str(seen), "--scene", "transit"]
    first, second = phone.make_code(time.time()), phone.make_code(time.time())
    for code in (first, second):
        verdict = stack.cli(*offline, "--fare", "200", "--record", str(rides), code)
        assert verdict.returncode == 0 and json.loads(verdict.stdout)["valid"], (
            verdict.stdout + verdict.stderr
        )
    replay = stack.cli(*offline, "--fare", "200", first)
    assert replay.returncode == 1 and json.loads(replay.stdout)["reason"] == "replay"

    uploaded = stack.cli("validator", "upload", *auth, str(rides))
    assert uploaded.returncode == 0 and "2 accepted" in uploaded.stdout, uploaded.stdout + uploaded.stderr
    again = stack.cli("validator", "upload", *auth, str(rides))
    assert again.returncode == 0 and "0 accepted, 2 already there" in again.stdout, again.stdout

    # The worker charges both fares through the transit operator; the citizen sees them.
    settled = _poll(
        lambda: httpx.get(stack.url + "/v1/onecode/rides", headers=citizen).json(),
        lambda page: len(page["items"]) >= 2,
    )
    assert [item["amount_fen"] for item in settled["items"]] == [200, 200], stack.logs()[-3000:]

    # The hospital counter resolves a fresh code online: the ec.query answer, masked.
    medical = counter.post(
        "/v1/terminals/resolve", {"code": phone.make_code(time.time()), "scene": "medical"}
    )
    assert medical.status_code == 200, medical.text
    answer = medical.json()
    assert answer["result"] == "approved" and answer["voucher"]["ecToken"], answer
    assert "*" in answer["voucher"]["userName"] and "*" in answer["voucher"]["idNo"]

    # The shop POS charges 12.34 yuan; the same order again is the same answer, charged once.
    code = phone.make_code(time.time())
    payment = pos.post(
        "/v1/terminals/resolve", {"code": code, "scene": "payment", "amount_fen": 1234, "order_id": "A-1"}
    )
    assert payment.status_code == 200 and payment.json()["result"] == "approved", payment.text
    paid = httpx.get(stack.url + "/v1/onecode/payments", headers=citizen).json()
    assert [item["amount_fen"] for item in paid["items"]] == [1234]
    ledger = stack.cli("onecode", "ledger")
    assert ledger.returncode == 0 and "balanced" in _words(ledger.stdout), ledger.stdout + ledger.stderr
    assert "UNBALANCED" not in ledger.stdout

    # The same code and counter from a second validator is a cloned phone's: not in this story. A lost
    # phone revokes at once online, and offline with the next bundle.
    lost = httpx.post(stack.url + "/v1/onecode/lost-phone", json={}, headers=citizen)
    assert lost.status_code == 200, lost.text
    refused = pos.post(
        "/v1/terminals/resolve",
        {"code": phone.make_code(time.time()), "scene": "payment", "amount_fen": 100, "order_id": "A-2"},
    )
    assert refused.json()["result"] == "refused" and refused.json()["reason"] == "revoked", refused.text
    other_secret = tmp / "other.secret"
    other_secret.write_text(other_bus.secret)
    fresh = tmp / "fresh.json"
    fetched = stack.cli(
        "validator", "bundle", "--server", stack.url, "--terminal", other_bus.id,
        "--secret-file", str(other_secret), "--out", str(fresh),
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    revoked = stack.cli(
        "validator", "verify", "--bundle", str(fresh), "--fare", "200", phone.make_code(time.time())
    )
    assert revoked.returncode == 1 and json.loads(revoked.stdout)["reason"] == "revoked", revoked.stdout

    # Reconciliation of today (the settlement day is Asia/Shanghai's): nothing to report ...
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()
    clean = stack.cli("onecode", "reconcile", today)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert _words(clean.stdout).count(": 0 mismatch(es)") == 2, clean.stdout  # transit and payment
    # ... until the acquirer's statement disagrees with our ledger about the payment.
    injected = httpx.post(
        stack.sandbox.urls["acquirer"] + "/sandbox/statement",
        json={"provider_ref": payment.json()["provider_ref"], "amount_fen": 1243},
    )
    assert injected.status_code == 200, injected.text
    mismatch = stack.cli("onecode", "reconcile", today)
    assert mismatch.returncode == 1, mismatch.stdout + mismatch.stderr
    assert "payment " + today + ": 1 mismatch(es)" in _words(mismatch.stdout), mismatch.stdout
    assert payment.json()["provider_ref"] in mismatch.stdout
