"""Online resolve over the API (the app in process, real PostgreSQL and Redis, the sandbox medical-insurance
platform, payment acquirer and transit operator as a real process): a hospital counter gets the ec.query
answer; a POS payment is charged once per order and balances in the ledger; over the limit is declined
with the reason; a replay, a forged, stale, expired, unknown-issuer, revoked or wrong-scene code is refused
with its reason; a provider down is a fast 503 that frees the code for a retry; an online validator's
ride is recorded and settled like an uploaded one."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest

from core import db
from core.stores import Stores
from onecode import authorisations, codec, devices, emv, ledger, rides
from onecode.resolve import BUNDLES
from tests.integration.test_onecode_terminal_support import (  # noqa: F401 (fixtures)
    RESOLVE,
    Client,
    Holder,
    Term,
    api,
    knob,
    make_holder,
    make_terminal,
    provider_down,
    provider_settings,
    provider_up,
    sandbox,
    signed_call,
    wired,
)
from tests.support import onecode_codes
from tests.support.sandbox import Sandbox


async def resolve(client: Client, term: Term, **request: Any) -> dict[str, Any]:
    answer = await signed_call(client, term, "POST", RESOLVE, request)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


@pytest.fixture(scope="module")
async def holder(wired: Stores) -> Holder:  # noqa: F811
    return await make_holder(wired)


@pytest.fixture(scope="module")
async def counter(wired: Stores) -> Term:  # noqa: F811
    return await make_terminal(wired, "counter", org_code="H21010200001")


@pytest.fixture(scope="module")
async def pos(wired: Stores) -> Term:  # noqa: F811
    return await make_terminal(wired, "pos")


@pytest.fixture(autouse=True)
def limits(sandbox: Sandbox) -> Any:  # noqa: F811
    yield
    for name in ("transit", "medical", "acquirer"):
        provider_up(sandbox, name)
    knob(sandbox, "acquirer", "/sandbox/acquirer/config", {"per_payment_limit_fen": 100_000})


_orders = iter(range(10**9))


def order() -> str:
    return f"o-{time.time_ns()}-{next(_orders)}"


# --- medical -----------------------------------------------------------------------------------------------


async def test_a_hospital_counter_gets_the_ec_query_answer(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
    counter: Term,
) -> None:
    answer = await resolve(api, counter, code=holder.code(), scene="medical")
    assert answer["result"] == "approved" and answer["reason"] == "ok"
    voucher = answer["voucher"]
    assert set(voucher) == {"ecToken", "userName", "idNo", "idType", "insuOrg", "ecTokenExpireTime"}
    assert voucher["ecToken"].startswith(voucher["insuOrg"] + "ec") and len(voucher["ecToken"]) <= 40
    assert voucher["userName"] == "张*" and "*" * 10 in voucher["idNo"] and voucher["idType"] == "01"
    assert len(voucher["insuOrg"]) == 6 and voucher["insuOrg"].isdigit()
    async with db.connection(wired.pool, wired.settings) as conn:
        logged = await conn.fetchval(
            "SELECT count(*) FROM pii_access_log WHERE actor = $1", f"terminal:{counter.id}"
        )
        recorded = await conn.fetchrow(
            "SELECT scene, result, reason FROM onecode_resolves WHERE terminal_id = $1", counter.id
        )
    assert logged >= 1  # the insured-person reference was decrypted for this terminal, and that is logged
    assert tuple(recorded) == ("medical", "approved", "ok")


async def test_a_pos_may_not_read_the_medical_voucher(api: Client, holder: Holder, pos: Term) -> None:  # noqa: F811
    answer = await signed_call(api, pos, "POST", RESOLVE, {"code": holder.code(), "scene": "medical"})
    assert answer.status_code == 403 and answer.json()["code"] == "scene_not_allowed"


# --- payment ----------------------------------------------------------------------------------------------


async def test_a_payment_is_charged_once_and_the_ledger_balances(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
    pos: Term,
) -> None:
    order_id = order()
    answer = await resolve(api, pos, code=holder.code(), scene="payment", amount_fen=1234, order_id=order_id)
    assert answer["result"] == "approved" and answer["amount_fen"] == 1234 and answer["provider_ref"]
    async with db.connection(wired.pool, wired.settings) as conn:
        lines = await ledger.posting(conn, ledger.PAYMENT, answer["provider_ref"])
        totals = await ledger.totals(conn)
    assert sorted((line.account, line.debit_fen, line.credit_fen) for line in lines) == sorted(
        [
            (f"citizen:{holder.account_id}:payment", 1234, 0),
            ("provider:acquirer", 0, 1234),
            ("provider:acquirer", 1234, 0),
            (f"merchant:{pos.id}", 0, 1234),
        ]
    )
    assert totals.balanced
    # The till sends the order again (it never saw the answer), even with a new code: the same answer,
    # nothing charged or posted twice.
    again = await resolve(api, pos, code=holder.code(), scene="payment", amount_fen=1234, order_id=order_id)
    assert again == answer
    async with db.connection(wired.pool, wired.settings) as conn:
        assert (await ledger.totals(conn)).postings == totals.postings


async def test_a_pos_scanning_the_emvco_form_charges_the_same_token(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
    pos: Term,
) -> None:
    cpm = emv.encode_cpm(holder.code())
    answer = await resolve(api, pos, code=cpm, scene="payment", amount_fen=250, order_id=order())
    assert answer["result"] == "approved" and answer["code_id"] == holder.code_id.hex(), answer
    # The same payload again is a replay; a payload whose token does not match its code is refused.
    again = await resolve(api, pos, code=cpm, scene="payment", amount_fen=250, order_id=order())
    assert (again["result"], again["reason"]) == ("refused", "replay")
    forged = _with_pan(emv.encode_cpm(holder.code()), emv.Tlv(emv.TAG_PAN, emv.digits_bcd("6" * 19)))
    refused = await resolve(api, pos, code=forged, scene="payment", amount_fen=250, order_id=order())
    assert (refused["result"], refused["reason"]) == ("refused", "bad_cpm")
    # Only a payment takes the CPM form.
    wrong = await signed_call(api, pos, "POST", RESOLVE, {"code": cpm, "scene": "transit", "amount_fen": 1})
    assert wrong.status_code in (403, 422)


def _with_pan(text: str, pan: emv.Tlv) -> str:
    """The CPM text with its application's 5A replaced."""
    tree = emv.tlv_decode(base64.b64decode(text))
    head, application = tree[0], tree[1]
    children = tuple(pan if child.tag == emv.TAG_PAN else child for child in application.value)  # type: ignore[union-attr]
    return base64.b64encode(emv.tlv_encode((head, application._replace(value=children)))).decode()


async def test_an_amount_over_the_limit_is_declined_with_the_reason(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    sandbox: Sandbox,  # noqa: F811
    holder: Holder,
    pos: Term,
) -> None:
    knob(sandbox, "acquirer", "/sandbox/acquirer/config", {"per_payment_limit_fen": 5000})
    async with db.connection(wired.pool, wired.settings) as conn:
        before = await ledger.totals(conn)
    answer = await resolve(api, pos, code=holder.code(), scene="payment", amount_fen=5001, order_id=order())
    assert (answer["result"], answer["reason"]) == ("declined", "over_limit")
    async with db.connection(wired.pool, wired.settings) as conn:
        assert await ledger.totals(conn) == before


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"scene": "payment", "order_id": "a"}, "amount_fen"),
        ({"scene": "payment", "amount_fen": 100}, "order_id"),
        ({"scene": "payment", "amount_fen": 0, "order_id": "a"}, "amount_fen"),
        ({"scene": "payment", "amount_fen": 100, "order_id": "has space"}, "order_id"),
        ({"scene": "parking", "amount_fen": 100}, "scene"),
    ],
)
async def test_a_malformed_resolve_names_the_field(
    api: Client,  # noqa: F811
    holder: Holder,
    pos: Term,
    request_: dict[str, Any],
    field: str,
) -> None:
    answer = await signed_call(api, pos, "POST", RESOLVE, {"code": holder.code(), **request_})
    assert answer.status_code in (400, 422), answer.text
    assert answer.json()["field"] == field


# --- refusals ---------------------------------------------------------------------------------------------


async def test_a_replayed_code_is_refused(api: Client, holder: Holder, pos: Term) -> None:  # noqa: F811
    text = holder.code()
    first = await resolve(api, pos, code=text, scene="payment", amount_fen=100, order_id=order())
    assert first["result"] == "approved"
    again = await resolve(api, pos, code=text, scene="payment", amount_fen=100, order_id=order())
    assert (again["result"], again["reason"]) == ("refused", "replay")
    assert again["code_id"] == holder.code_id.hex()


async def test_a_replay_is_refused_across_terminals(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
    counter: Term,
) -> None:
    text = holder.code()
    other = await make_terminal(wired, "counter")
    assert (await resolve(api, counter, code=text, scene="medical"))["result"] == "approved"
    assert (await resolve(api, other, code=text, scene="medical"))["reason"] == "replay"


# Where the scenes byte (signed by the issuer) and the counter (signed by the device) sit in a code.
SCENES_OFFSET = codec.SIGNED_BYTES - 2 * codec.HANDLE_BYTES - 4 - 1
COUNTER_OFFSET = codec.AUTHORISATION_BYTES + 4


def tampered(text: str, offset: int) -> str:
    raw = bytearray(codec.unpack(text))
    raw[offset] ^= 0x01
    return codec.pack(bytes(raw))


async def test_forged_stale_expired_unknown_and_wrong_scene_codes_are_refused(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
    pos: Term,
) -> None:
    issuer = (await authorisations.signer(wired)).private_key
    device = onecode_codes.new_key()
    now = int(time.time())
    live = {"issued_at": now - 60, "expires_at": now + 3600, "generated_at": now}
    cases = {
        # the issuer's signature no longer covers a changed scene byte, the device's a changed counter
        "bad_issuer_signature": tampered(holder.code(), SCENES_OFFSET),
        "bad_device_signature": tampered(holder.code(), COUNTER_OFFSET),
        "stale": holder.code(now - 600),
        "future": holder.code(now + 600),
        "expired": onecode_codes.text_code(
            issuer, device, issued_at=now - 7200, expires_at=now - 3600, generated_at=now
        ),
        "unknown_issuer": onecode_codes.text_code(onecode_codes.new_key(), device, **live),
        "wrong_scene": onecode_codes.text_code(issuer, device, scenes=codec.SCENE_TRANSIT, **live),
        "bad_prefix": "HC1:" + holder.code()[5:],
        "bad_base45": "TBO1:" + "~" * 300,
        "too_large": "TBO1:" + "A" * 1000,
    }
    for reason, text in cases.items():
        answer = await resolve(api, pos, code=text, scene="payment", amount_fen=100, order_id=order())
        assert (answer["result"], answer["reason"]) == ("refused", reason), reason


async def test_a_lost_phone_is_refused_at_once(api: Client, wired: Stores, pos: Term) -> None:  # noqa: F811
    lost = await make_holder(wired, ("payment",))
    text = lost.code()
    await devices.lost_phone(wired, lost.account_id, lost.device_id)
    # The bundle this process verifies with may be seconds old; the handle look-up is not.
    answer = await resolve(api, pos, code=text, scene="payment", amount_fen=100, order_id=order())
    assert (answer["result"], answer["reason"]) == ("refused", "revoked")
    # The very next bundle download carries the revocation, whatever the process cached.
    bundle = await signed_call(api, pos, "GET", "/v1/terminals/bundle")
    assert bundle.status_code == 200 and lost.code_id.hex() in bundle.json()["revoked"]
    assert bundle.headers["Cache-Control"] == "no-store"
    BUNDLES.forget(wired)
    later = await resolve(api, pos, code=lost.code(), scene="payment", amount_fen=100, order_id=order())
    assert (later["result"], later["reason"]) == ("refused", "revoked")


# --- providers down ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scene", "provider"), [("medical", "medical"), ("payment", "acquirer")])
async def test_a_provider_down_fails_fast_and_frees_the_code(
    api: Client,  # noqa: F811
    sandbox: Sandbox,  # noqa: F811
    holder: Holder,
    counter: Term,
    scene: str,
    provider: str,
) -> None:
    text = holder.code()
    request: dict[str, Any] = {"code": text, "scene": scene}
    if scene == "payment":
        request |= {"amount_fen": 100, "order_id": order()}
    provider_down(sandbox, provider)
    started = time.monotonic()
    answer = await signed_call(api, counter, "POST", RESOLVE, request)
    assert time.monotonic() - started < 2.5
    assert answer.status_code == 503 and answer.json()["code"] == "provider_unavailable"
    assert answer.headers["Retry-After"]
    provider_up(sandbox, provider)
    retried = await signed_call(api, counter, "POST", RESOLVE, request)  # the same code, and order
    assert retried.status_code == 200 and retried.json()["result"] == "approved", retried.text


# --- transit (online validators) ----------------------------------------------------------------------------


async def test_an_online_validator_records_a_ride_that_settles(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
) -> None:
    from onecode.jobs import SettleRides, settle_rides_job

    validator = await make_terminal(wired, "validator")
    text = holder.code()
    answer = await resolve(api, validator, code=text, scene="transit", amount_fen=200)
    assert answer["result"] == "approved" and answer["amount_fen"] == 200
    code = codec.parse(codec.unpack(text))
    assert answer["ride_id"] == f"{code.code_id.hex()}:{code.counter}"
    over = await resolve(api, validator, code=holder.code(), scene="transit", amount_fen=10**6)
    assert (over["result"], over["reason"]) == ("refused", "over_cap")
    [ride] = await rides.rides_of(wired, validator.id)
    await settle_rides_job(wired, SettleRides(ride_ids=[ride.id]))
    [settled] = await rides.rides_of(wired, validator.id)
    assert settled.status == "settled" and settled.fare_fen == 200


def teardown_module() -> None:
    BUNDLES._states.clear()


# --- the hot path's sharing: Redis pipelines and group commits --------------------------------------------------


async def test_concurrent_resolves_share_round_trips_and_commits(wired: Stores, holder: Holder) -> None:  # noqa: F811
    from core.pipelined_redis import pipelined
    from onecode import resolve as resolving
    from onecode.terminal_auth import TERMINALS

    validator = await make_terminal(wired, "validator")
    principal = (await TERMINALS.row(wired, validator.id, time.monotonic())).principal
    assert principal is not None
    redis, writer = pipelined(wired.redis), rides.writer_for(wired)
    await redis.execute("PING")
    writes, batches = redis.writes, writer.batches
    requests = [
        resolving.ResolveRequest(code=holder.code(), scene="transit", amount_fen=150) for _ in range(40)
    ]
    answers = await asyncio.gather(*(resolving.resolve(wired, principal, r) for r in requests))
    assert {a.result for a in answers} == {"approved"}
    assert redis.writes - writes < 40  # 40 replay claims, fewer writes to Redis
    assert writer.batches - batches < 40  # 40 rides, fewer commits
    recorded = await rides.rides_of(wired, validator.id)
    assert len(recorded) == 40 and len({r.ride_id for r in recorded}) == 40
    # The same 40 again: every one a replay, nothing recorded.
    again = await asyncio.gather(*(resolving.resolve(wired, principal, r) for r in requests))
    assert {(a.result, a.reason) for a in again} == {("refused", "replay")}
    assert len(await rides.rides_of(wired, validator.id)) == 40


async def test_redis_away_is_a_store_outage(wired: Stores, holder: Holder) -> None:  # noqa: F811
    import redis.asyncio as aioredis

    from core.errors import StoreUnavailable
    from onecode import resolve as resolving
    from tests.support.server import free_port

    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    away = Stores(settings=wired.settings, pool=wired.pool, redis=dead)
    code = codec.parse(codec.unpack(holder.code()))
    try:
        with pytest.raises(StoreUnavailable):
            await resolving.first_resolve(away, code.code_id, code.counter)
    finally:
        await dead.aclose()


async def test_a_ride_whose_commit_fails_is_not_answered_as_recorded(wired: Stores, holder: Holder) -> None:  # noqa: F811
    import uuid

    from core.errors import StoreUnavailable
    from onecode.terminal_auth import TerminalPrincipal

    ghost = TerminalPrincipal(id=uuid.uuid4(), kind="validator", name="ghost", owner="nobody")
    code = codec.parse(codec.unpack(holder.code()))
    with pytest.raises(StoreUnavailable):  # the row cannot be written (no such terminal): no answer
        await rides.record_online_ride(wired, ghost, code, ride_id="ghost-1", fare_fen=100)
    assert await rides.rides_of(wired, ghost.id) == []


async def test_a_body_over_the_limit_is_refused_before_it_is_read(api: Client, pos: Term) -> None:  # noqa: F811
    answer = await signed_call(api, pos, "POST", RESOLVE, {"code": "TBO1:" + "A" * 5000, "scene": "payment"})
    assert answer.status_code == 413
    assert answer.json()["code"] == "http_413"
