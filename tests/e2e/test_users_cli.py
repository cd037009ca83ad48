"""The ops CLI against a running system (sandbox SMS gateway, job worker, two-process API server): a ban
from `tongban users ban` makes every API process refuse the person's token at once and login answer 403;
`tongban sessions revoke` ends a device; `users show` is masked unless revealed with a logged reason."""

from __future__ import annotations

import getpass
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.auth import bearer, last_message_id, login, new_phone, read_code
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("users-cli")
    with running_stack(
        tmp,
        only=["sms"],
        TONGBAN_AUTH_SMS_PER_PHONE_MINUTE="5",  # several logins of one phone in a test
    ) as running:
        yield running


def statuses(stack: Stack, token: str, tries: int = 8) -> set[int]:
    """Answers to the token over fresh connections (so both server processes are asked)."""
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return {
            client.get(stack.url + "/v1/me/sessions", headers=bearer(token)).status_code for _ in range(tries)
        }


def refused_within(stack: Stack, token: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if statuses(stack, token) == {401}:
            return True
        time.sleep(0.05)
    return False


def login_answer(stack: Stack, phone: str) -> httpx.Response:
    before = last_message_id(stack.sms, phone)
    sent = httpx.post(stack.url + "/v1/auth/sms-codes", json={"phone": phone})
    assert sent.status_code == 202
    code = read_code(stack.sms, phone, after=before)
    return httpx.post(
        stack.url + "/v1/auth/login",
        json={
            "phone": phone,
            "code": code,
            "challenge_id": sent.json()["challenge_id"],
            "device": {"id": "d"},
        },
    )


def test_ban_refuses_the_token_at_once_and_login_until_unban(stack: Stack) -> None:
    phone = new_phone("137")
    tokens = login(stack.url, stack.sms, phone)
    assert statuses(stack, tokens["access_token"]) == {200}

    banned = stack.cli("users", "ban", tokens["account_id"], "--reason", "fraud report 12")
    assert banned.returncode == 0, banned.stderr
    assert "1 session ended" in banned.stdout
    # Every worker process refuses the token within a second of the command returning.
    assert refused_within(stack, tokens["access_token"], 1.0), stack.api.log()
    answer = httpx.post(stack.url + "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert answer.status_code == 401
    refused = login_answer(stack, phone)
    assert refused.status_code == 403 and refused.json()["code"] == "account_banned"

    shown = stack.cli("users", "show", "--phone", phone)
    assert shown.returncode == 0 and "banned" in shown.stdout and phone not in shown.stdout

    unbanned = stack.cli("users", "unban", tokens["account_id"])
    assert unbanned.returncode == 0, unbanned.stderr
    back = login_answer(stack, phone)
    assert back.status_code == 200 and back.json()["account_id"] == tokens["account_id"]
    # The sessions ended by the ban stay ended.
    assert statuses(stack, tokens["access_token"]) == {401}
    assert statuses(stack, back.json()["access_token"]) == {200}


def test_sessions_revoke_ends_one_device_at_once(stack: Stack) -> None:
    phone = new_phone("137")
    phone_a = login(stack.url, stack.sms, phone, device="phone-a")
    phone_b = login(stack.url, stack.sms, phone, device="phone-b")
    result = stack.cli("sessions", "revoke", phone_a["session_id"])
    assert result.returncode == 0, result.stderr
    assert refused_within(stack, phone_a["access_token"], 1.0)
    assert statuses(stack, phone_b["access_token"]) == {200}

    result = stack.cli("sessions", "revoke", "--account", phone_b["account_id"])
    assert result.returncode == 0 and "1 session" in result.stdout, result.stdout
    assert refused_within(stack, phone_b["access_token"], 1.0)


def test_show_masked_then_revealed_with_the_reason_in_the_audit(stack: Stack) -> None:
    phone = new_phone("137")
    tokens = login(stack.url, stack.sms, phone)
    masked = stack.cli("users", "show", "--phone", phone)
    assert masked.returncode == 0, masked.stderr
    assert tokens["account_id"] in masked.stdout and phone not in masked.stdout
    assert phone[:3] + "****" + phone[-4:] in masked.stdout

    refused = stack.cli("users", "show", "--phone", phone, "--reveal")
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.strip().startswith("tongban: --reveal needs --reason")
    assert len(refused.stderr.strip().splitlines()) == 1

    reason = f"ticket-{secrets.token_hex(3)}"
    revealed = stack.cli("users", "show", "--phone", phone, "--reveal", "--reason", reason)
    assert revealed.returncode == 0 and phone in revealed.stdout

    audit = stack.cli("audit", "pii", "--actor", f"ops:{getpass.getuser()}", "--since", "10m")
    assert audit.returncode == 0, audit.stderr
    assert reason in audit.stdout and "accounts.phone" in audit.stdout


def test_no_phone_or_token_in_the_logs(stack: Stack) -> None:
    phone = new_phone("137")
    tokens = login(stack.url, stack.sms, phone)
    stack.cli("users", "ban", tokens["account_id"], "--reason", "log check")
    logs = stack.logs()
    for secret in (phone, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in logs
    assert "Traceback" not in logs
