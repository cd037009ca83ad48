"""Checkpoints, venue codes and appeals end to end, against real processes (sandbox SMS gateway and
population registry, the job worker, a two-process API) and the `tongban` CLI, over HTTP:

ops grants a citizen health_authority -> ops creates a checkpoint (credentials printed once) -> a citizen's
pass is scanned online (green, masked) -> a venue in a high-risk area is registered -> the citizen's visit
becomes a trip, the worker turns them yellow, and their old pass scans as revoked -> they appeal -> staff
approve -> green again, with the inbox telling each step.

And durability: scans answered by a server that is then killed with SIGKILL are all in the table."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from core import clock, db
from core.stores import Stores
from health_code import checkpoints, passes
from tests.integration.test_miniapps_support import make_person
from tests.support.auth import bearer
from tests.support.health_pass import eventually, new_checkpoint
from tests.support.server import running_server, tongban_env
from tests.support.stack import Stack, running_stack, verified_citizen

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("checkpoints"), only=["sms", "population"], workers=2
    ) as running:
        yield running


def test_from_checkpoint_to_appeal(stack: Stack, tmp_path: Path) -> None:
    api = stack.url
    # Ops: a health-authority officer, and a checkpoint whose credentials are printed once.
    officer_id, _, officer = verified_citizen(stack, "officer-phone", "136")
    granted = stack.cli("staff", "grant", officer_id, "health_authority")
    assert granted.returncode == 0, granted.stdout + granted.stderr
    token = new_checkpoint(stack, "沈阳北站 3号闸机")
    checkpoint = {"Authorization": f"Bearer {token}"}
    listed = stack.cli("checkpoints", "list")
    assert "沈阳北站 3号闸机" in listed.stdout and token.split(".")[1] not in listed.stdout

    # 1. A citizen shows their pass; the checkpoint scans it online.
    _, _, citizen = verified_citizen(stack, "citizen-phone", "136")
    shown = httpx.get(api + "/v1/health-pass", headers=bearer(citizen))
    assert shown.status_code == 200, shown.text
    green_pass = shown.json()["payload"]
    assert httpx.post(api + "/v1/checkpoints/scans", json={"payload": green_pass}).status_code == 401
    scanned = httpx.post(api + "/v1/checkpoints/scans", json={"payload": green_pass}, headers=checkpoint)
    assert scanned.status_code == 200, scanned.text
    answer = scanned.json()
    assert (answer["valid"], answer["reason"], answer["colour"], answer["pass_type"]) == (
        True,
        "ok",
        "green",
        "health",
    )
    assert answer["name"].endswith("*") and answer["number"].count("*") == 10

    # 2. A venue in a county that is a high-risk area from today.
    region = f"65{secrets.randbelow(90) + 10:02d}{secrets.randbelow(90) + 10:02d}"
    areas = tmp_path / "areas.csv"
    areas.write_text(
        f"region_code,level,valid_from,valid_to\n{region},high,{(clock.now() - timedelta(hours=1)).isoformat()},\n"
    )
    imported = stack.cli("health", "import", "risk-areas", str(areas))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    _, _, owner = verified_citizen(stack, "owner-phone", "136")
    venue = httpx.post(
        api + "/v1/venues",
        json={"name": "乌鲁木齐国际大巴扎", "region": region, "address": "解放南路 8 号"},
        headers=bearer(owner),
    )
    assert venue.status_code == 201, venue.text
    venue_code = venue.json()["payload"]
    image = httpx.get(
        api + f"/v1/venues/{venue.json()['venue']['id']}/code",
        params={"format": "png"},
        headers=bearer(owner),
    )
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

    # 3. The citizen scans the venue code: a trip; the worker turns them yellow.
    visit = httpx.post(api + "/v1/venue-visits", json={"venue_payload": venue_code}, headers=bearer(citizen))
    assert visit.status_code == 201, visit.text
    assert visit.json()["region"] == region

    def colour() -> str:
        answer = httpx.get(api + "/v1/health-pass", headers=bearer(citizen))
        assert answer.status_code == 200, answer.text
        return str(answer.json()["colour"])

    eventually(lambda: colour() == "yellow", "the visit turned the pass yellow")
    # The green pass shown before is revoked on every API process (both answer in turn).
    for _ in range(4):
        old = eventually(
            lambda: (
                (
                    r := httpx.post(
                        api + "/v1/checkpoints/scans", json={"payload": green_pass}, headers=checkpoint
                    ).json()
                )["reason"]
                == "revoked"
                and r
            ),
            "the old pass scans as revoked",
        )
        assert old["valid"] is False and old["colour"] == "green"

    # 4. The citizen appeals; one at a time.
    appeal = httpx.post(
        api + "/v1/health-pass/appeals",
        json={"reason": "当天只在外围停车场，未进入市场"},
        headers=bearer(citizen),
    )
    assert appeal.status_code == 201, appeal.text
    again = httpx.post(api + "/v1/health-pass/appeals", json={"reason": "再次申请"}, headers=bearer(citizen))
    assert again.status_code == 409
    refused = httpx.get(api + "/v1/health/appeals", headers=bearer(citizen))
    assert refused.status_code == 403

    # 5. Staff approve; the worker turns the citizen green again.
    queue = httpx.get(api + "/v1/health/appeals", params={"status": "pending"}, headers=bearer(officer))
    assert queue.status_code == 200 and appeal.json()["id"] in [a["id"] for a in queue.json()]
    decided = httpx.post(
        api + f"/v1/health/appeals/{appeal.json()['id']}/decision",
        json={"approve": True, "note": "经核实，未进入风险区域"},
        headers=bearer(officer),
    )
    assert decided.status_code == 200, decided.text
    assert decided.json()["status"] == "approved" and decided.json()["decided_by"] == officer_id
    eventually(lambda: colour() == "green", "the approved appeal turned the pass green")
    final = httpx.get(api + "/v1/health-pass", headers=bearer(citizen)).json()["payload"]
    rescanned = httpx.post(api + "/v1/checkpoints/scans", json={"payload": final}, headers=checkpoint).json()
    assert (rescanned["valid"], rescanned["colour"]) == (True, "green")
    inbox = httpx.get(api + "/v1/me/messages", headers=bearer(citizen)).json()["messages"]
    bodies = " ".join(message["body"] for message in inbox)
    assert "黄码" in bodies and "申诉已通过" in bodies and "绿码" in bodies
    mine = httpx.get(api + "/v1/health-pass/appeals", headers=bearer(citizen)).json()
    assert [a["status"] for a in mine] == ["approved"]
    # Neither a checkpoint's secret nor a pass reaches any log.
    logs = stack.logs()
    assert token.split(".")[1] not in logs and green_pass[4:60] not in logs


async def test_scans_answered_survive_a_sigkill(tmp_path: Path, stores: Stores) -> None:
    """Scans stream in from many connections; the moment 150 have been answered, the server process is
    killed (SIGKILL: no shutdown, no flush). Every scan it answered is in the table."""
    async with db.connection(stores.pool, stores.settings) as conn:
        made = await checkpoints.create_checkpoint(conn, "断电测试闸机")
    person = await make_person(stores)
    payload = (await passes.show_pass(stores, person.account_id)).view.payload
    headers = {"Authorization": made.bearer}
    answered: list[str] = []
    failed = 0
    # uvicorn with one worker serves in the process we start: the kill hits the process holding the rows.
    with running_server(tmp_path, tongban_env(), extra_args=["--server", "uvicorn"]) as server:
        stop = asyncio.Event()
        base = clock.now() - timedelta(seconds=60)  # scans of the last minute: the pass was valid then

        async def scanner(lane: int, client: httpx.AsyncClient) -> None:
            nonlocal failed
            sequence = 0
            while not stop.is_set():
                sequence += 1
                # A distinct scanned_at per scan names it in the table.
                at = (base + timedelta(microseconds=lane * 1_000_000 + sequence)).isoformat()
                try:
                    answer = await client.post(
                        "/v1/checkpoints/scans", json={"payload": payload, "scanned_at": at}
                    )
                except httpx.HTTPError:
                    failed += 1
                    return
                if answer.status_code != 200:
                    failed += 1
                    return
                assert answer.json()["valid"] is True
                answered.append(at)
                if len(answered) >= 150 and not stop.is_set():
                    server.proc.kill()  # at once, from the same loop that just read the answer
                    stop.set()

        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(
            base_url=server.base_url, headers=headers, limits=limits, timeout=10
        ) as client:
            await asyncio.gather(*(scanner(lane, client) for lane in range(32)))
        server.proc.wait(timeout=10)
        assert server.proc.returncode == -9
    async with db.connection(stores.pool, stores.settings) as conn:
        rows = await conn.fetch("SELECT scanned_at FROM scans WHERE checkpoint_id = $1", made.checkpoint.id)
    stored = {row["scanned_at"].isoformat() for row in rows}
    assert len(answered) >= 150
    assert set(answered) <= stored, f"{len(set(answered) - stored)} answered scans lost"
    assert failed > 0  # requests were in flight when the process died
