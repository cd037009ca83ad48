"""Subscribe messages, as WeChat's subscribeMessage: templates per app, one-time subscriptions, sending.

- Templates: a title and its keywords ("thing1: 办理事项", "time2: 办理时间", ...), created by the app's
  organisation admins and developers, or by platform admins. A keyword's key starts with its kind (thing,
  name, phrase, time, ...), which bounds the length of the values sent with it, as WeChat does.
- Subscriptions: a citizen accepts templates of an app their catalog view shows; each acceptance lets the
  app send one message with that template (one-time subscription), up to MAX_PENDING per template.
- Sending (POST /cgi-bin/message/subscribe/send): to an openid of the app that has a pending acceptance,
  else 43101. One transaction uses the acceptance up, records the message and writes the outbox job, so a
  message is sent exactly when its acceptance was used. The job (miniapps.deliver_message) puts it into the
  citizen's inbox (miniapps.inbox.deliver) and then notifies the phone through the push adapter.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Annotated, Any, Protocol
from uuid import UUID

import msgspec
import structlog
from msgspec import Meta

from core import ids
from core.db import connection, transaction
from core.errors import Conflict, InvalidInput, NotFound
from core.jobs import enqueue_in_tx, job
from core.stores import Stores
from miniapps import inbox, registry, repository, sdk
from miniapps.models import EDIT_APPS, READ, Actor
from miniapps.sdk import SdkError

log = structlog.get_logger(__name__)

DELIVER_JOB = "miniapps.deliver_message"
MAX_TEMPLATES = 50
MAX_PENDING = 50
MAX_PAGE = 128
STATES = ("developer", "trial", "formal")
LANGS = ("zh_CN", "en_US", "zh_HK", "zh_TW")
# Longest value per keyword kind (WeChat's rules, in characters).
KIND_LIMITS: dict[str, int] = {
    "thing": 20,
    "number": 32,
    "letter": 32,
    "symbol": 5,
    "character_string": 32,
    "time": 32,
    "date": 32,
    "amount": 32,
    "phone_number": 17,
    "car_number": 8,
    "name": 10,
    "phrase": 5,
}
_KEY = re.compile(r"^(" + "|".join(sorted(KIND_LIMITS, key=len, reverse=True)) + r")([1-9][0-9]?)$")
_PAGE = re.compile(r"^/?[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*(\?[\x21-\x7e]*)?$")

TemplateId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{43}$")]


class Keyword(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[str, Meta(pattern=_KEY.pattern, description="kind + number, e.g. thing1, time2")]
    label: Annotated[str, Meta(min_length=1, max_length=20)]


class CreateTemplate(msgspec.Struct, forbid_unknown_fields=True):
    title: Annotated[str, Meta(min_length=1, max_length=40)]
    keywords: Annotated[list[Keyword], Meta(min_length=1, max_length=10)]


class TemplateView(msgspec.Struct):
    template_id: str
    appid: str
    title: str
    keywords: list[Keyword]
    created_by: str
    created_at: datetime


class Subscribe(msgspec.Struct, forbid_unknown_fields=True):
    # wx.requestSubscribeMessage asks for up to 3 templates at a time.
    template_ids: Annotated[list[TemplateId], Meta(min_length=1, max_length=3)]


class SubscriptionView(msgspec.Struct):
    template_id: str
    title: str
    remaining: int


class SendRequest(msgspec.Struct):
    """subscribeMessage.send's body. Loosely typed on purpose: a bad field is WeChat's errcode, not a
    decoding error."""

    touser: Any = None
    template_id: Any = None
    page: Any = None
    data: Any = None
    miniprogram_state: Any = None
    lang: Any = None


class DeliverMessage(msgspec.Struct, frozen=True):
    message_id: UUID


# --- the push adapter ---------------------------------------------------------------------------------------


class PushProvider(Protocol):
    async def notify(self, account_id: UUID, *, message_id: UUID, source: str, title: str) -> None:
        """Tell the citizen's phone that a message is waiting (the inbox holds the message itself)."""


class LoggingPush:
    """No push service attached: log that a notification would go out (ids only, never the text)."""

    async def notify(self, account_id: UUID, *, message_id: UUID, source: str, title: str) -> None:
        log.info("miniapps.push", account=str(account_id), message=str(message_id), source=source)


PUSH: PushProvider = LoggingPush()


# --- templates ----------------------------------------------------------------------------------------------


def _template_view(row: Any) -> TemplateView:
    return TemplateView(
        template_id=row["template_id"],
        appid=row["appid"],
        title=row["title"],
        keywords=msgspec.json.decode(row["keywords"], type=list[Keyword]),
        created_by=row["created_by"],
        created_at=row["created_at"],
    )


async def _manage(stores: Stores, conn: Any, appid: str, account_id: UUID, allowed: frozenset[str]) -> UUID:
    """The app's organisation when the caller may manage its templates (platform admins may, whatever
    organisation): 404 for non-members, 403 insufficient_org_role for other roles."""
    if "platform_admin" in await registry.staff_roles(stores, account_id):
        app = await repository.app_by_id(conn, appid)
        if app is None:
            raise NotFound("no such mini-app", code="app_not_found")
    else:
        app = await registry.app_for_member(conn, appid, account_id, allowed)
    organisation_id: UUID = app["organisation_id"]
    return organisation_id


async def create_template(stores: Stores, actor: Actor, appid: str, request: CreateTemplate) -> TemplateView:
    assert actor.account_id is not None
    keys = [keyword.key for keyword in request.keywords]
    if len(set(keys)) != len(keys):
        raise InvalidInput("keywords: each key once", field="keywords", code="duplicate_keyword")
    title = request.title.strip()
    if not title:
        raise InvalidInput("title: must not be blank", field="title")
    async with transaction(stores.pool, stores.settings) as conn:
        organisation_id = await _manage(stores, conn, appid, actor.account_id, EDIT_APPS)
        if await repository.count_templates(conn, appid) >= MAX_TEMPLATES:
            raise Conflict(f"at most {MAX_TEMPLATES} templates per app", code="too_many_templates")
        row = await repository.insert_template(
            conn,
            secrets.token_urlsafe(32),
            appid,
            title,
            [msgspec.structs.asdict(keyword) for keyword in request.keywords],
            actor.label,
        )
        await repository.add_audit(
            conn,
            action="template_created",
            actor=actor,
            organisation_id=organisation_id,
            appid=appid,
            detail={"template_id": row["template_id"], "title": title},
        )
    return _template_view(row)


async def list_templates(stores: Stores, account_id: UUID, appid: str) -> list[TemplateView]:
    async with connection(stores.pool, stores.settings) as conn:
        await _manage(stores, conn, appid, account_id, READ)
        return [_template_view(row) for row in await repository.templates_of(conn, appid)]


async def delete_template(stores: Stores, actor: Actor, appid: str, template_id: str) -> None:
    """Pending subscriptions to it go with it."""
    assert actor.account_id is not None
    async with transaction(stores.pool, stores.settings) as conn:
        organisation_id = await _manage(stores, conn, appid, actor.account_id, EDIT_APPS)
        if not await repository.delete_template(conn, appid, template_id):
            raise NotFound("no such template", code="template_not_found")
        await repository.add_audit(
            conn,
            action="template_deleted",
            actor=actor,
            organisation_id=organisation_id,
            appid=appid,
            detail={"template_id": template_id},
        )


# --- subscriptions (the citizen) ----------------------------------------------------------------------------


async def subscribe(
    stores: Stores, account_id: UUID, appid: str, template_ids: list[str], *, level: int
) -> list[SubscriptionView]:
    """The citizen accepts these templates (each once more); returns the app's pending acceptances."""
    await sdk.visible_app(stores, account_id, appid, level)
    async with transaction(stores.pool, stores.settings) as conn:
        known = await repository.app_template_ids(conn, appid, template_ids)
        for index, template_id in enumerate(template_ids):
            if template_id not in known:
                raise InvalidInput(
                    f"template_ids[{index}]: not a template of this mini-app",
                    field=f"template_ids[{index}]",
                    code="invalid_template",
                )
        await repository.add_subscriptions(conn, account_id, template_ids, MAX_PENDING)
        rows = await repository.subscriptions_of(conn, account_id, appid)
    return [
        SubscriptionView(template_id=r["template_id"], title=r["title"], remaining=r["remaining"])
        for r in rows
    ]


async def my_subscriptions(stores: Stores, account_id: UUID, appid: str) -> list[SubscriptionView]:
    async with connection(stores.pool, stores.settings) as conn:
        rows = await repository.subscriptions_of(conn, account_id, appid)
    return [
        SubscriptionView(template_id=r["template_id"], title=r["title"], remaining=r["remaining"])
        for r in rows
    ]


# --- sending (the mini-app server) --------------------------------------------------------------------------


def render(keywords: list[Keyword], data: Any) -> str:
    """The message body: "label：value" per keyword, in the template's order. 47003 naming the first bad
    value: every keyword needs {"value": text} within its kind's length, and no other keys may come."""
    if not isinstance(data, dict):
        raise SdkError(sdk.ARGUMENT_INVALID, "data must be an object")
    wanted = {keyword.key for keyword in keywords}
    for key in data:
        if key not in wanted:
            raise SdkError(sdk.ARGUMENT_INVALID, f"data.{str(key)[:32]} is not in the template")
    lines: list[str] = []
    for keyword in keywords:
        item = data.get(keyword.key)
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise SdkError(sdk.ARGUMENT_INVALID, f"data.{keyword.key}.value is empty")
        match = _KEY.match(keyword.key)
        assert match is not None
        limit = KIND_LIMITS[match.group(1)]
        if len(value) > limit or not value.isprintable():
            raise SdkError(
                sdk.ARGUMENT_INVALID, f"data.{keyword.key}.value invalid (at most {limit} characters)"
            )
        lines.append(f"{keyword.label}：{value.strip()}")
    return "\n".join(lines)


async def send(stores: Stores, app_appid: str, request: SendRequest) -> None:
    """subscribeMessage.send for the app `app_appid` (already authenticated by its access token)."""
    touser = request.touser if isinstance(request.touser, str) else None
    account_id = await sdk.account_of_openid(stores, app_appid, touser)
    template_id = request.template_id
    if not isinstance(template_id, str) or not template_id:
        raise SdkError(sdk.INVALID_TEMPLATE)
    page = request.page
    if page is not None and (
        not isinstance(page, str) or len(page) > MAX_PAGE or (page and not _PAGE.match(page))
    ):
        raise SdkError(sdk.INVALID_PAGE)
    if request.miniprogram_state is not None and request.miniprogram_state not in STATES:
        raise SdkError(sdk.ARGUMENT_INVALID, "miniprogram_state: developer, trial or formal")
    if request.lang is not None and request.lang not in LANGS:
        raise SdkError(sdk.ARGUMENT_INVALID, f"lang: one of {', '.join(LANGS)}")
    async with transaction(stores.pool, stores.settings) as conn:
        template = await repository.template_by_id(conn, template_id)
        if template is None or template["appid"] != app_appid:
            raise SdkError(sdk.INVALID_TEMPLATE)
        body = render(_template_view(template).keywords, request.data)
        if not await repository.take_subscription(conn, account_id, template_id):
            raise SdkError(sdk.USER_REFUSED)
        message_id = ids.new_id()
        await repository.insert_message(
            conn,
            message_id,
            appid=app_appid,
            template_id=template_id,
            account_id=account_id,
            title=template["title"],
            body=body,
            page=page or None,
        )
        await enqueue_in_tx(
            conn, DELIVER_JOB, DeliverMessage(message_id), job_id=f"{DELIVER_JOB}.{message_id}"
        )
    log.info("miniapps.message_accepted", appid=app_appid, message=str(message_id))


@job(DELIVER_JOB)
async def deliver_message(stores: Stores, payload: DeliverMessage) -> None:
    """Into the inbox once (a repeated job finds the message delivered), then a push notification, which
    is best effort: the message is in the inbox whatever the push service does."""
    async with transaction(stores.pool, stores.settings) as conn:
        row = await repository.message_for_delivery(conn, payload.message_id)
        if row is None or row["delivered_at"] is not None:
            return
        source = f"miniapp.{row['appid']}"
        inbox_id = await inbox.deliver(
            conn, row["account_id"], title=row["title"], body=row["body"], source=source
        )
        await repository.mark_delivered(conn, row["id"], inbox_id)
    try:
        await PUSH.notify(row["account_id"], message_id=inbox_id, source=source, title=row["title"])
    except Exception as exc:
        log.warning("miniapps.push_failed", message=str(inbox_id), exc_type=type(exc).__name__)
