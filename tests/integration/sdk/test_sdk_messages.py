"""Subscribe messages: templates (who may manage them), one-time subscriptions, subscribeMessage.send with
WeChat's errcodes, and delivery by the outbox job into the citizen's inbox and the push adapter."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest

from core import jobs
from core.stores import Stores
from miniapps import messages, sdk
from tests.integration.sdk.support import (
    Citizen,
    MiniApp,
    app_token,
    citizen,
    openid_of,
    released_miniapp,
)
from tests.integration.test_miniapps_support import ApiClient, Person, add_member, make_person, make_staff

KEYWORDS = [
    {"key": "thing1", "label": "办理事项"},
    {"key": "phrase2", "label": "办理结果"},
    {"key": "time3", "label": "办理时间"},
]
DATA = {
    "thing1": {"value": "养老保险待遇资格认证"},
    "phrase2": {"value": "已通过"},
    "time3": {"value": "2026年11月22日 10:30"},
}


async def create_template(api: ApiClient, app: MiniApp, by: Person | None = None, **body: Any) -> Any:
    return await api.post(
        f"/v1/miniapps/{app.appid}/templates",
        json={"title": "办理进度通知", "keywords": KEYWORDS, **body},
        headers=(by or app.org.admin).auth,
    )


async def template(api: ApiClient, app: MiniApp) -> str:
    created = await create_template(api, app)
    assert created.status_code == 201, created.text
    template_id: str = created.json()["template_id"]
    return template_id


async def subscribe(api: ApiClient, person: Citizen, app: MiniApp, *template_ids: str) -> Any:
    return await api.post(
        f"/v1/miniapps/{app.appid}/subscriptions",
        json={"template_ids": list(template_ids)},
        headers=person.auth,
    )


async def send(api: ApiClient, token: str, **body: Any) -> dict[str, Any]:
    answer = await api.post("/cgi-bin/message/subscribe/send", params={"access_token": token}, json=body)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def pending_jobs(stores: Stores, account_id: UUID) -> list[messages.DeliverMessage]:
    rows = await stores.pool.fetch(
        """SELECT o.payload FROM outbox o JOIN miniapp_messages m ON o.job_id = $1 || '.' || m.id::text
           WHERE o.job_name = $1 AND m.account_id = $2 ORDER BY o.id""",
        messages.DELIVER_JOB,
        account_id,
    )
    decoded = [jobs.decode_payload(row["payload"], messages.DeliverMessage) for row in rows]
    return [payload for payload in decoded if isinstance(payload, messages.DeliverMessage)]


async def run_job(stores: Stores, payload: messages.DeliverMessage) -> None:
    """The job as the worker runs it: looked up by name."""
    spec = jobs.registered_jobs()[messages.DELIVER_JOB]
    await spec.func(stores, payload)


async def test_who_may_manage_templates(api: ApiClient, stores: Stores, app: MiniApp) -> None:
    created = await create_template(api, app)
    assert created.status_code == 201, created.text
    view = created.json()
    assert set(view) == {"template_id", "appid", "title", "keywords", "created_by", "created_at"}
    assert len(view["template_id"]) == 43 and view["keywords"] == KEYWORDS and view["appid"] == app.appid
    developer, operator = await make_person(stores), await make_person(stores)
    await add_member(api, app.org, developer, "developer")
    await add_member(api, app.org, operator, "operator")
    assert (await create_template(api, app, developer)).status_code == 201
    refused = await create_template(api, app, operator)
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_org_role"
    stranger = await make_person(stores)
    assert (await create_template(api, app, stranger)).status_code == 404
    platform_admin = await make_staff(stores, "platform_admin")
    assert (await create_template(api, app, platform_admin)).status_code == 201
    listed = await api.get(f"/v1/miniapps/{app.appid}/templates", headers=operator.auth)
    assert listed.status_code == 200 and view["template_id"] in [t["template_id"] for t in listed.json()]
    assert (await api.get(f"/v1/miniapps/{app.appid}/templates", headers=stranger.auth)).status_code == 404
    deleted = await api.delete(
        f"/v1/miniapps/{app.appid}/templates/{view['template_id']}", headers=developer.auth
    )
    assert deleted.status_code == 204
    again = await api.delete(
        f"/v1/miniapps/{app.appid}/templates/{view['template_id']}", headers=developer.auth
    )
    assert again.status_code == 404 and again.json()["code"] == "template_not_found"


@pytest.mark.parametrize(
    ("keywords", "status"),
    [
        ([{"key": "thing1", "label": "a"}, {"key": "thing1", "label": "b"}], 422),
        ([{"key": "foo1", "label": "a"}], 400),
        ([{"key": "thing", "label": "a"}], 400),
        ([], 400),
    ],
)
async def test_bad_templates_are_refused(
    api: ApiClient, app: MiniApp, keywords: list[dict[str, str]], status: int
) -> None:
    answer = await create_template(api, app, keywords=keywords)
    assert answer.status_code == status, answer.text


async def test_subscriptions_accumulate_and_only_for_the_apps_templates(
    api: ApiClient, stores: Stores, app: MiniApp
) -> None:
    person = await citizen(stores)
    first = await template(api, app)
    accepted = await subscribe(api, person, app, first)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == [{"template_id": first, "title": "办理进度通知", "remaining": 1}]
    assert (await subscribe(api, person, app, first, first)).json()[0]["remaining"] == 2
    other = await released_miniapp(api, stores)
    foreign = await template(api, other)
    refused = await subscribe(api, person, app, first, foreign)
    assert refused.status_code == 422 and refused.json()["field"] == "template_ids[1]"
    assert (await api.get(f"/v1/miniapps/{app.appid}/subscriptions", headers=person.auth)).json()[0][
        "remaining"
    ] == 2
    hidden = await api.post(
        "/v1/miniapps/tb0000000000000000/subscriptions", json={"template_ids": [first]}, headers=person.auth
    )
    assert hidden.status_code == 404


async def test_send_needs_an_acceptance_and_uses_one_up(
    api: ApiClient, stores: Stores, app: MiniApp, token: str
) -> None:
    person = await citizen(stores)
    openid = (await openid_of(api, app, person))["openid"]
    template_id = await template(api, app)
    refused = await send(api, token, touser=openid, template_id=template_id, data=DATA)
    assert set(refused) == {"errcode", "errmsg"} and refused["errcode"] == sdk.USER_REFUSED
    assert refused["errmsg"].startswith("user refuse to accept the msg")
    await subscribe(api, person, app, template_id)
    sent = await send(
        api, token, touser=openid, template_id=template_id, page="pages/index?id=1", data=DATA, lang="zh_CN"
    )
    assert sent == {"errcode": 0, "errmsg": "ok"}
    assert (await send(api, token, touser=openid, template_id=template_id, data=DATA))[
        "errcode"
    ] == sdk.USER_REFUSED
    assert len(await pending_jobs(stores, person.account_id)) == 1


async def test_send_errcodes_leave_the_acceptance_unused(
    api: ApiClient, stores: Stores, app: MiniApp, token: str
) -> None:
    person = await citizen(stores)
    openid = (await openid_of(api, app, person))["openid"]
    template_id = await template(api, app)
    await subscribe(api, person, app, template_id)
    other = await released_miniapp(api, stores)
    foreign_openid = (await openid_of(api, other, person))["openid"]
    foreign_template = await template(api, other)
    too_long = {**DATA, "thing1": {"value": "一" * 21}}
    cases: list[tuple[dict[str, Any], int]] = [
        ({"template_id": template_id, "data": DATA}, sdk.INVALID_OPENID),
        ({"touser": "o" * 28, "template_id": template_id, "data": DATA}, sdk.INVALID_OPENID),
        ({"touser": foreign_openid, "template_id": template_id, "data": DATA}, sdk.INVALID_OPENID),
        ({"touser": openid, "data": DATA}, sdk.INVALID_TEMPLATE),
        ({"touser": openid, "template_id": "x" * 43, "data": DATA}, sdk.INVALID_TEMPLATE),
        ({"touser": openid, "template_id": foreign_template, "data": DATA}, sdk.INVALID_TEMPLATE),
        ({"touser": openid, "template_id": template_id}, sdk.ARGUMENT_INVALID),
        ({"touser": openid, "template_id": template_id, "data": too_long}, sdk.ARGUMENT_INVALID),
        ({"touser": openid, "template_id": template_id, "data": {**DATA, "thing9": {"value": "x"}}}, 47003),
        ({"touser": openid, "template_id": template_id, "data": {"thing1": DATA["thing1"]}}, 47003),
        ({"touser": openid, "template_id": template_id, "data": {**DATA, "phrase2": "已通过"}}, 47003),
        ({"touser": openid, "template_id": template_id, "data": DATA, "page": "../../etc"}, sdk.INVALID_PAGE),
        ({"touser": openid, "template_id": template_id, "data": DATA, "miniprogram_state": "x"}, 47003),
        ({"touser": openid, "template_id": template_id, "data": DATA, "lang": "fr_FR"}, 47003),
    ]
    for body, code in cases:
        answer = await send(api, token, **body)
        assert answer["errcode"] == code, (body, answer)
    assert (await send(api, token, touser=openid, template_id=template_id, data=DATA))["errcode"] == 0
    # The other app holds the same citizen's openid for itself, and its own acceptance is needed there.
    other_token = await app_token(api, other)
    crossed = await send(api, other_token, touser=openid, template_id=foreign_template, data=DATA)
    assert crossed["errcode"] == sdk.INVALID_OPENID


async def test_racing_sends_share_one_acceptance(
    api: ApiClient, stores: Stores, app: MiniApp, token: str
) -> None:
    person = await citizen(stores)
    openid = (await openid_of(api, app, person))["openid"]
    template_id = await template(api, app)
    await subscribe(api, person, app, template_id)
    results = await asyncio.gather(
        *(send(api, token, touser=openid, template_id=template_id, data=DATA) for _ in range(5))
    )
    assert sorted(result["errcode"] for result in results) == [0, 43101, 43101, 43101, 43101]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[UUID, UUID, str]] = []

    async def notify(self, account_id: UUID, *, message_id: UUID, source: str, title: str) -> None:
        self.calls.append((account_id, message_id, source))


class BrokenPush:
    async def notify(self, account_id: UUID, *, message_id: UUID, source: str, title: str) -> None:
        raise ConnectionError("push service down")


async def test_the_job_delivers_into_the_inbox_once_and_pushes(
    api: ApiClient, stores: Stores, app: MiniApp, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    person = await citizen(stores)
    openid = (await openid_of(api, app, person))["openid"]
    template_id = await template(api, app)
    await subscribe(api, person, app, template_id)
    assert (await send(api, token, touser=openid, template_id=template_id, data=DATA))["errcode"] == 0
    [payload] = await pending_jobs(stores, person.account_id)
    recorder = Recorder()
    monkeypatch.setattr(messages, "PUSH", recorder)
    assert (await api.get("/v1/me/messages", headers=person.auth)).json()["messages"] == []
    await run_job(stores, payload)
    inbox = (await api.get("/v1/me/messages", headers=person.auth)).json()["messages"]
    assert [(m["title"], m["source"]) for m in inbox] == [("办理进度通知", f"miniapp.{app.appid}")]
    assert (
        inbox[0]["body"] == "办理事项：养老保险待遇资格认证\n办理结果：已通过\n办理时间：2026年11月22日 10:30"
    )
    assert recorder.calls == [(person.account_id, UUID(inbox[0]["id"]), f"miniapp.{app.appid}")]
    # At-least-once delivery: the same job again adds nothing.
    await run_job(stores, payload)
    assert len((await api.get("/v1/me/messages", headers=person.auth)).json()["messages"]) == 1
    assert len(recorder.calls) == 1


async def test_a_failing_push_service_does_not_lose_the_message(
    api: ApiClient, stores: Stores, app: MiniApp, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    person = await citizen(stores)
    openid = (await openid_of(api, app, person))["openid"]
    template_id = await template(api, app)
    await subscribe(api, person, app, template_id)
    assert (await send(api, token, touser=openid, template_id=template_id, data=DATA))["errcode"] == 0
    [payload] = await pending_jobs(stores, person.account_id)
    monkeypatch.setattr(messages, "PUSH", BrokenPush())
    await run_job(stores, payload)
    assert len((await api.get("/v1/me/messages", headers=person.auth)).json()["messages"]) == 1


def test_render_bounds_values_by_keyword_kind() -> None:
    keywords = [messages.Keyword(key="name1", label="姓名"), messages.Keyword(key="phrase2", label="状态")]
    assert messages.render(keywords, {"name1": {"value": "张三"}, "phrase2": {"value": "已办结"}}) == (
        "姓名：张三\n状态：已办结"
    )
    with pytest.raises(sdk.SdkError) as refused:
        messages.render(keywords, {"name1": {"value": "张" * 11}, "phrase2": {"value": "已办结"}})
    assert refused.value.errcode == sdk.ARGUMENT_INVALID and "name1" in refused.value.errmsg
    with pytest.raises(sdk.SdkError):
        messages.render(keywords, {"name1": {"value": "张三"}, "phrase2": {"value": "  "}})
    with pytest.raises(sdk.SdkError):
        messages.render(keywords, ["not", "an", "object"])
