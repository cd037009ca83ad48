"""Ride uploads from bus validators over the API (the app in process, real PostgreSQL and Redis, the sandbox
transit operator as a real process): rides stored and their settlement enqueued through the outbox, a
duplicate upload counted once, the same code and counter from two validators revoking the authorisation,
bad uploads refused with the field named, and settlement with the operator down then up: every ride
settles once, posted to the ledger, nothing lost (the job retries; the periodic sweep catches the rest)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import db
from core.errors import ProviderUnavailable
from core.jobs import decode_payload, registered_jobs, registered_periodic
from core.stores import Stores
from onecode import authorisations, codec, ledger, rides
from onecode.jobs import SETTLE_PENDING, SETTLE_RIDES, SettleRides
from onecode.resolve import BUNDLES
from tests.integration.test_onecode_terminal_support import (  # noqa: F401 (fixtures)
    BUNDLE,
    RIDES,
    Client,
    Holder,
    Term,
    api,
    make_holder,
    make_terminal,
    provider_down,
    provider_settings,
    provider_up,
    sandbox,
    signed_call,
    wired,
)
from tests.support.sandbox import Sandbox


def ride_of(code_text: str, ride_id: str, fare_fen: int = 200, **changes: Any) -> dict[str, Any]:
    """What a validator uploads for a code it accepted."""
    code = codec.parse(codec.unpack(code_text))
    now = datetime.now(UTC)
    ride = {
        "ride_id": ride_id,
        "code_id": code.code_id.hex(),
        "counter": code.counter,
        "generated_at": datetime.fromtimestamp(code.generated_at, UTC).isoformat(),
        "ridden_at": now.isoformat(),
        "fare_fen": fare_fen,
    }
    return {**ride, **changes}


async def upload(client: Client, term: Term, rides_: list[dict[str, Any]]) -> dict[str, Any]:
    answer = await signed_call(client, term, "POST", RIDES, {"rides": rides_})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def stored(stores: Stores, term: Term) -> list[rides.Ride]:
    return await rides.rides_of(stores, term.id, limit=1000)


async def settle_jobs(stores: Stores, term: Term) -> list[SettleRides]:
    """The settlement jobs the terminal's rides put into the outbox."""
    ids = {ride.id for ride in await stored(stores, term)}
    async with db.connection(stores.pool, stores.settings) as conn:
        rows = await conn.fetch("SELECT payload FROM outbox WHERE job_name = $1 ORDER BY id", SETTLE_RIDES)
    payloads = [decode_payload(row["payload"], SettleRides) for row in rows]
    return [p for p in payloads if isinstance(p, SettleRides) and set(p.ride_ids) & ids]


async def run_settlement(stores: Stores, job: SettleRides) -> None:
    """What the worker does with the outbox row: the registered job, with the payload it carries."""
    await registered_jobs()[SETTLE_RIDES].func(stores, job)


@pytest.fixture(scope="module")
async def holder(wired: Stores) -> Holder:  # noqa: F811
    return await make_holder(wired, ("transit",))


async def test_an_upload_stores_the_rides_and_enqueues_their_settlement(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
) -> None:
    term = await make_terminal(wired)
    batch = [ride_of(holder.code(), f"r-{n}") for n in range(3)]
    answer = await upload(api, term, batch)
    assert answer == {"received": 3, "accepted": 3, "duplicates": 0, "revoked_codes": 0}
    kept = await stored(wired, term)
    assert sorted(r.ride_id for r in kept) == ["r-0", "r-1", "r-2"]
    assert {r.status for r in kept} == {"pending"} and {r.code_id for r in kept} == {holder.code_id.hex()}
    [job] = await settle_jobs(wired, term)
    assert sorted(job.ride_ids) == sorted(r.id for r in kept)


async def test_a_duplicate_upload_is_counted_once(api: Client, wired: Stores, holder: Holder) -> None:  # noqa: F811
    term = await make_terminal(wired)
    batch = [ride_of(holder.code(), f"d-{n}") for n in range(4)]
    assert (await upload(api, term, batch))["accepted"] == 4
    again = await upload(api, term, batch)  # the validator never saw the answer and sends it all again
    assert again == {"received": 4, "accepted": 0, "duplicates": 4, "revoked_codes": 0}
    mixed = await upload(
        api, term, [batch[0], ride_of(holder.code(), "d-new"), ride_of(holder.code(), "d-new")]
    )
    assert mixed == {"received": 3, "accepted": 1, "duplicates": 2, "revoked_codes": 0}
    assert len(await stored(wired, term)) == 5
    # No settlement job for an upload that stored nothing new.
    assert len(await settle_jobs(wired, term)) == 2


async def test_the_same_code_and_counter_on_two_validators_revokes_the_authorisation(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    sandbox: Sandbox,  # noqa: F811
) -> None:
    copied = await make_holder(wired, ("transit",))
    first, second = await make_terminal(wired), await make_terminal(wired)
    text = copied.code()
    assert (await upload(api, first, [ride_of(text, "bus-1")]))["revoked_codes"] == 0
    answer = await upload(api, second, [ride_of(text, "bus-2"), ride_of(copied.code(), "bus-2b")])
    assert answer == {"received": 2, "accepted": 2, "duplicates": 0, "revoked_codes": 1}
    async with db.connection(wired.pool, wired.settings) as conn:
        record = await authorisations.by_code_id(conn, copied.code_id)
    assert record is not None and record.status == "revoked" and record.revoked_reason == rides.REVOKE_REASON
    # Every terminal's next bundle carries the revocation.
    bundle = await signed_call(api, first, "GET", BUNDLE)
    assert copied.code_id.hex() in bundle.json()["revoked"]
    # Only the first ride of that code and counter is charged; the other ride of the code still is.
    for job in await settle_jobs(wired, first) + await settle_jobs(wired, second):
        await run_settlement(wired, job)
    [at_first] = await stored(wired, first)
    by_id = {r.ride_id: r for r in await stored(wired, second)}
    assert at_first.status == "settled"
    assert by_id["bus-2"].status == "failed" and by_id["bus-2"].failure == "code_reused"
    assert by_id["bus-2b"].status == "settled"


async def test_settlement_waits_out_an_operator_outage_and_loses_nothing(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    sandbox: Sandbox,  # noqa: F811
    holder: Holder,
) -> None:
    term = await make_terminal(wired)
    batch = [ride_of(holder.code(), f"o-{n}", fare_fen=100 + n) for n in range(5)]
    assert (await upload(api, term, batch))["accepted"] == 5
    [job] = await settle_jobs(wired, term)
    provider_down(sandbox, "transit")
    try:
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable):  # the queue retries the job later
            await run_settlement(wired, job)
        assert time.monotonic() - started < 5  # one failed call stops the others
        assert {r.status for r in await stored(wired, term)} == {"pending"}
    finally:
        provider_up(sandbox, "transit")
    await run_settlement(wired, job)
    kept = await stored(wired, term)
    assert {r.status for r in kept} == {"settled"}
    async with db.connection(wired.pool, wired.settings) as conn:
        postings = [await ledger.posting(conn, ledger.FARE, r.provider_ref or "") for r in kept]
        before = await ledger.totals(conn)
    for ride, lines in zip(kept, postings, strict=True):
        assert {(line.account, line.debit_fen, line.credit_fen) for line in lines} == {
            (f"citizen:{holder.account_id}:transit", ride.fare_fen, 0),
            ("provider:transit", 0, ride.fare_fen),
        }
    # Delivered again (at least once): nothing is charged or posted twice.
    await run_settlement(wired, job)
    async with db.connection(wired.pool, wired.settings) as conn:
        assert await ledger.totals(conn) == before
    assert before.balanced


async def test_the_sweep_settles_rides_whose_job_gave_up(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
) -> None:
    term = await make_terminal(wired)
    assert (await upload(api, term, [ride_of(holder.code(), "s-1"), ride_of(holder.code(), "s-2")]))[
        "accepted"
    ] == 2
    async with db.connection(wired.pool, wired.settings) as conn:  # uploaded long ago, never settled
        await conn.execute(
            "UPDATE onecode_rides SET uploaded_at = now() - interval '1 hour' WHERE terminal_id = $1", term.id
        )
    await registered_periodic()[SETTLE_PENDING].func(wired)
    assert {r.status for r in await stored(wired, term)} == {"settled"}


async def test_rides_that_cannot_be_charged_fail_with_a_reason(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
) -> None:
    term = await make_terminal(wired)
    cap = holder.phone.authorisation.ride_cap_fen
    batch = [
        ride_of(holder.code(), "f-cap", fare_fen=cap + 1),
        ride_of(holder.code(), "f-unknown", code_id="ab" * 16),
        ride_of(holder.code(), "f-free", fare_fen=0),
    ]
    assert (await upload(api, term, batch))["accepted"] == 3
    for job in await settle_jobs(wired, term):
        await run_settlement(wired, job)
    by_id = {r.ride_id: r for r in await stored(wired, term)}
    assert (by_id["f-cap"].status, by_id["f-cap"].failure) == ("failed", "over_cap")
    assert (by_id["f-unknown"].status, by_id["f-unknown"].failure) == ("failed", "unknown_code")
    assert by_id["f-free"].status == "settled"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"code_id": "xyz"}, "rides[0].code_id"),
        ({"counter": -1}, "rides[0].counter"),
        ({"ride_id": ""}, "rides[0].ride_id"),
        ({"ride_id": "with space"}, "rides[0].ride_id"),
        ({"fare_fen": -5}, "rides[0].fare_fen"),
        ({"ridden_at": "2026-01-01T00:00:00"}, "rides[0].ridden_at"),
        ({"surprise": 1}, "rides[0]"),
    ],
)
async def test_a_malformed_ride_is_refused_with_its_field(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
    change: dict[str, Any],
    field: str,
) -> None:
    term = await make_terminal(wired)
    answer = await signed_call(
        api, term, "POST", RIDES, {"rides": [{**ride_of(holder.code(), "m-1"), **change}]}
    )
    assert answer.status_code in (400, 422), answer.text
    assert answer.json()["field"].startswith(field)
    assert await stored(wired, term) == []


async def test_a_ride_in_the_future_and_an_oversized_batch_are_refused(
    api: Client,  # noqa: F811
    wired: Stores,  # noqa: F811
    holder: Holder,
) -> None:
    term = await make_terminal(wired)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    future = await signed_call(
        api, term, "POST", RIDES, {"rides": [ride_of(holder.code(), "x", ridden_at=later)]}
    )
    assert future.status_code == 422 and future.json()["field"] == "rides[0].ridden_at"
    text = holder.code()
    limit = wired.settings.onecode_rides_batch_max
    too_many = [ride_of(text, f"b-{n}") for n in range(limit + 1)]
    answer = await signed_call(api, term, "POST", RIDES, {"rides": too_many})
    assert answer.status_code == 422 and answer.json()["field"] == "rides"
    empty = await signed_call(api, term, "POST", RIDES, {"rides": []})
    assert empty.status_code == 400
    assert await stored(wired, term) == []


def teardown_module() -> None:
    BUNDLES._states.clear()
