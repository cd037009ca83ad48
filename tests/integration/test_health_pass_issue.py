"""The health pass over the API (the app in process) against the real PostgreSQL and Redis: a verified
citizen's pass verifies with our published trust list and root, carries only masked data and a
pseudonymous subject; it is signed once per status version (process cache, then Redis); a status change
drops it at once (the "health:status" message) or within the poll (a missed message), and revokes the older
pass online and in the trust list; the QR images decode to the same pass; exp never passes the signer's
notAfter; history pages through every change."""

from __future__ import annotations

import io
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest
import zxingcpp
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from PIL import Image

from api.app import create_app
from core import clock
from core.db import transaction
from core.pii.masking import mask_id_number
from core.settings import Settings
from core.stores import Stores
from health_code import issuer, passes, status, trustlist
from health_code.certs import load_certificate
from health_code.passes import PASSES
from health_code.trust import TrustStore, load_trust_list
from health_code.trustlist import TRUST, cutoff_seconds
from health_code.verify import verify
from tests.integration.test_health_pass_support import Citizen, eventually, l1_citizen, l2_citizen, turn

ApiClient = AsyncTestClient  # type: ignore[type-arg]


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    # A fast poll (the missed-message fallback) and a new trust-list version on every request.
    fast = msgspec.structs.replace(settings, health_pass_poll_seconds=0.2, health_trust_list_seconds=0.0)
    trustlist.forget_published()  # another module's app may have left a list it serves for 5 s
    async with AsyncTestClient(app=create_app(fast)) as client:
        yield client


async def show(api: ApiClient, citizen: Citizen) -> dict:  # type: ignore[type-arg]
    answer = await api.get("/v1/health-pass", headers=citizen.auth)
    assert answer.status_code == 200, answer.text
    body: dict = answer.json()  # type: ignore[type-arg]
    return body


async def checkpoint_trust(api: ApiClient) -> TrustStore:
    """What an offline checkpoint holds: our published list, its signature checked with our root."""
    root = load_certificate((await api.get("/v1/trust-list/root.pem")).content)
    listed = await api.get("/v1/trust-list")
    assert listed.status_code == 200 and listed.headers["content-type"].startswith("application/json")
    return load_trust_list(listed.content, root=root)


async def test_a_verified_citizen_gets_a_pass_that_verifies_offline(
    api: ApiClient, stores: Stores, settings: Settings
) -> None:
    citizen = await l2_citizen(stores, name="欧阳娜娜")
    answer = await api.get("/v1/health-pass", headers=citizen.auth)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "private, no-store"
    body = answer.json()
    assert set(body) == {"payload", "colour", "since", "exp", "kid"}
    assert body["colour"] == "green" and body["payload"].startswith("TB1:")

    verdict = verify(body["payload"], await checkpoint_trust(api), clock.now())
    assert verdict.valid, verdict.reason
    claims = verdict.claims
    assert claims is not None
    assert (claims.iss, claims.pass_type, claims.colour, claims.region) == (
        "CN-LN",
        "health",
        "green",
        "CN-LN",
    )
    assert claims.name == "欧***" and claims.number == mask_id_number(citizen.id_number)
    # The subject names nobody: random, neither the account id nor the ID number.
    assert claims.sub is not None and claims.sub.startswith("u_") and len(claims.sub) == 22
    assert str(citizen.account_id) not in claims.sub and citizen.id_number[-4:] not in claims.sub[-4:] + "x"
    assert claims.exp - claims.iat == settings.health_pass_ttl_seconds
    assert claims.kid == body["kid"]
    assert datetime.fromisoformat(body["exp"]) == claims.exp_time
    async with transaction(stores.pool, settings) as conn:
        current = await status.current_status(conn, citizen.account_id)
    assert datetime.fromisoformat(body["since"]) == current.since.replace(microsecond=0)
    assert claims.since == int(current.since.timestamp())


async def test_only_verified_citizens_have_a_pass(api: ApiClient, stores: Stores) -> None:
    assert (await api.get("/v1/health-pass")).status_code == 401
    l1 = await l1_citizen(stores)
    for path in ("/v1/health-pass", "/v1/health-pass.png", "/v1/health-pass/history"):
        refused = await api.get(path, headers=l1.auth)
        assert refused.status_code == 403 and refused.json()["code"] == "insufficient_level"


async def test_a_pass_is_signed_once_per_status_version(api: ApiClient, stores: Stores) -> None:
    citizen = await l2_citizen(stores)
    first = (await show(api, citizen))["payload"]
    # ECDSA signatures are randomised: the same text means the same signature, not a new one.
    assert (await show(api, citizen))["payload"] == first
    assert PASSES.get(citizen.account_id) is not None

    PASSES.clear()  # another process, or a restart: Redis still has it
    assert (await show(api, citizen))["payload"] == first

    PASSES.clear()
    deleted = await stores.redis.delete(passes._redis_key(citizen.account_id, 1))
    assert deleted == 1
    again = (await show(api, citizen))["payload"]
    assert again != first
    assert verify(again, await checkpoint_trust(api), clock.now()).valid


async def test_a_status_change_replaces_the_pass_and_revokes_the_old_one(
    api: ApiClient, stores: Stores
) -> None:
    citizen = await l2_citizen(stores)
    green = (await show(api, citizen))["payload"]

    changes = await turn(stores, citizen.account_id, "red")
    assert [change.colour for change in changes] == ["red"]

    async def red_pass() -> dict | None:  # type: ignore[type-arg]
        body = await show(api, citizen)
        return body if body["colour"] == "red" else None

    red = (await eventually(red_pass, timeout=5))["payload"]
    assert red != green
    now = clock.now()

    # Online verification (this process's TrustStore) learns the revocation from the watcher's poll.
    async def revoked_online() -> bool | None:
        return True if verify(green, TRUST.store, clock.now()).reason == "revoked" else None

    await eventually(revoked_online)
    assert verify(red, TRUST.store, now).valid

    # Offline checkpoints learn it from the next trust list.
    published = await checkpoint_trust(api)
    assert verify(green, published, now).reason == "revoked"
    red_verdict = verify(red, published, now)
    assert red_verdict.valid and red_verdict.claims is not None and red_verdict.claims.colour == "red"


async def test_a_missed_message_is_caught_by_the_poll(api: ApiClient, stores: Stores) -> None:
    citizen = await l2_citizen(stores)
    assert (await show(api, citizen))["colour"] == "green"
    async with transaction(stores.pool, stores.settings) as conn:
        await status.add_manual_mark(
            conn, citizen.account_id, colour="yellow", reason="test", by="staff:test"
        )
    # Recomputed without publishing: no "health:status" message reaches the API.
    async with transaction(stores.pool, stores.settings) as conn:
        changed = await status.recompute_in_tx(conn, [citizen.account_id])
    assert [change.colour for change in changed] == ["yellow"]

    async def yellow() -> str | None:
        colour: str = (await show(api, citizen))["colour"]
        return colour if colour == "yellow" else None

    assert await eventually(yellow, timeout=5) == "yellow"


async def test_the_qr_images_decode_to_the_pass(api: ApiClient, stores: Stores) -> None:
    citizen = await l2_citizen(stores)
    payload = (await show(api, citizen))["payload"]

    png = await api.get("/v1/health-pass.png", headers=citizen.auth)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["cache-control"] == "private, no-store"
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png.content)), formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(found) == 1
    assert found[0].format == zxingcpp.BarcodeFormat.QRCode and found[0].ec_level == "M"
    assert found[0].text == payload
    assert verify(found[0].text, await checkpoint_trust(api), clock.now()).valid
    assert passes.qr(payload).mode == "alphanumeric"

    svg = await api.get("/v1/health-pass.svg", headers=citizen.auth)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg") and svg.text.rstrip().endswith("</svg>")


async def test_exp_never_passes_the_signer_certificate(stores: Stores, settings: Settings) -> None:
    citizen = await l2_citizen(stores)
    # Passes asked for 400 days: the signer certificate (health_pass_signer_days, 365) ends first.
    long_lived = Stores(
        settings=msgspec.structs.replace(settings, health_pass_ttl_seconds=400 * 86400),
        pool=stores.pool,
        redis=stores.redis,
    )
    try:
        made = await passes.show_pass(long_lived, citizen.account_id)
        signer = await issuer.pass_signer(long_lived)
    finally:
        issuer.forget()
        PASSES.clear()
    assert made.view.exp == signer.cert.not_valid_after_utc
    trust = TrustStore()
    trust.add_certificate(signer.cert)
    assert verify(made.view.payload, trust, clock.now()).valid


async def test_history_lists_every_change_newest_first(api: ApiClient, stores: Stores) -> None:
    citizen = await l2_citizen(stores)
    await show(api, citizen)
    await turn(stores, citizen.account_id, "red")
    await turn(stores, citizen.account_id, "green")

    page = (await api.get("/v1/health-pass/history", headers=citizen.auth)).json()
    assert [change["colour"] for change in page["changes"]] == ["green", "red", "green"]
    assert [change["version"] for change in page["changes"]] == [3, 2, 1]
    assert page["next_before_version"] is None
    assert page["changes"][1]["reasons"] and page["changes"][1]["rule_id"]

    first = (await api.get("/v1/health-pass/history", params={"limit": 2}, headers=citizen.auth)).json()
    assert [change["version"] for change in first["changes"]] == [3, 2]
    assert first["next_before_version"] == 2
    rest = (
        await api.get(
            "/v1/health-pass/history", params={"limit": 2, "before_version": 2}, headers=citizen.auth
        )
    ).json()
    assert [change["version"] for change in rest["changes"]] == [1] and rest["next_before_version"] is None
    assert (
        await api.get("/v1/health-pass/history", params={"limit": 0}, headers=citizen.auth)
    ).status_code == 400


async def test_the_demo_citizen_has_a_green_pass(stores: Stores) -> None:
    from auth.demo import ensure_demo_citizen
    from scripts.demo import DEMO_STEPS

    steps = dict(DEMO_STEPS)
    await steps["demo citizen 张三 (L2)"](stores)
    await steps["health pass of 张三 (green)"](stores)
    account_id = await ensure_demo_citizen(stores)
    PASSES.clear()  # what the step cached in Redis is what the API shows
    stored = await stores.redis.get(passes._redis_key(account_id, 1))
    assert stored is not None
    shown = await passes.show_pass(stores, account_id)
    assert shown.view.colour == "green" and shown.view.payload == msgspec.msgpack.decode(stored)[0]


@given(st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), min_size=1, max_size=12))
def test_each_status_version_gets_a_later_revocation_time(gaps: list[float]) -> None:
    # Changes any distance apart, several within one second included: a version's passes (iat at or
    # after its cutoff) are never revoked by its own entry, and always by every later version's.
    start = datetime(2026, 11, 22, tzinfo=UTC).timestamp()
    times = [datetime.fromtimestamp(start + sum(gaps[: i + 1]), UTC) for i in range(len(gaps))]
    cutoffs = [cutoff_seconds(times[: i + 1]) for i in range(len(times))]
    assert all(earlier < later for earlier, later in itertools.pairwise(cutoffs))
    assert all(cutoff >= moment.timestamp() for cutoff, moment in zip(cutoffs, times, strict=True))
    # Ahead of the clock by at most one second per change within the window.
    assert all(
        cutoff - moment.timestamp() <= len(times) for cutoff, moment in zip(cutoffs, times, strict=True)
    )
