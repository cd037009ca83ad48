"""PIPL rights over HTTP against real processes (sandbox SMS gateway, job worker, two-process API server):
the export as an attachment with its rate limit, and deletion with a short grace period: a cancelled
request's job does nothing; a pending one is erased by the worker when due, the token stops working and the
phone registers again as a new account."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.auth import bearer, login, new_phone
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

GRACE_SECONDS = 4.32  # TONGBAN_AUTH_DELETION_GRACE_DAYS below


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("rights")
    with running_stack(
        tmp,
        only=["sms"],
        TONGBAN_AUTH_DELETION_GRACE_DAYS=str(GRACE_SECONDS / 86400),
        TONGBAN_AUTH_SMS_PER_PHONE_MINUTE="3",
        TONGBAN_JOBS_RELAY_POLL="0.2",
    ) as running:
        yield running


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_export_is_an_attachment_and_rate_limited(stack: Stack) -> None:
    phone = new_phone("136")
    tokens = login(stack.url, stack.sms, phone)
    answers = []
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:  # both processes
        for _ in range(6):
            answers.append(client.get(stack.url + "/v1/me/export", headers=bearer(tokens["access_token"])))
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    first = answers[0]
    assert first.headers["content-disposition"].startswith('attachment; filename="tongban-personal-data-')
    data = first.json()
    assert data["account"]["phone"] == phone and data["account"]["id"] == tokens["account_id"]
    assert [s["device_id"] for s in data["sessions"]] == ["test-phone"]
    assert int(answers[5].headers["retry-after"]) > 0 and answers[5].json()["code"] == "rate_limited"


def test_cancelled_deletion_does_nothing_and_a_due_one_is_erased_by_the_worker(stack: Stack) -> None:
    phone = new_phone("136")
    tokens = login(stack.url, stack.sms, phone)
    headers = bearer(tokens["access_token"])

    requested = httpx.delete(stack.url + "/v1/me", headers=headers)
    assert requested.status_code == 202 and requested.json()["state"] == "pending"
    assert requested.json()["due_at"]
    cancelled = httpx.delete(stack.url + "/v1/me/deletion", headers=headers)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

    # The cancelled request's job runs when due and changes nothing.
    def first_job_done() -> bool:
        return any(
            "auth.erase_account" in line and "job.done" in line for line in stack.worker.log().splitlines()
        )

    time.sleep(GRACE_SECONDS)
    assert wait_for(first_job_done, 15), stack.worker.log()
    assert httpx.get(stack.url + "/v1/me/deletion", headers=headers).json()["state"] == "cancelled"
    assert httpx.get(stack.url + "/v1/me/sessions", headers=headers).status_code == 200

    # A new request: erased by the worker once due; the token then fails on every process.
    again = httpx.delete(stack.url + "/v1/me", headers=headers)
    assert again.status_code == 202 and again.json()["state"] == "pending"

    def token_refused() -> bool:
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
            codes = {client.get(stack.url + "/v1/me/sessions", headers=headers).status_code for _ in range(6)}
        return codes == {401}

    assert wait_for(token_refused, GRACE_SECONDS + 20), stack.worker.log()
    refresh = httpx.post(stack.url + "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refresh.status_code == 401

    # The phone is free: logging in with it makes a new account with nothing of the old one.
    fresh = login(stack.url, stack.sms, phone)
    assert fresh["account_id"] != tokens["account_id"]
    export = httpx.get(stack.url + "/v1/me/export", headers=bearer(fresh["access_token"])).json()
    assert export["account"]["phone"] == phone
    assert export["events"][0]["kind"] == "registered"
    assert export["deletion"]["state"] == "none"

    logs = stack.logs()
    assert phone not in logs and "Traceback" not in logs
