"""Venue codes over the API (the app in process) with the real PostgreSQL and Redis: who may register a
venue, the signed code (a venue-only signer certified by the issuer's root, its key in the key store), the
QR image a real decoder reads back, and visits: recorded as trips at the venue's region (a recompute
scheduled when a risk area covers it), refused for anything that is not a valid code of an active venue."""

from __future__ import annotations

import asyncio
import io
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import pytest
import zxingcpp
from cryptography.hazmat.primitives.asymmetric import ec
from litestar import Litestar
from litestar.testing import AsyncTestClient
from PIL import Image

from core import clock, db, keys
from core.stores import Stores
from health_code import certs, imports, issuer, status, venues
from health_code.certs import VENUE, allowed_pass_types, certificate_kid
from health_code.jobs import RECOMPUTE_JOB
from health_code.trust import TrustStore
from health_code.verify import PassContent, sign_pass, verify
from tests.integration.test_checkpoints_support import claims_of, good_pass, unchecked_pass
from tests.integration.test_miniapps_support import Person, make_person

Client = AsyncTestClient[Litestar]


def new_region() -> str:
    """A county code of its own (Xinjiang's 65xx range), so no other test's risk areas cover it."""
    return f"65{secrets.randbelow(90) + 10:02d}{secrets.randbelow(90) + 10:02d}"


async def register(
    client: Client, owner: Person, region: str | None = None, **overrides: Any
) -> dict[str, Any]:
    body = {
        "name": f"铁西区体育馆 {secrets.token_hex(2)}",
        "region": region or new_region(),
        "address": "建设中路 1 号",
    }
    answer = await client.post("/v1/venues", json={**body, **overrides}, headers=owner.auth)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def visit(client: Client, person: Person, payload: str) -> Any:
    return await client.post("/v1/venue-visits", json={"venue_payload": payload}, headers=person.auth)


async def test_only_verified_citizens_register_venues(client: Client, stores: Stores) -> None:
    body = {"name": "和平广场", "region": "210102", "address": "沈阳市和平区"}
    assert (await client.post("/v1/venues", json=body)).status_code == 401
    l1 = await make_person(stores, level=1)
    refused = await client.post("/v1/venues", json=body, headers=l1.auth)
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_level"
    owner = await make_person(stores)
    for bad in ({"region": "012345"}, {"region": "21010"}, {"region": "21010a"}, {"name": ""}, {"extra": 1}):
        answer = await client.post("/v1/venues", json={**body, **bad}, headers=owner.auth)
        assert answer.status_code == 400, bad
    answer = await client.post("/v1/venues", json={**body, "name": "bad\x00name"}, headers=owner.auth)
    assert answer.status_code == 422 and answer.json()["field"] == "name"
    mine = await client.get("/v1/me/venues", headers=owner.auth)
    assert mine.status_code == 200 and mine.json() == []


async def test_a_venue_code_is_signed_by_a_venue_only_signer(client: Client, stores: Stores) -> None:
    owner = await make_person(stores)
    created = await register(client, owner, region="210102", name="  和平区  图书馆 ")
    venue = created["venue"]
    assert (venue["name"], venue["region"], venue["status"]) == ("和平区 图书馆", "210102", "active")
    listed = await client.get("/v1/me/venues", headers=owner.auth)
    assert [item["id"] for item in listed.json()] == [venue["id"]]

    signer = await venues.venue_signer(stores)
    # The key is the key store's venue-signer key; the certificate names venue codes only and is issued by
    # the issuer's root.
    key = await keys.active_signer(stores, venues.VENUE_SIGNER)
    assert signer.key_kid == key.kid
    assert signer.cert.public_key().public_numbers() == key.private_key.public_key().public_numbers()
    assert allowed_pass_types(signer.cert) == frozenset({VENUE})
    _, root = await issuer.root(stores)
    signer.cert.verify_directly_issued_by(root)

    trust = TrustStore()
    trust.add_certificate(signer.cert)
    verdict = verify(created["payload"], trust, clock.now())
    assert verdict.valid and verdict.claims is not None
    assert verdict.claims.pass_type == "venue" and verdict.claims.sub == venue["id"]
    assert (
        verdict.claims.name == "和平区 图书馆" and verdict.claims.iss == stores.settings.health_pass_province
    )
    assert verdict.claims.exp_time > clock.now() + timedelta(days=venues.CODE_DAYS - 1)
    # The same key cannot put out a health pass (sign_pass refuses; verifiers would say wrong_key_usage).
    with pytest.raises(ValueError, match="may not sign health"):
        sign_pass(
            PassContent(
                iss="CN-LN",
                sub="u_x",
                iat=clock.now(),
                exp=clock.now() + timedelta(hours=1),
                colour="green",
                since=clock.now(),
                name="张*",
                number="2101**********1234",
            ),
            key=signer.key,
            cert=signer.cert,
        )
    # Every process agrees on the certificate: asking again (this process's cache dropped) finds it.
    venues.forget()
    again = await venues.venue_signer(stores)
    assert certificate_kid(again.cert) == certificate_kid(signer.cert)


async def test_the_qr_image_reads_back_as_a_valid_code(client: Client, stores: Stores) -> None:
    owner = await make_person(stores)
    created = await register(client, owner)
    venue_id = created["venue"]["id"]
    png = await client.get(f"/v1/venues/{venue_id}/code", params={"format": "png"}, headers=owner.auth)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png.content)))
    assert len(found) == 1 and found[0].format == zxingcpp.BarcodeFormat.QRCode
    scanned = found[0].text
    assert scanned.startswith("TB1:") and claims_of(scanned) != claims_of(created["payload"])  # signed anew
    svg = await client.get(f"/v1/venues/{venue_id}/code", headers=owner.auth)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.content.lstrip().startswith(b"<?xml") and b"<svg" in svg.content
    # The scanned code records a visit like the first one.
    visitor = await make_person(stores)
    answer = await visit(client, visitor, scanned)
    assert answer.status_code == 201 and answer.json()["venue_id"] == venue_id
    # Someone else's venue: not found (whether it exists is not told).
    stranger = await make_person(stores)
    other = await client.get(f"/v1/venues/{venue_id}/code", headers=stranger.auth)
    assert other.status_code == 404 and other.json()["code"] == "venue_not_found"


async def _trips(stores: Stores, account_id: UUID) -> list[tuple[str, UUID | None]]:
    async with db.connection(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            "SELECT region_code, venue_id FROM health_trips WHERE account_id = $1 ORDER BY at", account_id
        )
    return [(row["region_code"], row["venue_id"]) for row in rows]


async def _recompute_jobs(stores: Stores, account_id: UUID) -> list[str]:
    async with db.connection(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            "SELECT job_id FROM outbox WHERE job_name = $1 AND job_id LIKE 'health.recompute:trip:%'",
            RECOMPUTE_JOB,
        )
        trips = {
            str(row["id"])
            for row in await conn.fetch("SELECT id FROM health_trips WHERE account_id = $1", account_id)
        }
    return [row["job_id"] for row in rows if row["job_id"].split(":")[2] in trips]


async def test_a_visit_is_a_trip_and_a_risk_area_turns_the_visitor_yellow(
    client: Client, stores: Stores, tmp_path: Path
) -> None:
    owner, visitor = await make_person(stores), await make_person(stores)
    safe = await register(client, owner)
    answer = await visit(client, visitor, safe["payload"])
    assert answer.status_code == 201, answer.text
    seen = answer.json()
    assert seen["venue_id"] == safe["venue"]["id"] and seen["region"] == safe["venue"]["region"]
    assert seen["venue_name"] == safe["venue"]["name"]
    assert await _trips(stores, visitor.account_id) == [(safe["venue"]["region"], UUID(safe["venue"]["id"]))]
    assert await _recompute_jobs(stores, visitor.account_id) == []  # no risk there: nothing to recompute

    risky = await register(client, owner)
    area = tmp_path / "areas.csv"
    since = (clock.now() - timedelta(days=1)).isoformat()
    area.write_text(f"region_code,level,valid_from,valid_to\n{risky['venue']['region']},high,{since},\n")
    await imports.import_risk_areas(stores, area, by="test")
    answer = await visit(client, visitor, risky["payload"])
    assert answer.status_code == 201, answer.text
    assert len(await _recompute_jobs(stores, visitor.account_id)) == 1  # record_trip scheduled it
    await status.recompute(stores, [visitor.account_id])
    async with db.connection(stores.pool, stores.settings) as conn:
        now = await status.current_status(conn, visitor.account_id)
    assert now.colour == "yellow" and now.reasons[0] == "high_risk_trip"


async def test_visits_need_a_valid_code_of_an_active_venue(client: Client, stores: Stores) -> None:
    owner, visitor = await make_person(stores), await make_person(stores)
    created = await register(client, owner)
    payload = created["payload"]
    assert (await client.post("/v1/venue-visits", json={"venue_payload": payload})).status_code == 401
    l1 = await make_person(stores, level=1)
    assert (await visit(client, l1, payload)).status_code == 403

    signer = await venues.venue_signer(stores)
    kid = certificate_kid(signer.cert)
    forged = unchecked_pass(claims_of(payload), key=ec.generate_private_key(ec.SECP256R1()), kid=kid)
    refusals = {
        "invalid_venue_code": [forged, "TB1:nonsense", payload[:-9], "x" * 5000],
        "not_a_venue_code": [await good_pass(stores)],  # a health pass is not a venue code
    }
    for code, payloads in refusals.items():
        for bad in payloads:
            answer = await visit(client, visitor, bad)
            assert answer.status_code == 422 and answer.json()["code"] == code, (code, answer.text)
    answer = await visit(client, visitor, forged)
    assert "bad_signature" in answer.json()["detail"]

    # A code the venue signer made for a venue that is not registered.
    now = clock.now()
    orphan = sign_pass(
        PassContent(
            iss="CN-LN",
            sub=str(UUID(int=secrets.randbits(122))),
            iat=now,
            exp=certs.max_exp(signer.cert, now + timedelta(days=1)),
            name="无此场所",
            number="0",
            pass_type="venue",
        ),
        key=signer.key,
        cert=signer.cert,
    )
    answer = await visit(client, visitor, orphan)
    assert answer.status_code == 404 and answer.json()["code"] == "venue_not_found"

    await venues.set_status(stores, UUID(created["venue"]["id"]), "suspended")
    answer = await visit(client, visitor, payload)
    assert answer.status_code == 409 and answer.json()["code"] == "venue_suspended"
    assert await _trips(stores, visitor.account_id) == []  # nothing refused left a trip
    await venues.set_status(stores, UUID(created["venue"]["id"]), "active")
    assert (await visit(client, visitor, payload)).status_code == 201


async def test_a_new_venue_signer_is_trusted_at_once_by_every_process(client: Client, stores: Stores) -> None:
    """Another process rotated the venue key and certified the new one: this process's copy of the venue
    signers does not know its kid yet, and looks again at once instead of refusing the code."""
    owner, visitor = await make_person(stores), await make_person(stores)
    created = await register(client, owner)
    await keys.rotate(stores, venues.VENUE_SIGNER)
    keys.clear_cache(stores, venues.VENUE_SIGNER)
    venues.forget()
    code = await venues.sign_code(stores, msgspec.convert(created["venue"], venues.Venue))
    assert venues.VENUE_TRUST.stale  # made here: marked, so this process reloads on next use
    venues.VENUE_TRUST.stale = False  # as in a process that never heard of it
    await asyncio.sleep(venues.UNKNOWN_KID_SECONDS + 0.1)
    answer = await visit(client, visitor, code.payload)
    assert answer.status_code == 201, answer.text
