"""PIPL art. 45: GET /v1/me/export gives everything held about the caller, decrypted and logged."""

from __future__ import annotations

import secrets
from uuid import UUID

from litestar.testing import AsyncTestClient

from auth import consent
from auth.models import TokenPair
from core import ids
from core.stores import Stores
from tests.support.accounts import login_in_process, verify_in_process

Client = AsyncTestClient  # type: ignore[type-arg]


def _phone() -> str:
    return "139" + f"{secrets.randbelow(10**8):08d}"


def _id_number() -> str:
    from stdnum.cn import ric

    stem = f"110105{1960 + secrets.randbelow(40)}0{1 + secrets.randbelow(9)}1{secrets.randbelow(10)}"
    stem += f"{secrets.randbelow(1000):03d}"
    return next(stem + c for c in "0123456789X" if ric.is_valid(stem + c))


def _bearer(tokens: TokenPair) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.access_token}"}


async def _access_log(stores: Stores, account_id: UUID) -> list[tuple[str, str, str, bool]]:
    rows = await stores.pool.fetch(
        """SELECT actor, reason, column_name, succeeded FROM pii_access_log
           WHERE table_name = 'accounts' AND row_id = $1 ORDER BY id""",
        str(account_id),
    )
    return [(r["actor"], r["reason"], r["column_name"], r["succeeded"]) for r in rows]


async def test_export_holds_everything_decrypted_and_each_decrypt_is_logged(
    stores: Stores, client: Client
) -> None:
    phone, name, id_number = _phone(), "张三丰", _id_number()
    tokens = await login_in_process(stores, phone, "phone-a")
    await login_in_process(stores, phone, "tablet-b")
    account_id = tokens.account_id
    await verify_in_process(stores, account_id, name, id_number)
    kept = await consent.grant(stores, account_id, "miniapp:wx-bus", ["phone", "real_name"], "bus card")
    withdrawn = await consent.grant(stores, account_id, "miniapp:wx-shop", ["phone"], "delivery")
    await consent.revoke(stores, account_id, withdrawn.id)
    enterprise_id, uscc = ids.new_id(), "91" + secrets.token_hex(8).upper()
    await stores.pool.execute(
        "INSERT INTO enterprises (id, uscc, name, legal_rep_account) VALUES ($1, $2, '沈阳某某有限公司', $3)",
        enterprise_id,
        uscc,
        account_id,
    )
    await stores.pool.execute(
        "INSERT INTO enterprise_members (enterprise_id, account_id, role) VALUES ($1, $2, 'legal_representative')",
        enterprise_id,
        account_id,
    )
    assert await _access_log(stores, account_id) == []

    answer = await client.get("/v1/me/export", headers=_bearer(tokens))
    assert answer.status_code == 200, answer.text
    disposition = answer.headers["content-disposition"]
    assert disposition.startswith("attachment;") and 'filename="tongban-personal-data-' in disposition
    assert disposition.endswith('.json"')
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["cache-control"] == "no-store"
    data = answer.json()

    account = data["account"]
    assert account["id"] == str(account_id)
    assert (account["phone"], account["name"], account["id_number"]) == (phone, name, id_number)
    assert account["level"] == 2 and account["amr"] == ["sms", "idcard"] and account["status"] == "active"
    assert account["created_at"] and account["real_name_at"] and account["face_verified_at"] is None

    assert {s["device_id"] for s in data["sessions"]} == {"phone-a", "tablet-b"}
    kinds = [e["kind"] for e in data["events"]]
    for kind in ("registered", "login", "consent_granted", "consent_revoked", "data_exported"):
        assert kind in kinds, kind
    assert all({"kind", "actor", "detail", "at"} == set(e) for e in data["events"])
    consents = {c["id"]: c for c in data["consents"]}
    assert consents[str(kept.id)]["revoked_at"] is None
    assert consents[str(kept.id)]["scopes"] == ["phone", "real_name"]
    assert consents[str(withdrawn.id)]["revoked_at"] is not None
    assert data["enterprises"] == [
        {
            "enterprise_id": str(enterprise_id),
            "enterprise_name": "沈阳某某有限公司",
            "uscc": uscc,
            "role": "legal_representative",
            "granted_at": data["enterprises"][0]["granted_at"],
        }
    ]
    assert data["deletion"] == {
        "state": "none",
        "requested_at": None,
        "due_at": None,
        "cancelled_at": None,
        "completed_at": None,
    }

    # One access-log row per decrypted field, as the holder ("self") for the export.
    assert sorted(await _access_log(stores, account_id)) == [
        ("self", "PIPL export", "id_number", True),
        ("self", "PIPL export", "name", True),
        ("self", "PIPL export", "phone", True),
    ]


async def test_unverified_account_exports_phone_only(stores: Stores, client: Client) -> None:
    phone = _phone()
    tokens = await login_in_process(stores, phone)
    data = (await client.get("/v1/me/export", headers=_bearer(tokens))).json()
    assert data["account"]["phone"] == phone
    assert data["account"]["name"] is None and data["account"]["id_number"] is None
    assert data["consents"] == [] and data["enterprises"] == []
    assert await _access_log(stores, tokens.account_id) == [("self", "PIPL export", "phone", True)]


async def test_export_shows_a_pending_deletion(stores: Stores, client: Client) -> None:
    tokens = await login_in_process(stores, _phone())
    await client.delete("/v1/me", headers=_bearer(tokens))
    data = (await client.get("/v1/me/export", headers=_bearer(tokens))).json()
    assert data["deletion"]["state"] == "pending" and data["deletion"]["due_at"]
    assert data["account"]["status"] == "deleting"


async def test_export_is_rate_limited_per_account(stores: Stores, client: Client) -> None:
    tokens = await login_in_process(stores, _phone())
    answers = [(await client.get("/v1/me/export", headers=_bearer(tokens))).status_code for _ in range(6)]
    assert answers == [200] * 5 + [429]  # TONGBAN_AUTH_EXPORT_PER_HOUR
    refused = await client.get("/v1/me/export", headers=_bearer(tokens))
    assert refused.json()["code"] == "rate_limited"
    assert 3000 < int(refused.headers["retry-after"]) <= 3600
    # A refused export decrypts nothing.
    assert len(await _access_log(stores, tokens.account_id)) == 5
    # Another account is not affected.
    other = await login_in_process(stores, _phone())
    assert (await client.get("/v1/me/export", headers=_bearer(other))).status_code == 200


async def test_export_needs_a_valid_token(client: Client) -> None:
    assert (await client.get("/v1/me/export")).status_code == 401
    answer = await client.get("/v1/me/export", headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_token"
