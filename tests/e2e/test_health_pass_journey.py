"""The health pass's whole journey, as issue "Done when" tells it, over HTTP against real processes (the
sandbox SMS gateway and population registry, the job worker that recomputes statuses from outbox jobs, the
API server) and the real `tongban` CLI:

an L2 citizen gets a green pass -> `tongban pass verify` accepts it offline (trust list and root as
downloaded from the API) and a checkpoint accepts it online -> the citizen visits a venue -> a
`tongban health import risk-areas` makes that venue's county a high-risk area since before the visit, and
the worker turns the citizen yellow -> the green pass is refused as revoked, offline with a fresh trust list
and online, while the new pass is yellow -> the citizen appeals -> staff approve with
`tongban health appeals approve` -> green again -> the history shows each change and the inbox says each.

The other e2e tests check the parts more closely (test_checkpoint_scan: credentials, 401, venue images,
appeal conflicts, logs; test_pass_cli: trust files and exit codes; test_health_pass: QR images, outages)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import clock
from health_code.status import INBOX_TITLE
from tests.support.auth import bearer
from tests.support.health_pass import eventually, new_checkpoint, verify_offline
from tests.support.stack import Stack, running_stack, verified_citizen

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A trust list signed at most every second, so a checkpoint's fresh download names a new revocation.
    with running_stack(
        tmp_path_factory.mktemp("journey"),
        only=["sms", "population"],
        workers=1,
        TONGBAN_HEALTH_TRUST_LIST_SECONDS="1",
    ) as running:
        yield running


def test_green_yellow_appeal_green(stack: Stack, tmp_path: Path) -> None:
    api = stack.url
    checkpoint = {"Authorization": f"Bearer {new_checkpoint(stack, '沈阳站 北广场 3号闸机')}"}
    _, _, citizen = verified_citizen(stack, "citizen-phone")
    _, _, owner = verified_citizen(stack, "owner-phone")

    def shown() -> dict[str, Any]:
        answer = httpx.get(api + "/v1/health-pass", headers=bearer(citizen))
        assert answer.status_code == 200, answer.text
        pass_view: dict[str, Any] = answer.json()
        return pass_view

    def scan(payload: str) -> dict[str, Any]:
        answer = httpx.post(api + "/v1/checkpoints/scans", json={"payload": payload}, headers=checkpoint)
        assert answer.status_code == 200, answer.text
        verdict: dict[str, Any] = answer.json()
        return verdict

    # 1. A green pass, verified offline by the CLI and online by the checkpoint.
    green = shown()
    assert green["colour"] == "green"
    code, offline = verify_offline(stack, green["payload"], tmp_path)
    assert (code, offline["valid"], offline["reason"]) == (0, True, "ok"), offline
    claims = offline["claims"]
    assert (claims["colour"], claims["pass_type"], claims["format"]) == ("green", "health", "tongban")
    assert claims["name"].endswith("*") and claims["number"].count("*") == 10
    online = scan(green["payload"])
    assert (online["valid"], online["reason"], online["colour"]) == (True, "ok", "green")

    # 2. The citizen scans the code of a venue in a county no list names yet: a trip, still green.
    region = f"65{secrets.randbelow(90) + 10:02d}{secrets.randbelow(90) + 10:02d}"
    venue = httpx.post(
        api + "/v1/venues",
        json={"name": "乌鲁木齐国际大巴扎", "region": region, "address": "解放南路 8 号"},
        headers=bearer(owner),
    )
    assert venue.status_code == 201, venue.text
    visit = httpx.post(
        api + "/v1/venue-visits", json={"venue_payload": venue.json()["payload"]}, headers=bearer(citizen)
    )
    assert visit.status_code == 201, visit.text
    assert visit.json()["region"] == region

    # 3. The county becomes a high-risk area from before the visit: the worker turns the citizen yellow.
    areas = tmp_path / "areas.csv"
    since = (clock.now() - timedelta(hours=1)).isoformat()
    areas.write_text(f"region_code,level,valid_from,valid_to\n{region},high,{since},\n")
    imported = stack.cli("health", "import", "risk-areas", str(areas))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    yellow = eventually(
        lambda: (view := shown())["colour"] == "yellow" and view, "the import turned it yellow"
    )
    assert yellow["payload"] != green["payload"]

    # 4. The green pass is refused as revoked: online ...
    refused = eventually(
        lambda: (verdict := scan(green["payload"]))["reason"] == "revoked" and verdict,
        "the checkpoint refuses the green pass",
    )
    assert (refused["valid"], refused["colour"]) == (False, "green")
    # ... and offline, once the published trust list names the revocation.
    eventually(
        lambda: any(
            entry.startswith(claims["rid"] + ".")
            for entry in httpx.get(api + "/v1/trust-list").json()["revocations"]
        ),
        "the trust list revokes the green pass",
    )
    code, offline = verify_offline(stack, green["payload"], tmp_path)
    assert (code, offline["valid"], offline["reason"]) == (1, False, "revoked"), offline
    # The new pass is yellow, and valid.
    code, offline = verify_offline(stack, yellow["payload"], tmp_path)
    assert (code, offline["reason"], offline["claims"]["colour"]) == (0, "ok", "yellow"), offline
    online = scan(yellow["payload"])
    assert (online["valid"], online["colour"]) == (True, "yellow")

    # 5. The citizen appeals; staff approve it from the CLI; the worker turns the citizen green again.
    appeal = httpx.post(
        api + "/v1/health-pass/appeals",
        json={"reason": "当天只在外围停车场，未进入市场"},
        headers=bearer(citizen),
    )
    assert appeal.status_code == 201, appeal.text
    approved = stack.cli(
        "health", "appeals", "approve", appeal.json()["id"], "--note", "经核实，未进入风险区域"
    )
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "approved" in approved.stdout
    again = eventually(
        lambda: (view := shown())["colour"] == "green" and view, "the approval turned it green"
    )
    online = scan(again["payload"])
    assert (online["valid"], online["reason"], online["colour"]) == (True, "ok", "green")
    eventually(
        lambda: scan(yellow["payload"])["reason"] == "revoked", "the checkpoint refuses the yellow pass"
    )

    # 6. The history shows every change, newest first; the inbox has a message for each change.
    history = httpx.get(api + "/v1/health-pass/history", headers=bearer(citizen))
    assert history.status_code == 200, history.text
    changes = history.json()["changes"]
    assert [c["colour"] for c in changes] == ["green", "yellow", "green"]
    assert [c["version"] for c in changes] == [3, 2, 1]
    assert changes[1]["rule_id"] == "high_risk_trip" and changes[0]["rule_id"] is None
    inbox = httpx.get(api + "/v1/me/messages", headers=bearer(citizen))
    assert inbox.status_code == 200, inbox.text
    messages = inbox.json()["messages"]  # newest first
    status_news = [m["body"] for m in messages if m["title"] == INBOX_TITLE]
    # The first status (green at issue) is no change, so the citizen hears only of the two that followed.
    assert len(status_news) == len(changes) - 1
    assert "绿码" in status_news[0] and "黄码" in status_news[1], status_news
    assert any("申诉" in m["title"] and "通过" in m["body"] for m in messages), messages
