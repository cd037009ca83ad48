"""Legal persons end to end, against real processes: the sandbox (SMS gateway, enterprise registry and, when
the real-name part is present, the population registry), the job worker and a two-process API server, spoken
to over HTTP as the phone app does.

An L2 person registers the enterprise they are the legal representative of, grants an agent by phone, the
agent acts for the enterprise (its token's `ent` claim), and once the membership is revoked the agent's next
refresh no longer carries `ent`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import httpx
import jwt
import pytest
from stdnum.cn import ric, uscc

from tests.support.auth import bearer, login, new_phone
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

NAME = "王小明"
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("enterprises")
    with running_stack(tmp, only=["sms", "enterprise", "population"], TONGBAN_LOG_LEVEL="debug") as running:
        yield running


def new_id_number() -> str:
    born = date(1985, 1, 1) + timedelta(days=secrets.randbelow(7000))  # region 210102 exists since 1983
    body = f"210102{born:%Y%m%d}{secrets.randbelow(1000):03d}"
    return body + ric.calc_check_digit(body + "0")


def new_uscc() -> str:
    body = "91210100" + "".join(secrets.choice(USCC_ALPHABET) for _ in range(9))
    return body + uscc.calc_check_digit(body)


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def become_l2(stack: Stack, tokens: dict[str, Any], id_number: str) -> str:
    """An L2 access token for the logged-in person, whose identity becomes (NAME, id_number)."""
    registry = stack.sandbox.urls["population"]
    seeded = httpx.post(
        f"{registry}/registry/import", json={"rows": [{"name": NAME, "id_number": id_number}]}
    )
    assert seeded.status_code == 200, seeded.text
    verified = httpx.post(
        stack.url + "/v1/me/real-name",
        json={"name": NAME, "id_number": id_number},
        headers=bearer(tokens["access_token"]),
    )
    assert verified.status_code == 200, verified.text
    token: str = verified.json()["access_token"]
    assert claims(token)["acr"] == "L2"
    return token


def refresh(stack: Stack, tokens: dict[str, Any]) -> dict[str, Any]:
    """Rotate `tokens` in place; the new access token's claims."""
    answer = httpx.post(stack.url + "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert answer.status_code == 200, answer.text
    tokens.update(answer.json())
    return claims(tokens["access_token"])


def test_enterprise_registration_agent_acting_and_revocation(stack: Stack) -> None:
    # An L2 person, legal representative of an enterprise in the registry.
    legal_rep_phone, id_number = new_phone("136"), new_id_number()
    legal_rep = login(stack.url, stack.sms, legal_rep_phone, device="boss-phone")
    legal_rep_token = become_l2(stack, legal_rep, id_number)
    code = new_uscc()
    seeded = httpx.post(
        stack.sandbox.urls["enterprise"] + "/registry/enterprises",
        json=[
            {
                "uscc": code,
                "name": "沈阳通办科技有限公司",
                "status": "active",
                "legal_rep_name": NAME,
                "legal_rep_id_number": id_number,
            }
        ],
    )
    assert seeded.status_code == 200, seeded.text

    # An L1 person cannot register it; the legal representative can, once.
    agent_phone = new_phone("136")
    agent = login(stack.url, stack.sms, agent_phone, device="clerk-phone")
    l1 = httpx.post(
        stack.url + "/v1/me/enterprises", json={"uscc": code}, headers=bearer(agent["access_token"])
    )
    assert l1.status_code == 403 and l1.json()["code"] == "insufficient_level"
    registered = httpx.post(
        stack.url + "/v1/me/enterprises", json={"uscc": code}, headers=bearer(legal_rep_token)
    )
    assert registered.status_code == 201, registered.text
    enterprise_id = registered.json()["id"]
    assert registered.json()["role"] == "legal_representative"
    again = httpx.post(stack.url + "/v1/me/enterprises", json={"uscc": code}, headers=bearer(legal_rep_token))
    assert again.status_code == 409

    # The legal representative grants the agent role by phone.
    members = f"{stack.url}/v1/enterprises/{enterprise_id}/members"
    granted = httpx.post(
        members, json={"phone": agent_phone, "role": "agent"}, headers=bearer(legal_rep_token)
    )
    assert granted.status_code == 201, granted.text
    assert granted.json()["account_id"] == agent["account_id"] and agent_phone not in granted.text
    # An agent grants nobody.
    stranger_phone = new_phone("136")
    login(stack.url, stack.sms, stranger_phone)
    refused = httpx.post(
        members, json={"phone": stranger_phone, "role": "agent"}, headers=bearer(agent["access_token"])
    )
    assert refused.status_code == 403 and refused.json()["code"] == "not_enterprise_admin"

    # The agent acts for the enterprise: a token signed by us (checked with the published keys) says so.
    acting = httpx.post(
        stack.url + "/v1/me/acting",
        json={"enterprise_id": enterprise_id},
        headers=bearer(agent["access_token"]),
    )
    assert acting.status_code == 200, acting.text
    acting_token = acting.json()["access_token"]
    header = jwt.get_unverified_header(acting_token)
    key = jwt.PyJWKSet.from_dict(httpx.get(stack.url + "/.well-known/jwks.json").json())[header["kid"]]
    verified = jwt.decode(acting_token, key.key, algorithms=["ES256"], audience="tongban-app")
    assert verified["ent"] == {"id": enterprise_id, "role": "agent"}
    assert verified["sub"] == agent["account_id"] and verified["sid"] == agent["session_id"]
    # Every API process reads the claim back.
    for _ in range(4):
        seen = httpx.get(stack.url + "/v1/me/token", headers=bearer(acting_token))
        assert seen.status_code == 200 and seen.json()["enterprise"] == {"id": enterprise_id, "role": "agent"}
    # The acting identity belongs to the session: refreshing keeps it.
    assert refresh(stack, agent)["ent"] == {"id": enterprise_id, "role": "agent"}

    # Revoked: the next refresh acts as the person again.
    revoked = httpx.delete(f"{members}/{agent['account_id']}", headers=bearer(legal_rep_token))
    assert revoked.status_code == 204
    after = refresh(stack, agent)
    assert "ent" not in after and after["sub"] == agent["account_id"]
    mine = httpx.get(stack.url + "/v1/me/enterprises", headers=bearer(agent["access_token"]))
    assert mine.status_code == 200 and mine.json() == []
    back = httpx.post(
        stack.url + "/v1/me/acting",
        json={"enterprise_id": enterprise_id},
        headers=bearer(agent["access_token"]),
    )
    assert back.status_code == 404

    # None of it reached a log line.
    logs = stack.logs()
    for secret in (id_number, legal_rep_phone, agent_phone, acting_token, legal_rep_token, NAME):
        assert secret not in logs
    assert "Traceback" not in logs
