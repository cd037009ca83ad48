"""Appeals over the API (the app in process) and the `tongban health appeals` CLI, with the real PostgreSQL
and Redis: one pending appeal per citizen, staff only (health_authority) list and decide, an approval clears
a red status through the status engine (outcome, recompute, history, inbox), a rejection needs a reason and
changes nothing, and a decision is final."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from uuid import UUID

from click.testing import Result
from litestar import Litestar
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from core import db
from core.errors import Conflict
from core.stores import Stores
from health_code import appeals, status
from health_code.jobs import RECOMPUTE_JOB
from miniapps import inbox
from scripts.cli import app
from tests.integration.test_miniapps_support import Person, make_person, make_staff

Client = AsyncTestClient[Litestar]


async def file(client: Client, person: Person, reason: str = "我已完成隔离，申请复核") -> Any:
    return await client.post("/v1/health-pass/appeals", json={"reason": reason}, headers=person.auth)


async def red(stores: Stores, person: Person) -> None:
    """A red status from a manual mark (a rule that an appeal clears)."""
    async with db.connection(stores.pool, stores.settings) as conn:
        await status.add_manual_mark(conn, person.account_id, colour="red", reason="密接", by="test")
    await status.recompute(stores, [person.account_id])


async def colour(stores: Stores, person: Person) -> str:
    async with db.connection(stores.pool, stores.settings) as conn:
        return (await status.current_status(conn, person.account_id)).colour


async def messages(stores: Stores, person: Person) -> list[tuple[str, str]]:
    async with db.connection(stores.pool, stores.settings) as conn:
        page = await inbox.list_messages(conn, person.account_id, limit=100)
    return [(m.title, m.body) for m in page.messages]


async def appeal_jobs(stores: Stores, appeal_id: str) -> int:
    async with db.connection(stores.pool, stores.settings) as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE job_name = $1 AND job_id LIKE $2",
            RECOMPUTE_JOB,
            f"health.recompute:appeal:{appeal_id}%",
        )
    return count


async def test_a_citizen_has_one_pending_appeal_at_a_time(client: Client, stores: Stores) -> None:
    assert (await client.post("/v1/health-pass/appeals", json={"reason": "x"})).status_code == 401
    l1 = await make_person(stores, level=1)
    assert (await file(client, l1)).status_code == 403
    person = await make_person(stores)
    for bad in ({"reason": ""}, {}, {"reason": "x" * 1001}, {"reason": "x", "extra": 1}):
        answer = await client.post("/v1/health-pass/appeals", json=bad, headers=person.auth)
        assert answer.status_code == 400, bad
    blank = await file(client, person, "   ")
    assert blank.status_code == 422 and blank.json()["field"] == "reason"

    first = await file(client, person)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "pending" and body["account_id"] == str(person.account_id)
    assert body["decided_at"] is None and body["decided_by"] is None
    again = await file(client, person, "再次申请")
    assert again.status_code == 409 and again.json()["code"] == "appeal_pending"
    # Filed at the same moment twice (two connections): still one.
    person2 = await make_person(stores)
    both = await asyncio.gather(
        appeals.file_appeal(stores, person2.account_id, "一"),
        appeals.file_appeal(stores, person2.account_id, "二"),
        return_exceptions=True,
    )
    assert (
        sum(isinstance(r, Conflict) for r in both) == 1
        and sum(isinstance(r, appeals.Appeal) for r in both) == 1
    )
    mine = await client.get("/v1/health-pass/appeals", headers=person.auth)
    assert [a["id"] for a in mine.json()] == [body["id"]]


async def test_only_health_authority_staff_see_and_decide(client: Client, stores: Stores) -> None:
    person = await make_person(stores)
    filed = (await file(client, person)).json()
    reviewer = await make_staff(stores, "reviewer")
    for who in ({}, person.auth, reviewer.auth):
        listed = await client.get("/v1/health/appeals", headers=who)
        decided = await client.post(
            f"/v1/health/appeals/{filed['id']}/decision", json={"approve": True}, headers=who
        )
        assert listed.status_code == decided.status_code == (401 if not who else 403)
    officer = await make_staff(stores, "health_authority")
    queue = await client.get(
        "/v1/health/appeals", params={"status": "pending", "limit": 200}, headers=officer.auth
    )
    assert queue.status_code == 200
    assert filed["id"] in [a["id"] for a in queue.json()]
    assert (
        await client.get("/v1/health/appeals", params={"status": "nope"}, headers=officer.auth)
    ).status_code == 400


async def test_an_approved_appeal_clears_a_red_status(client: Client, stores: Stores) -> None:
    person = await make_person(stores)
    await red(stores, person)
    assert await colour(stores, person) == "red"
    filed = (await file(client, person)).json()
    officer = await make_staff(stores, "health_authority")
    answer = await client.post(
        f"/v1/health/appeals/{filed['id']}/decision",
        json={"approve": True, "note": "核实无误"},
        headers=officer.auth,
    )
    assert answer.status_code == 200, answer.text
    decided = answer.json()
    assert decided["status"] == "approved" and decided["decided_by"] == str(officer.account_id)
    assert decided["decision_note"] == "核实无误" and decided["decided_at"] is not None
    # The status engine has the outcome and a recompute is on its way through the outbox.
    async with db.connection(stores.pool, stores.settings) as conn:
        outcome = await conn.fetchrow(
            "SELECT * FROM health_appeal_outcomes WHERE appeal_id = $1", UUID(filed["id"])
        )
    assert outcome is not None and outcome["decision"] == "approved"
    assert outcome["decided_by"] == f"account:{officer.account_id}"
    assert await appeal_jobs(stores, filed["id"]) == 1
    assert ("健康码申诉结果", "您的健康码申诉已通过，健康码将随之更新。说明：核实无误") in await messages(
        stores, person
    )
    # What the worker does with the job: green again, with history and its own message.
    await status.recompute(stores, [person.account_id])
    assert await colour(stores, person) == "green"
    async with db.connection(stores.pool, stores.settings) as conn:
        history = [c.colour for c in await status.status_history(conn, person.account_id)]
    assert history[:2] == ["green", "red"]
    assert any("绿码" in body for _, body in await messages(stores, person))
    # Final: a second decision is refused, and a new appeal may be filed.
    again = await client.post(
        f"/v1/health/appeals/{filed['id']}/decision",
        json={"approve": False, "note": "x"},
        headers=officer.auth,
    )
    assert again.status_code == 409 and again.json()["code"] == "appeal_decided"
    assert (await file(client, person)).status_code == 201


async def test_a_rejection_needs_a_reason_and_changes_nothing(client: Client, stores: Stores) -> None:
    person = await make_person(stores)
    await red(stores, person)
    filed = (await file(client, person)).json()
    officer = await make_staff(stores, "health_authority")
    url = f"/v1/health/appeals/{filed['id']}/decision"
    no_note = await client.post(url, json={"approve": False}, headers=officer.auth)
    assert no_note.status_code == 422 and no_note.json()["field"] == "note"
    answer = await client.post(url, json={"approve": False, "note": "检测结果属实"}, headers=officer.auth)
    assert answer.status_code == 200 and answer.json()["status"] == "rejected"
    assert await appeal_jobs(stores, filed["id"]) == 0
    await status.recompute(stores, [person.account_id])
    assert await colour(stores, person) == "red"
    assert ("健康码申诉结果", "您的健康码申诉未通过。说明：检测结果属实") in await messages(stores, person)
    unknown = await client.post(
        "/v1/health/appeals/00000000-0000-7000-8000-000000000000/decision",
        json={"approve": True},
        headers=officer.auth,
    )
    assert unknown.status_code == 404 and unknown.json()["code"] == "appeal_not_found"


def cli(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    return result


async def test_the_cli_lists_approves_and_rejects(client: Client, stores: Stores) -> None:
    one, two = await make_person(stores), await make_person(stores)
    await red(stores, one)
    first = (await file(client, one, "CLI 申诉一")).json()
    second = (await file(client, two, "CLI 申诉二")).json()

    listed = await asyncio.to_thread(cli, "health", "appeals", "list")
    assert listed.exit_code == 0, listed.output
    assert first["id"] in listed.output and second["id"] in listed.output and "CLI 申诉一" in listed.output

    approved = await asyncio.to_thread(cli, "health", "appeals", "approve", first["id"], "--note", "同意")
    assert approved.exit_code == 0, approved.output
    assert re.search(rf"appeal {first['id']}: approved", approved.output)
    refused = await asyncio.to_thread(cli, "health", "appeals", "reject", second["id"])
    assert refused.exit_code != 0  # --note is required
    rejected = await asyncio.to_thread(
        cli, "health", "appeals", "reject", second["id"], "--note", "不符合条件"
    )
    assert rejected.exit_code == 0 and "rejected" in rejected.output
    twice = await asyncio.to_thread(cli, "health", "appeals", "approve", second["id"])
    assert twice.exit_code == 1 and "already rejected" in twice.output

    async with db.connection(stores.pool, stores.settings) as conn:
        outcome = await conn.fetchrow(
            "SELECT * FROM health_appeal_outcomes WHERE appeal_id = $1", UUID(first["id"])
        )
        row = await conn.fetchrow("SELECT decided_by, status FROM appeals WHERE id = $1", UUID(first["id"]))
    assert outcome is not None and outcome["decided_by"].startswith("ops:")
    assert row is not None and row["status"] == "approved" and row["decided_by"] is None
    done = await asyncio.to_thread(cli, "health", "appeals", "list", "--status", "all")
    assert first["id"] in done.output and second["id"] in done.output
    pending = await asyncio.to_thread(cli, "health", "appeals", "list")
    assert first["id"] not in pending.output and second["id"] not in pending.output
    assert (await asyncio.to_thread(cli, "health", "appeals", "list", "--status", "odd")).exit_code == 1
