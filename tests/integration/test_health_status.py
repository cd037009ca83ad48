"""Health status against the real PostgreSQL and Redis: each kind of input changes the colour as the rules
say once its outbox job has run; a recompute writes history and an inbox message only on a change, bumps
the version, publishes the change, and never double-counts when two run at once."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

import msgspec
import pytest
from click.testing import Result
from typer.testing import CliRunner

from auth import repository as auth_repository
from core import clock, db, ids
from core.errors import Conflict, InvalidInput, NotFound
from core.jobs import decode_payload
from core.pii.masking import mask_phone, normalize_phone
from core.stores import Stores
from health_code import imports, status
from health_code.jobs import RECOMPUTE_JOB, Recompute, recompute_job
from health_code.rules import default_rules, rules_from_document
from miniapps import inbox
from scripts.cli import app


def days(n: float) -> timedelta:
    return timedelta(days=n)


async def new_account(stores: Stores) -> UUID:
    """A bare L1 account (phone sealed by the vault, as login stores it)."""
    vault = await stores.vault()
    account_id = ids.new_id()
    phone = "139" + f"{secrets.randbelow(10**8):08d}"
    async with stores.pool.acquire() as conn:
        sealed = await vault.encrypt(conn, phone, table="accounts", column="phone", row_id=account_id)
        bidx = vault.blind_index(phone, purpose="accounts.phone", normalize=normalize_phone)
        assert await auth_repository.insert_account(conn, account_id, sealed, bidx, mask_phone(phone))
    return account_id


async def pending_jobs(stores: Stores, account_id: UUID) -> list[tuple[str, datetime | None]]:
    """(job id, defer_until) of the not yet relayed recompute jobs that name the account."""
    rows = await stores.pool.fetch(
        "SELECT job_id, payload, defer_until FROM outbox WHERE job_name = $1 AND enqueued_at IS NULL ORDER BY id",
        RECOMPUTE_JOB,
    )
    found = []
    for row in rows:
        payload = decode_payload(row["payload"], Recompute)
        assert isinstance(payload, Recompute)
        if account_id in payload.account_ids:
            found.append((row["job_id"], row["defer_until"]))
    return found


async def run_due_jobs(stores: Stores) -> int:
    """What the relay and the worker do for due recompute jobs: run each job function once, in order."""
    rows = await stores.pool.fetch(
        """UPDATE outbox SET enqueued_at = now()
           WHERE job_name = $1 AND enqueued_at IS NULL AND (defer_until IS NULL OR defer_until <= now())
           RETURNING id, payload""",
        RECOMPUTE_JOB,
    )
    for row in sorted(rows, key=lambda r: r["id"]):
        payload = decode_payload(row["payload"], Recompute)
        assert isinstance(payload, Recompute)
        await recompute_job(stores, payload)
    return len(rows)


async def status_now(stores: Stores, account_id: UUID) -> status.HealthStatus:
    async with stores.pool.acquire() as conn:
        return await status.current_status(conn, account_id)


async def messages(stores: Stores, account_id: UUID) -> list[inbox.InboxMessage]:
    async with stores.pool.acquire() as conn:
        return (await inbox.list_messages(conn, account_id, limit=100)).messages


async def history(stores: Stores, account_id: UUID) -> list[tuple[int, str]]:
    async with stores.pool.acquire() as conn:
        return [(c.version, c.colour) for c in await status.status_history(conn, account_id)]


async def import_areas(stores: Stores, tmp_path: Path, *lines: str) -> imports.ImportResult:
    file = tmp_path / f"areas-{secrets.token_hex(4)}.csv"
    file.write_text("region_code,level,valid_from,valid_to\n" + "\n".join(lines) + "\n")
    return await imports.import_risk_areas(stores, file, by="test")


def iso(moment: datetime) -> str:
    return moment.isoformat()


@pytest.fixture(autouse=True)
def fresh_rules() -> None:
    status.forget_rules()


# --- reading and first use -------------------------------------------------------------------------------


async def test_the_first_read_computes_a_green_status_without_a_message(stores: Stores) -> None:
    account = await new_account(stores)
    first = await status_now(stores, account)
    assert (first.colour, first.reasons, first.rule_id, first.version) == ("green", ["no_risk"], None, 1)
    assert first.rule_version == default_rules().version
    assert first.valid_until is None
    again = await status_now(stores, account)
    assert again.version == 1 and again.computed_at == first.computed_at  # read, not recomputed
    assert await history(stores, account) == [(1, "green")]
    assert await messages(stores, account) == []


async def test_unknown_accounts_are_not_found(stores: Stores) -> None:
    async with stores.pool.acquire() as conn:
        with pytest.raises(NotFound):
            await status.current_status(conn, ids.new_id())
        with pytest.raises(NotFound):
            await status.record_trip(conn, ids.new_id(), "210102", None, clock.now())
        with pytest.raises(InvalidInput, match="region"):
            await status.record_trip(conn, await new_account(stores), "21010", None, clock.now())
        with pytest.raises(InvalidInput, match="future"):
            await status.record_test_result(
                conn, await new_account(stores), "positive", clock.now() + days(1)
            )


# --- each input kind through its outbox job --------------------------------------------------------------


async def test_a_positive_test_turns_red_through_its_job_with_history_and_one_message(stores: Stores) -> None:
    account = await new_account(stores)
    assert (await status_now(stores, account)).colour == "green"
    sampled = clock.now() - days(2)
    async with stores.pool.acquire() as conn:
        assert await status.record_test_result(conn, account, "positive", sampled)
        assert not await status.record_test_result(conn, account, "positive", sampled)  # once only
    assert len(await pending_jobs(stores, account)) == 1
    assert (await status_now(stores, account)).colour == "green"  # nothing before the job runs

    assert await run_due_jobs(stores) >= 1
    red = await status_now(stores, account)
    assert (red.colour, red.reasons, red.rule_id, red.version) == (
        "red",
        ["positive_test"],
        "positive_test",
        2,
    )
    assert red.since == sampled
    assert red.valid_until == sampled + days(14)
    # the end of the window is waited for by a deferred job
    deferred = [until for _, until in await pending_jobs(stores, account) if until is not None]
    assert deferred == [sampled + days(14) + status.DEFER_SLACK]
    assert await history(stores, account) == [(2, "red"), (1, "green")]
    notes = await messages(stores, account)
    assert len(notes) == 1
    assert notes[0].source == "health" and "红码" in notes[0].body and "阳性" in notes[0].body

    # recomputing without new inputs changes nothing and tells nobody
    assert await status.recompute(stores, [account]) == []
    assert (await status_now(stores, account)).version == 2
    assert await history(stores, account) == [(2, "red"), (1, "green")]
    assert len(await messages(stores, account)) == 1


async def test_a_trip_into_a_high_risk_area_is_yellow_until_a_negative_test(
    stores: Stores, tmp_path: Path
) -> None:
    now = clock.now()
    await import_areas(stores, tmp_path, f"450100,high,{iso(now - days(6))},")
    account = await new_account(stores)
    async with stores.pool.acquire() as conn:
        await status.record_trip(conn, account, "450102", ids.new_id(), now - days(3))
    assert len(await pending_jobs(stores, account)) == 1
    await run_due_jobs(stores)
    yellow = await status_now(stores, account)
    assert (yellow.colour, yellow.reasons) == ("yellow", ["high_risk_trip"])
    async with stores.pool.acquire() as conn:
        await status.record_test_result(conn, account, "negative", now - days(1))
    await run_due_jobs(stores)
    green = await status_now(stores, account)
    assert (green.colour, green.reasons, green.version) == ("green", ["no_risk"], 2)
    assert [m.body[:9] for m in await messages(stores, account)] == [
        "您的健康码现为绿码",
        "您的健康码现为黄码",
    ]


async def test_a_trip_outside_any_risk_area_schedules_nothing(stores: Stores) -> None:
    account = await new_account(stores)
    async with stores.pool.acquire() as conn:
        await status.record_trip(conn, account, "469001", None, clock.now() - days(1))
    assert await pending_jobs(stores, account) == []


async def test_manual_marks_give_their_colour_until_cleared(stores: Stores) -> None:
    account = await new_account(stores)
    async with stores.pool.acquire() as conn:
        mark = await status.add_manual_mark(conn, account, colour="red", reason="close contact", by="staff:1")
    await run_due_jobs(stores)
    assert (await status_now(stores, account)).reasons == ["manual_red"]
    async with stores.pool.acquire() as conn:
        cleared = await status.clear_manual_mark(conn, mark.id, by="staff:2")
        assert cleared.cleared_by == "staff:2" and cleared.cleared_at is not None
        again = await status.clear_manual_mark(conn, mark.id, by="staff:3")
        assert again.cleared_by == "staff:2"  # the first clearing stands
        with pytest.raises(NotFound):
            await status.clear_manual_mark(conn, ids.new_id(), by="staff:2")
        assert [m.id for m in await status.manual_marks(conn, account)] == [mark.id]
    await run_due_jobs(stores)
    assert (await status_now(stores, account)).colour == "green"
    assert await history(stores, account) == [(2, "green"), (1, "red")]


async def test_an_approved_appeal_clears_and_a_rejected_one_does_not(stores: Stores) -> None:
    account = await new_account(stores)
    async with stores.pool.acquire() as conn:
        await status.record_test_result(conn, account, "positive", clock.now() - days(3))
    await run_due_jobs(stores)
    assert (await status_now(stores, account)).colour == "red"
    rejected, approved = ids.new_id(), ids.new_id()
    async with stores.pool.acquire() as conn:
        assert await status.apply_appeal_outcome(
            conn, account, appeal_id=rejected, decision="rejected", decided_by="staff:1"
        )
        # a rejection schedules no recompute (only the deferred one at the end of the window is there)
        assert all(until is not None for _, until in await pending_jobs(stores, account))
        assert await status.apply_appeal_outcome(
            conn,
            account,
            appeal_id=approved,
            decision="approved",
            decided_by="staff:1",
            reason_code="positive_test",
        )
        # the first decision on an appeal stands
        assert not await status.apply_appeal_outcome(
            conn, account, appeal_id=approved, decision="rejected", decided_by="staff:2"
        )
    await run_due_jobs(stores)
    cleared = await status_now(stores, account)
    assert (cleared.colour, cleared.version) == ("green", 2)


async def test_vaccination_doses_decide_a_medium_risk_trip(stores: Stores, tmp_path: Path) -> None:
    now = clock.now()
    await import_areas(stores, tmp_path, f"460200,medium,{iso(now - days(5))},")
    account = await new_account(stores)
    async with stores.pool.acquire() as conn:
        await status.record_vaccination(conn, account, 1, now - days(120))
        await status.record_trip(conn, account, "460202", None, now - days(2))
    await run_due_jobs(stores)
    assert (await status_now(stores, account)).reasons == ["medium_risk_trip_unvaccinated"]
    async with stores.pool.acquire() as conn:
        await status.record_vaccination(conn, account, 2, now - days(30))
    await run_due_jobs(stores)
    assert (await status_now(stores, account)).colour == "green"


# --- recompute: versions, windows, publication, concurrency ----------------------------------------------


async def test_a_status_whose_window_has_ended_is_recomputed_when_read(stores: Stores) -> None:
    account = await new_account(stores)
    sampled = clock.now() - days(2)
    async with stores.pool.acquire() as conn:
        await status.record_test_result(conn, account, "positive", sampled)
    await run_due_jobs(stores)
    red = await status_now(stores, account)
    async with stores.pool.acquire() as conn:
        later = await status.current_status(conn, account, now=red.valid_until)
    assert (later.colour, later.version, later.since) == ("green", red.version + 1, red.valid_until)
    assert later.valid_until is None


async def test_changes_are_published_after_commit(stores: Stores) -> None:
    account = await new_account(stores)
    await status.recompute(stores, [account])
    pubsub = stores.redis.pubsub()
    await pubsub.subscribe(status.STATUS_CHANNEL)
    try:
        assert (await pubsub.get_message(timeout=1.0))["type"] == "subscribe"  # type: ignore[index]
        async with stores.pool.acquire() as conn:
            await status.add_manual_mark(conn, account, colour="yellow", reason="contact", by="staff:1")
        await run_due_jobs(stores)
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
        assert message is not None
        published = json.loads(message["data"])
        assert published == {
            "account_id": str(account),
            "version": 2,
            "colour": "yellow",
            "previous_colour": "green",
        }
        # no change, nothing published
        await status.recompute(stores, [account])
        assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()


async def test_concurrent_recomputes_of_one_account_make_one_change(stores: Stores) -> None:
    accounts = [await new_account(stores) for _ in range(20)]
    async with stores.pool.acquire() as conn:
        for account in accounts:
            await status.record_test_result(conn, account, "positive", clock.now() - days(1))
    orders = [
        accounts,
        list(reversed(accounts)),
        accounts[10:] + accounts[:10],
        accounts[::2] + accounts[1::2],
    ]
    results = await asyncio.gather(*(status.recompute(stores, order) for order in orders * 2))
    assert sorted(c.account_id for batch in results for c in batch) == sorted(accounts)
    for account in accounts:
        assert await history(stores, account) == [(1, "red")]
        assert len(await messages(stores, account)) == 1


async def test_new_rules_apply_when_activated(stores: Stores) -> None:
    account = await new_account(stores)
    async with stores.pool.acquire() as conn:
        await status.record_test_result(conn, account, "positive", clock.now() - days(3))
    await run_due_jobs(stores)
    assert (await status_now(stores, account)).colour == "red"
    document = msgspec.json.decode(msgspec.json.encode(default_rules().document))
    document["version"] = "test-short-" + secrets.token_hex(3)
    document["rules"][1]["when"][0]["within"] = "2d"
    short = rules_from_document(document)
    try:
        async with db.transaction(stores.pool, stores.settings) as conn:
            jobs = await status.activate_rules(conn, short, by="test")
        assert jobs >= 1
        after = await status_now(stores, account)  # recomputed on read: other rules than it was made under
        assert (after.colour, after.rule_version) == ("green", short.version)
        document["rules"][1]["when"][0]["within"] = "3d"
        async with db.transaction(stores.pool, stores.settings) as conn:
            with pytest.raises(Conflict):
                await status.activate_rules(conn, rules_from_document(document), by="test")
    finally:
        async with db.transaction(stores.pool, stores.settings) as conn:
            await status.activate_rules(conn, default_rules(), by="test", recompute_all=False)
    assert (await status_now(stores, account)).colour == "red"


# --- the ops commands ------------------------------------------------------------------------------------


async def cli(*args: str) -> Result:
    # The command runs its own event loop (asyncio.run), so it goes to a thread off this test's loop.
    runner = CliRunner(env={"COLUMNS": "200"})
    return await asyncio.to_thread(runner.invoke, app, list(args))


async def test_staff_mark_recompute_show_and_unmark_from_the_command_line(stores: Stores) -> None:
    account = await new_account(stores)
    marked = await cli("health", "mark", str(account), "--colour", "red", "--reason", "close contact")
    assert marked.exit_code == 0, marked.output
    mark_id = re.search(r"mark ([0-9a-f-]{36}): red", marked.output)
    assert mark_id is not None
    recomputed = await cli("health", "recompute", str(account))
    assert recomputed.exit_code == 0, recomputed.output
    assert f"{account}: - -> red (v1)" in recomputed.output and "1 recomputed, 1 changed" in recomputed.output
    shown = await cli("health", "status", str(account))
    assert shown.exit_code == 0, shown.output
    assert re.search(r"colour\W+red\b", shown.output) and "manual_red" in shown.output
    unmarked = await cli("health", "unmark", mark_id.group(1))
    assert unmarked.exit_code == 0 and "cleared" in unmarked.output
    await run_due_jobs(stores)
    assert (await status_now(stores, account)).colour == "green"
    rules = await cli("health", "rules", "show")
    assert rules.exit_code == 0 and default_rules().version in rules.output
    bad = await cli("health", "mark", str(account), "--colour", "blue", "--reason", "x")
    assert bad.exit_code == 1 and "--colour" in bad.output
    unknown = await cli("health", "status", str(ids.new_id()))
    assert unknown.exit_code == 1 and "no such account" in unknown.output
