"""Simulated SMS gateway, shaped like the Chinese SMS providers: a registered signature (签名), named
templates with parameters, and an outbox that tests and developers can read instead of a phone.

POST /sms/send {phone, template, params, sign} -> {message_id, status}
GET /sms/outbox?phone=&limit= newest first; DELETE /sms/outbox clears it.
Message text carries OTP codes, so it is never logged: log lines name the template and message id only.
"""

from __future__ import annotations

import re
import string
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import structlog
from litestar import Litestar, delete, get, post
from litestar.datastructures import State
from litestar.params import Parameter

from sandbox.frame import FAULTY, Provider, ProviderError, provider_app

log = structlog.get_logger(__name__)

OUTBOX_SIZE = 1000
MAX_TEXT = 500  # long SMS are split by the carrier; providers refuse beyond about this
TEMPLATES: dict[str, str] = {
    "login_code": "您的登录验证码为{code}，{minutes}分钟内有效。如非本人操作，请忽略本短信。",
    "verify_code": "您正在{action}，验证码为{code}，{minutes}分钟内有效，请勿泄露给他人。",
    "notice": "{text}",
}
_PHONE = re.compile(r"(?:\+?86)?(1[3-9][0-9]{9})")  # [0-9], not \d: \d takes any Unicode digit


def normalize_phone(raw: str) -> str | None:
    """The 11-digit mainland mobile number, from itself or with a +86/86 prefix; None if it is not one."""
    match = _PHONE.fullmatch(raw.strip())
    return match.group(1) if match else None


def template_fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def render(sign: str, template: str, params: dict[str, str]) -> str:
    """`【sign】text`, or ProviderError naming what is wrong (never echoing the values)."""
    body = TEMPLATES.get(template)
    if body is None:
        raise ProviderError(
            400,
            "isv.SMS_TEMPLATE_ILLEGAL",
            f"unknown template {template!r}; known: {', '.join(sorted(TEMPLATES))}",
        )
    missing = sorted(template_fields(body) - params.keys())
    if missing:
        raise ProviderError(400, "isv.TEMPLATE_MISSING_PARAMETERS", f"missing params: {', '.join(missing)}")
    text = f"【{sign}】" + body.format_map(params)
    if len(text) > MAX_TEXT:
        raise ProviderError(400, "isv.PARAM_LENGTH_LIMIT", f"rendered text longer than {MAX_TEXT} characters")
    return text


class SendIn(msgspec.Struct, forbid_unknown_fields=True):
    phone: str
    template: str
    sign: str
    params: dict[str, str | int] = {}


class SendOut(msgspec.Struct):
    message_id: str
    status: str


class SmsMessage(msgspec.Struct):
    message_id: str
    phone: str
    sign: str
    template: str
    params: dict[str, str]
    text: str
    sent_at: datetime


class OutboxOut(msgspec.Struct):
    messages: list[SmsMessage]


@post("/sms/send", status_code=200, opt=FAULTY, sync_to_thread=False)
def send(state: State, data: SendIn) -> SendOut:
    phone = normalize_phone(data.phone)
    if phone is None:
        raise ProviderError(400, "isv.MOBILE_NUMBER_ILLEGAL", "phone is not a valid mainland mobile number")
    if not 2 <= len(data.sign) <= 12:
        raise ProviderError(400, "isv.SMS_SIGNATURE_ILLEGAL", "sign must be 2 to 12 characters")
    params = {key: str(value) for key, value in data.params.items()}
    text = render(data.sign, data.template, params)
    message = SmsMessage(
        message_id=uuid.uuid4().hex,
        phone=phone,
        sign=data.sign,
        template=data.template,
        params=params,
        text=text,
        sent_at=datetime.now(UTC),
    )
    outbox: deque[SmsMessage] = state.outbox
    outbox.append(message)
    log.info("sms.accepted", template=data.template, message_id=message.message_id)
    return SendOut(message_id=message.message_id, status="accepted")


@get("/sms/outbox", sync_to_thread=False)
def read_outbox(
    state: State,
    phone: str | None = None,
    limit: Annotated[int, Parameter(ge=1, le=OUTBOX_SIZE)] = 20,
) -> OutboxOut:
    wanted = None
    if phone is not None:
        wanted = normalize_phone(phone)
        if wanted is None:
            raise ProviderError(
                400, "isv.MOBILE_NUMBER_ILLEGAL", "phone is not a valid mainland mobile number"
            )
    outbox: deque[SmsMessage] = state.outbox
    messages: list[SmsMessage] = []
    for message in reversed(outbox):
        if wanted is None or message.phone == wanted:
            messages.append(message)
            if len(messages) == limit:
                break
    return OutboxOut(messages=messages)


@delete("/sms/outbox", status_code=200, sync_to_thread=False)
def clear_outbox(state: State) -> dict[str, int]:
    outbox: deque[SmsMessage] = state.outbox
    deleted = len(outbox)
    outbox.clear()
    return {"deleted": deleted}


def create_app() -> Litestar:
    return provider_app("sms", [send, read_outbox, clear_outbox], state={"outbox": deque(maxlen=OUTBOX_SIZE)})


PROVIDER = Provider(
    name="sms",
    title="SMS gateway",
    create_app=create_app,
    port_setting="sandbox_sms_port",
    url_setting="sms_gateway_url",
)
