"""Log a citizen in the way the phone does: ask for a code, read it where the SMS went, send it back."""

from __future__ import annotations

import re
import time

import httpx


def read_code(sms_url: str, phone: str, timeout: float = 15.0, after: str | None = None) -> str:
    """The newest login code sent to `phone` (newer than message id `after`, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = httpx.get(f"{sms_url}/sms/outbox", params={"phone": phone, "limit": 1}).json()
        items = messages["messages"] if isinstance(messages, dict) else messages
        if items and items[0]["message_id"] != after:
            match = re.search(r"\d{6}", items[0]["params"].get("code", "")) or re.search(
                r"\d{6}", items[0]["text"]
            )
            assert match
            return match.group(0)
        time.sleep(0.1)
    raise TimeoutError(f"no SMS reached the sandbox outbox within {timeout}s")


def last_message_id(sms_url: str, phone: str) -> str | None:
    messages = httpx.get(f"{sms_url}/sms/outbox", params={"phone": phone, "limit": 1}).json()
    items = messages["messages"] if isinstance(messages, dict) else messages
    return items[0]["message_id"] if items else None


def login(api: str, sms_url: str, phone: str, device: str = "test-phone") -> dict:  # type: ignore[type-arg]
    before = last_message_id(sms_url, phone)
    sent = httpx.post(f"{api}/v1/auth/sms-codes", json={"phone": phone, "purpose": "login"})
    assert sent.status_code == 202, sent.text
    code = read_code(sms_url, phone, after=before)
    response = httpx.post(
        f"{api}/v1/auth/login",
        json={
            "phone": phone,
            "code": code,
            "challenge_id": sent.json()["challenge_id"],
            "device": {"id": device},
        },
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_phone(prefix: str = "139") -> str:
    """A random mainland mobile number (tests never share one)."""
    import secrets

    return prefix + f"{secrets.randbelow(10**8):08d}"
