"""Checkpoint scans over the API (the app in process) with the real PostgreSQL and Redis: credentials (401
without them, Bearer and Basic, hashed at rest, cached briefly), every verify() reason answered as a verdict
and recorded, masked answers, the body limit before decoding, backdated scans, and the group commit (every
concurrent scan recorded, in fewer commits than scans; a failed commit is never answered as accepted)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from litestar import Litestar
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from core import clock, db
from core.errors import StoreUnavailable
from core.settings import Settings
from core.stores import Stores
from health_code import checkpoints, codec, passes, scans, status, trustlist, venues
from health_code.certs import certificate_kid
from health_code.codec import CLAIM_IAT, CLAIM_SUB
from health_code.scans import ScanWriter
from health_code.verify import REASONS, tongban_claims
from scripts.cli import app
from tests.integration.test_checkpoints_support import (
    Scanner,
    claims_of,
    content,
    expired_claims,
    good_pass,
    make_checkpoint,
    repack,
    stranger_pass,
    trusted_signer,
    unchecked_pass,
)
from tests.integration.test_miniapps_support import make_person

Client = AsyncTestClient[Litestar]
SCANS = "/v1/checkpoints/scans"


async def scan(client: Client, scanner: Scanner, payload: str, **extra: Any) -> dict[str, Any]:
    answer = await client.post(SCANS, json={"payload": payload, **extra}, headers=scanner.auth)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def recorded(stores: Stores, scanner: Scanner) -> list[asyncpg.Record]:
    async with db.connection(stores.pool, stores.settings) as conn:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT * FROM scans WHERE checkpoint_id = $1 ORDER BY id", scanner.id
        )
    return rows


# --- credentials -----------------------------------------------------------------------------------------


async def test_scans_need_the_checkpoints_credentials(client: Client, stores: Stores) -> None:
    scanner = await make_checkpoint(stores)
    payload = await good_pass(stores)
    ident, secret = str(scanner.id), scanner.credentials.secret
    person = await make_person(stores)  # a citizen's access token is not a checkpoint's
    refused = {
        "none": {},
        "empty bearer": {"Authorization": "Bearer "},
        "wrong secret": {"Authorization": f"Bearer cp_{ident}.{secrets.token_urlsafe(32)}"},
        "unknown id": {
            "Authorization": f"Bearer cp_{secrets.token_hex(16)[:8]}-0000-7000-8000-{secrets.token_hex(6)}.{secret}"
        },
        "no secret": {"Authorization": f"Bearer cp_{ident}"},
        "not a uuid": {"Authorization": f"Bearer cp_nope.{secret}"},
        "citizen token": person.auth,
        "basic, wrong": {"Authorization": "Basic " + base64.b64encode(f"{ident}:x".encode()).decode()},
        "basic, garbage": {"Authorization": "Basic %%%"},
    }
    for what, headers in refused.items():
        answer = await client.post(SCANS, json={"payload": payload}, headers=headers)
        assert answer.status_code == 401, what
        assert answer.json()["code"] == "invalid_checkpoint_credentials", what
    assert await recorded(stores, scanner) == []  # nothing refused was recorded

    assert (await scan(client, scanner, payload))["valid"] is True
    basic = "Basic " + base64.b64encode(f"{ident}:{secret}".encode()).decode()
    answer = await client.post(SCANS, json={"payload": payload}, headers={"Authorization": basic})
    assert answer.status_code == 200 and answer.json()["valid"] is True
    assert len(await recorded(stores, scanner)) == 2


async def test_the_secret_is_stored_hashed_and_shown_once(stores: Stores) -> None:
    scanner = await make_checkpoint(stores, "沈阳站 北广场 3号闸机")
    secret = scanner.credentials.secret
    assert len(base64.urlsafe_b64decode(secret + "==")) == 32  # 256 random bits
    assert scanner.credentials.bearer == f"Bearer cp_{scanner.id}.{secret}"
    async with db.connection(stores.pool, stores.settings) as conn:
        row = await conn.fetchrow("SELECT * FROM checkpoints WHERE id = $1", scanner.id)
        listed = await checkpoints.list_checkpoints(conn)
    assert row is not None and row["status"] == "active" and row["name"] == "沈阳站 北广场 3号闸机"
    assert (
        bytes(row["secret_hash"])
        == hashlib.sha256(b"tongban-checkpoint-secret/1\x00" + secret.encode()).digest()
    )
    assert secret not in json.dumps({k: str(v) for k, v in dict(row).items()})
    assert scanner.id in {item.id for item in listed}
    assert not hasattr(listed[0], "secret")


async def test_disabling_takes_effect_within_the_cache_time(
    client: Client, stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "CACHE_SECONDS", 0.5)
    scanner = await make_checkpoint(stores)
    payload = await good_pass(stores)
    assert (await scan(client, scanner, payload))["valid"] is True
    # Disabled behind this process's back (another process, the CLI): the cached credentials still pass...
    async with db.connection(stores.pool, stores.settings) as conn:
        await conn.execute("UPDATE checkpoints SET status = 'disabled' WHERE id = $1", scanner.id)
    assert (await client.post(SCANS, json={"payload": payload}, headers=scanner.auth)).status_code == 200
    # ...until the cache entry expires.
    await asyncio.sleep(0.6)
    assert (await client.post(SCANS, json={"payload": payload}, headers=scanner.auth)).status_code == 401
    async with db.connection(stores.pool, stores.settings) as conn:
        await checkpoints.set_status(conn, scanner.id, "active")
    assert (await client.post(SCANS, json={"payload": payload}, headers=scanner.auth)).status_code == 200


async def test_the_cli_creates_lists_and_disables_checkpoints(client: Client, stores: Stores) -> None:
    runner = CliRunner(env={"COLUMNS": "100"})
    created = await asyncio.to_thread(runner.invoke, app, ["checkpoints", "create", "大连港 客运站 2号口"])
    assert created.exit_code == 0, created.output
    found = re.search(
        r"Authorization: (Bearer cp_([0-9a-f-]{36})\.([A-Za-z0-9_-]{43}))$", created.output, re.M
    )
    assert found is not None, created.output  # on one line, whole, even in a narrow terminal
    header, ident, secret = found.groups()
    payload = await good_pass(stores)
    answer = await client.post(SCANS, json={"payload": payload}, headers={"Authorization": header})
    assert answer.status_code == 200 and answer.json()["valid"] is True
    listed = await asyncio.to_thread(runner.invoke, app, ["checkpoints", "list"])
    assert listed.exit_code == 0 and ident in listed.output and secret not in listed.output
    disabled = await asyncio.to_thread(runner.invoke, app, ["checkpoints", "disable", ident])
    assert disabled.exit_code == 0 and "disabled" in disabled.output
    # The CLI ran in this process: its cache forgot the checkpoint at once (elsewhere: within 10 s).
    answer = await client.post(SCANS, json={"payload": payload}, headers={"Authorization": header})
    assert answer.status_code == 401
    enabled = await asyncio.to_thread(runner.invoke, app, ["checkpoints", "enable", ident])
    assert enabled.exit_code == 0
    answer = await client.post(SCANS, json={"payload": payload}, headers={"Authorization": header})
    assert answer.status_code == 200
    unknown = await asyncio.to_thread(runner.invoke, app, ["checkpoints", "disable", str(uuid4())])
    assert unknown.exit_code == 1 and "no such checkpoint" in unknown.output


# --- verdicts --------------------------------------------------------------------------------------------


async def _revoked_pass(stores: Stores) -> str:
    """A pass from the issuer, then a status change of its holder: the pass is revoked."""
    person = await make_person(stores)
    issued = await passes.show_pass(stores, person.account_id)
    await asyncio.sleep(1.1)  # the change lands in a later second than the pass's iat
    async with db.connection(stores.pool, stores.settings) as conn:
        await status.add_manual_mark(conn, person.account_id, colour="red", reason="密接", by="test")
    await status.recompute(stores, [person.account_id])
    await trustlist.TRUST.refresh(stores)
    return issued.view.payload


async def _verdict_cases(stores: Stores) -> dict[str, str]:
    """A payload for every reason verify() gives (all but internal_error, which no input causes)."""
    signer = await trusted_signer(stores)
    trusted_kid = certificate_kid(signer.cert)
    good = await good_pass(stores)
    venue = await venues.venue_signer(stores)
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    missing_sub = tongban_claims(content(stores))
    del missing_sub[CLAIM_SUB]
    outliving = tongban_claims(content(stores, exp=signer.cert.not_valid_after_utc + timedelta(days=1)))
    now = clock.now()
    return {
        "ok": good,
        "bad_prefix": "HC2:" + good[4:],
        "too_large": "TB1:" + "A" * 5000,
        "bad_base45": "TB1:" + good[4:].lower(),
        # A truncated pass: the zlib stream stops early.
        "bad_compression": "TB1:" + codec.b45encode(codec.b45decode(good[4:])[:-7]),
        "bad_cbor": repack(b"\xff\x00garbage"),
        "bad_cose": repack(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"payload"]))),
        "unknown_kid": stranger_pass(stores),
        "bad_signature": unchecked_pass(claims_of(good), key=stranger_key, kid=trusted_kid),
        "bad_claims": unchecked_pass(missing_sub, key=signer.key, kid=trusted_kid),
        # A health pass signed with the venue-code key: that key may sign venue codes only.
        "wrong_key_usage": unchecked_pass(
            tongban_claims(content(stores)), key=venue.key, kid=certificate_kid(venue.cert)
        ),
        "signer_not_valid_at_time": unchecked_pass(outliving, key=signer.key, kid=trusted_kid),
        "revoked": await _revoked_pass(stores),
        "not_yet_valid": unchecked_pass(
            tongban_claims(content(stores, iat=now + timedelta(hours=1), exp=now + timedelta(hours=2))),
            key=signer.key,
            kid=trusted_kid,
        ),
        "expired": unchecked_pass(
            expired_claims(stores, not_before=signer.cert.not_valid_before_utc),
            key=signer.key,
            kid=trusted_kid,
        ),
    }


async def test_every_reason_reaches_the_checkpoint_as_a_verdict(client: Client, stores: Stores) -> None:
    scanner = await make_checkpoint(stores)
    cases = await _verdict_cases(stores)
    assert set(cases) == set(REASONS) - {"internal_error"}
    for reason, payload in cases.items():
        answer = await scan(client, scanner, payload)
        assert answer["reason"] == reason, (reason, answer)
        assert answer["valid"] is (reason == "ok")
        assert "sub" not in answer and "claims" not in answer
    rows = await recorded(stores, scanner)
    assert [row["reason"] for row in rows] == list(cases)
    assert [row["valid"] for row in rows] == [reason == "ok" for reason in cases]
    by_reason = {row["reason"]: row for row in rows}
    assert by_reason["ok"]["colour"] == "green" and by_reason["ok"]["rid"] and by_reason["ok"]["kid"]
    assert by_reason["bad_base45"]["kid"] is None and by_reason["bad_base45"]["rid"] is None
    assert by_reason["revoked"]["rid"] is not None  # the authentic claims are kept with the verdict


async def test_a_health_pass_answer_shows_the_masked_identity_only(client: Client, stores: Stores) -> None:
    scanner = await make_checkpoint(stores)
    signer = await trusted_signer(stores)
    kid = certificate_kid(signer.cert)
    # An issuer's mistake: the full name and ID number in the pass. The checkpoint still sees them masked.
    leaky = tongban_claims(content(stores, name="欧阳娜娜", number="210102199001011234"))
    answer = await scan(client, scanner, unchecked_pass(leaky, key=signer.key, kid=kid))
    assert answer["valid"] is True and answer["pass_type"] == "health" and answer["colour"] == "green"
    assert (answer["name"], answer["number"]) == ("欧***", "2101**********1234")
    assert "210102199001011234" not in json.dumps(answer, ensure_ascii=False)
    # A pass from the issuer, for a verified citizen: the masked identity it carries, the colour.
    person = await make_person(stores)
    issued = await passes.show_pass(stores, person.account_id)
    answer = await scan(client, scanner, issued.view.payload)
    assert answer["valid"] is True and answer["colour"] == issued.view.colour
    assert answer["name"] == "张*" and answer["number"].count("*") == 10


async def test_a_body_over_the_limit_is_refused_before_decoding(client: Client, stores: Stores) -> None:
    scanner = await make_checkpoint(stores)
    huge = {"payload": "TB1:" + "A" * (scans.MAX_BODY_BYTES + 10)}
    answer = await client.post(SCANS, json=huge, headers=scanner.auth)
    assert answer.status_code == 413
    answer = await client.post(
        SCANS,
        content=b"{" + b" " * (scans.MAX_BODY_BYTES * 4),
        headers={**scanner.auth, "Content-Type": "application/json"},
    )
    assert answer.status_code == 413
    malformed = await client.post(
        SCANS, content=b"{not json", headers={**scanner.auth, "Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    # A pass over 4296 characters inside the limit is a verdict, not an error.
    assert (await scan(client, scanner, "TB1:" + "0" * 4300))["reason"] == "too_large"
    assert [row["reason"] for row in await recorded(stores, scanner)] == ["too_large"]


async def test_a_scan_made_offline_is_judged_when_it_was_made(client: Client, stores: Stores) -> None:
    scanner = await make_checkpoint(stores)
    signer = await trusted_signer(stores)
    expired = unchecked_pass(
        expired_claims(stores, not_before=signer.cert.not_valid_before_utc),
        key=signer.key,
        kid=certificate_kid(signer.cert),
    )
    assert (await scan(client, scanner, expired))["reason"] == "expired"
    then = clock.now() - timedelta(minutes=3)
    earlier = await scan(client, scanner, expired, scanned_at=then.isoformat())
    assert earlier["reason"] == "ok" and earlier["valid"] is True
    rows = await recorded(stores, scanner)
    assert rows[-1]["scanned_at"] == then and rows[-1]["recorded_at"] > then
    for bad in (
        (clock.now() - timedelta(days=2)).isoformat(),
        (clock.now() + timedelta(hours=1)).isoformat(),
    ):
        answer = await client.post(SCANS, json={"payload": expired, "scanned_at": bad}, headers=scanner.auth)
        assert answer.status_code == 422 and answer.json()["field"] == "scanned_at"
    naive = await client.post(
        SCANS, json={"payload": expired, "scanned_at": "2026-01-01T08:00:00"}, headers=scanner.auth
    )
    assert naive.status_code == 400  # a time without an offset is refused
    assert len(await recorded(stores, scanner)) == 2


async def test_a_reused_verdict_follows_the_clock_and_revocations(client: Client, stores: Stores) -> None:
    scanner = await make_checkpoint(stores)
    person = await make_person(stores)
    payload = (await passes.show_pass(stores, person.account_id)).view.payload
    await trustlist.TRUST.reload(stores)
    hits = scans.VERDICTS.hits
    assert (await scan(client, scanner, payload))["reason"] == "ok"
    assert (await scan(client, scanner, payload))["reason"] == "ok"
    assert scans.VERDICTS.hits == hits + 1  # the second scan reused the first verdict
    # Reused, but judged at its own time: before the pass was issued it was not valid yet.
    iat = datetime.fromtimestamp(claims_of(payload)[CLAIM_IAT], UTC)
    early = await scan(client, scanner, payload, scanned_at=(iat - timedelta(minutes=10)).isoformat())
    assert (early["valid"], early["reason"]) == (False, "not_yet_valid")
    # The holder's status changes: the next scan says revoked, never the verdict it had.
    await asyncio.sleep(1.1)
    async with db.connection(stores.pool, stores.settings) as conn:
        await status.add_manual_mark(conn, person.account_id, colour="red", reason="密接", by="test")
    await status.recompute(stores, [person.account_id])
    await trustlist.TRUST.refresh(stores)
    assert (await scan(client, scanner, payload))["reason"] == "revoked"
    assert [row["reason"] for row in await recorded(stores, scanner)] == [
        "ok",
        "ok",
        "not_yet_valid",
        "revoked",
    ]


# --- the group commit ------------------------------------------------------------------------------------


async def test_concurrent_scans_are_all_recorded_in_shared_commits(client: Client, stores: Stores) -> None:
    scanner = await make_checkpoint(stores)
    payload = await good_pass(stores)
    # Over the API (the in-process client sends one request at a time; tests/e2e sends them at once).
    count = 50
    answers = [
        await client.post(SCANS, json={"payload": payload}, headers=scanner.auth) for _ in range(count)
    ]
    assert [a.status_code for a in answers] == [200] * count
    assert len(await recorded(stores, scanner)) == count
    # The writer itself, as concurrent requests use it: every row committed, many rows per commit.
    writer = ScanWriter(stores)
    rows = [(scanner.id, "k", f"{i:032x}", "green", True, "ok", clock.now()) for i in range(500)]
    await asyncio.gather(*(writer.record(row) for row in rows))
    assert writer.rows == 500 and writer.batches <= 5
    stored = await recorded(stores, scanner)
    assert len(stored) == count + 500
    assert {row["rid"] for row in stored[count:]} == {row[2] for row in rows}
    await writer.close()


async def test_a_scan_is_answered_only_once_committed(settings: Settings, stores: Stores) -> None:
    scanner = await make_checkpoint(stores)
    row = (scanner.id, None, None, None, False, "bad_prefix", clock.now())
    # A writer on a pool that is gone: the request gets StoreUnavailable (503), never a verdict.
    gone = Stores(
        settings=settings,
        pool=await asyncpg.create_pool(settings.database_url, min_size=1),
        redis=stores.redis,
    )
    await gone.pool.close()
    broken = ScanWriter(gone)
    with pytest.raises(StoreUnavailable):
        await broken.record(row)
    await broken.close()
    assert await recorded(stores, scanner) == []
    # The same row through a working writer: record() returns once the row is in the table.
    writer = ScanWriter(stores)
    await writer.record(row)
    assert len(await recorded(stores, scanner)) == 1
    await writer.close()


async def test_a_checkpoint_also_checks_venue_codes(client: Client, stores: Stores) -> None:
    scanner = await make_checkpoint(stores)
    person = await make_person(stores)
    registered = await client.post(
        "/v1/venues",
        json={"name": "和平区图书馆", "region": "210102", "address": "沈阳市和平区南京北街 1 号"},
        headers=person.auth,
    )
    assert registered.status_code == 201, registered.text
    answer = await scan(client, scanner, registered.json()["payload"])
    assert answer["valid"] is True and answer["pass_type"] == "venue" and answer["colour"] is None
    assert answer["name"] == "和平区图书馆" and answer["number"] == registered.json()["venue"]["id"]
