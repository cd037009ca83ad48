"""SMS login, token rotation, reuse detection, sessions and abuse, against real processes: the sandbox SMS
gateway, the job worker and a two-process API server, spoken to over HTTP as the phone app does."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.auth import bearer, last_message_id, login, new_phone, read_code
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("auth")
    with running_stack(
        tmp,
        only=["sms"],
        TONGBAN_AUTH_REFRESH_GRACE_SECONDS="1",
        TONGBAN_AUTH_SMS_PER_PHONE_MINUTE="2",  # two logins of one phone in a test
        TONGBAN_AUTH_SMS_PER_DEVICE_HOUR="3",
        TONGBAN_LOG_LEVEL="debug",
    ) as running:
        yield running


def test_login_refresh_reuse_sessions(stack: Stack) -> None:
    phone = new_phone("139")
    first = login(stack.url, stack.sms, phone, device="phone-a")
    assert first["token_type"] == "Bearer" and first["level"] == 1 and first["expires_in"] == 600
    header = jwt.get_unverified_header(first["access_token"])
    assert header["alg"] == "ES256" and header["kid"]
    claims = jwt.decode(first["access_token"], options={"verify_signature": False})
    assert {"sub", "sid", "acr", "amr", "aud", "iat", "exp", "jti"} <= claims.keys()
    assert claims["acr"] == "L1" and claims["amr"] == ["sms"] and claims["exp"] - claims["iat"] == 600

    # The token verifies with the published JWKS alone.
    jwks = httpx.get(stack.url + "/.well-known/jwks.json").json()
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    assert (
        jwt.decode(first["access_token"], key.key, algorithms=["ES256"], audience="tongban-app")["sub"]
        == first["account_id"]
    )

    info = httpx.get(stack.url + "/v1/me/token", headers=bearer(first["access_token"])).json()
    assert info == {
        "account_id": first["account_id"],
        "session_id": first["session_id"],
        "level": 1,
        "amr": ["sms"],
        "expires_at": claims["exp"],
    }

    # Same phone again: same account, second session.
    second = login(stack.url, stack.sms, phone, device="phone-b")
    assert second["account_id"] == first["account_id"] and second["session_id"] != first["session_id"]
    sessions = httpx.get(stack.url + "/v1/me/sessions", headers=bearer(second["access_token"])).json()
    assert {s["device_id"] for s in sessions} == {"phone-a", "phone-b"}
    assert [s["current"] for s in sessions if s["device_id"] == "phone-b"] == [True]

    # Refresh rotates; the spent token used again at once is a race (409), later it is theft.
    rotated = httpx.post(stack.url + "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200
    assert rotated.json()["refresh_token"] != first["refresh_token"]
    race = httpx.post(stack.url + "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert race.status_code == 409 and race.json()["code"] == "refresh_race"
    time.sleep(1.2)
    reuse = httpx.post(stack.url + "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401 and reuse.json()["code"] == "invalid_grant"
    # The whole session family is gone: the newest refresh token and the access token fail too.
    after = httpx.post(
        stack.url + "/v1/auth/refresh", json={"refresh_token": rotated.json()["refresh_token"]}
    )
    assert after.status_code == 401
    assert _eventually_401(stack, rotated.json()["access_token"])

    # Revoke the other session from itself: fails at once on every worker process.
    own = second["session_id"]
    assert (
        httpx.delete(f"{stack.url}/v1/me/sessions/{own}", headers=bearer(second["access_token"])).status_code
        == 204
    )
    assert _eventually_401(stack, second["access_token"], within=1.0)


def _eventually_401(stack: Stack, token: str, within: float = 2.0) -> bool:
    """Every worker process refuses the token within `within` seconds (checked on many connections)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        codes = {
            httpx.get(stack.url + "/v1/me/sessions", headers=bearer(token)).status_code for _ in range(8)
        }
        if codes == {401}:
            return True
        time.sleep(0.05)
    return False


def test_logout_ends_the_session(stack: Stack) -> None:
    tokens = login(stack.url, stack.sms, new_phone("139"))
    assert (
        httpx.post(stack.url + "/v1/auth/logout", headers=bearer(tokens["access_token"])).status_code == 204
    )
    assert _eventually_401(stack, tokens["access_token"], within=1.0)
    refused = httpx.post(stack.url + "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refused.status_code == 401


def test_wrong_code_five_times_burns_it(stack: Stack) -> None:
    phone = new_phone("139")
    before = last_message_id(stack.sms, phone)
    sent = httpx.post(stack.url + "/v1/auth/sms-codes", json={"phone": phone}).json()
    code = read_code(stack.sms, phone, after=before)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    body = {"phone": phone, "challenge_id": sent["challenge_id"], "device": {"id": "d"}}
    answers = [
        httpx.post(stack.url + "/v1/auth/login", json={**body, "code": wrong}).json()["code"]
        for _ in range(5)
    ]
    assert answers == ["otp_invalid"] * 4 + ["otp_burned"]
    late = httpx.post(stack.url + "/v1/auth/login", json={**body, "code": code})
    assert late.status_code == 401 and late.json()["code"] == "otp_expired"


def test_code_is_single_use_and_bound_to_its_challenge(stack: Stack) -> None:
    phone = new_phone("139")
    before = last_message_id(stack.sms, phone)
    sent = httpx.post(stack.url + "/v1/auth/sms-codes", json={"phone": phone}).json()
    code = read_code(stack.sms, phone, after=before)
    body = {"phone": phone, "code": code, "device": {"id": "d"}}
    other = httpx.post(stack.url + "/v1/auth/login", json={**body, "challenge_id": "someone-elses"})
    assert other.status_code == 401
    ok = httpx.post(stack.url + "/v1/auth/login", json={**body, "challenge_id": sent["challenge_id"]})
    assert ok.status_code == 200
    again = httpx.post(stack.url + "/v1/auth/login", json={**body, "challenge_id": sent["challenge_id"]})
    assert again.status_code == 401 and again.json()["code"] == "otp_expired"


def test_send_flood_is_limited_across_both_processes(stack: Stack) -> None:
    phone = new_phone("139")
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:  # new connection each time
        answers = [client.post(stack.url + "/v1/auth/sms-codes", json={"phone": phone}) for _ in range(12)]
    assert [a.status_code for a in answers].count(202) == 2  # TONGBAN_AUTH_SMS_PER_PHONE_MINUTE
    limited = [a for a in answers if a.status_code == 429]
    assert len(limited) == 10
    assert all(0 < int(a.headers["retry-after"]) <= 60 for a in limited)
    assert limited[0].json()["code"] == "rate_limited"


def test_one_device_cannot_spray_codes_at_many_phones(stack: Stack) -> None:
    device = secrets.token_hex(8)
    answers = [
        httpx.post(
            stack.url + "/v1/auth/sms-codes", json={"phone": new_phone("139"), "device_id": device}
        ).status_code
        for _ in range(5)
    ]
    assert answers == [202, 202, 202, 429, 429]  # TONGBAN_AUTH_SMS_PER_DEVICE_HOUR


def test_same_answer_for_unknown_and_known_phones(stack: Stack) -> None:
    known = new_phone("139")
    login(stack.url, stack.sms, known)
    answers = [
        httpx.post(stack.url + "/v1/auth/sms-codes", json={"phone": p}) for p in (known, new_phone("139"))
    ]
    assert [a.status_code for a in answers] == [202, 202]
    assert [set(a.json()) for a in answers] == [{"challenge_id", "expires_in", "resend_after"}] * 2
    assert [a.json()["expires_in"] for a in answers] == [300, 300]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"phone": "12345"}, "phone"),
        ({"phone": "2381234567x"}, "phone"),
        ({"phone": "13812345678", "purpose": "steal"}, "purpose"),
        ({}, "phone"),
    ],
)
def test_malformed_phone_or_purpose_names_the_field(stack: Stack, body: dict[str, str], field: str) -> None:
    answer = httpx.post(stack.url + "/v1/auth/sms-codes", json=body)
    assert answer.status_code in (400, 422)
    assert answer.json()["field"] == field


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forgeries(stack: Stack, good: str) -> dict[str, str]:
    header_b64, payload_b64, sig_b64 = good.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=="))
    jwks = httpx.get(stack.url + "/.well-known/jwks.json").json()
    public_pem = jwt.PyJWK.from_dict(
        next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    ).key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    stranger = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())

    def unsigned(h: dict, p: dict) -> str:  # type: ignore[type-arg]
        return f"{_b64(json.dumps(h).encode())}.{_b64(json.dumps(p).encode())}."

    def hs256_with_public_key() -> str:
        signing_input = f"{_b64(json.dumps({**header, 'alg': 'HS256'}).encode())}.{payload_b64}".encode()
        import hashlib
        import hmac

        return (
            signing_input.decode() + "." + _b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
        )

    tampered = {**payload, "sub": "00000000-0000-7000-8000-000000000000"}
    return {
        "alg none": unsigned({**header, "alg": "none"}, payload),
        "HS256 with our public key": hs256_with_public_key(),
        "unknown kid": jwt.encode(payload, stranger, algorithm="ES256", headers={"kid": "A" * 43}),
        "our kid, stranger's key": jwt.encode(
            payload, stranger, algorithm="ES256", headers={"kid": header["kid"]}
        ),
        "expired": jwt.encode(
            {**payload, "exp": now - 5}, stranger, algorithm="ES256", headers={"kid": header["kid"]}
        ),
        "tampered payload": f"{header_b64}.{_b64(json.dumps(tampered).encode())}.{sig_b64}",
        "zero signature": f"{header_b64}.{payload_b64}.{_b64(bytes(64))}",
        "garbage": "not-a-jwt",
    }


def test_forged_tokens_are_refused(stack: Stack) -> None:
    tokens = login(stack.url, stack.sms, new_phone("139"))
    good = tokens["access_token"]
    assert httpx.get(stack.url + "/v1/me/sessions", headers=bearer(good)).status_code == 200
    for name, forged in _forgeries(stack, good).items():
        answer = httpx.get(stack.url + "/v1/me/sessions", headers=bearer(forged))
        assert answer.status_code == 401, name
        assert answer.json()["code"] == "invalid_token", name
        assert answer.headers["www-authenticate"].startswith("Bearer"), name
    assert httpx.get(stack.url + "/v1/me/sessions").status_code == 401


def test_expired_and_wrong_audience_tokens_signed_by_us_are_refused(stack: Stack, tmp_path: Path) -> None:
    """Tokens signed with our real key but with bad claims: made through the key store directly."""
    import asyncio

    from core import keys
    from core.settings import get_settings
    from core.stores import close_stores, open_stores

    tokens = login(stack.url, stack.sms, new_phone("139"))
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})

    async def sign(overrides: dict) -> str:  # type: ignore[type-arg]
        stores = await open_stores(get_settings())
        try:
            signer = await keys.active_signer(stores, keys.TOKEN)
            return signer.sign_jwt({**claims, **overrides})
        finally:
            await close_stores(stores)

    for overrides in ({"exp": int(time.time()) - 1}, {"aud": "another-app"}, {"iss": "someone-else"}):
        token = asyncio.run(sign(overrides))
        assert httpx.get(stack.url + "/v1/me/sessions", headers=bearer(token)).status_code == 401, overrides


def test_no_secret_reaches_a_log_line(stack: Stack) -> None:
    phone = new_phone("139")
    tokens = login(stack.url, stack.sms, phone)
    httpx.post(stack.url + "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    code = read_code(stack.sms, phone)
    logs = stack.logs()
    for secret in (phone, code, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in logs
    assert "Traceback" not in logs
