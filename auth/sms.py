"""Text messages to citizens, sent by a job through the SMS gateway adapter.

The outbox row holds the phone and the message parameters (an OTP, say) only as PII-vault ciphertext, so
neither sits in clear in PostgreSQL; the job decrypts (logged in the PII access log) and sends."""

from __future__ import annotations

import msgspec

from core import ids
from core.db import Connection, transaction
from core.jobs import enqueue_in_tx, job
from core.pii.vault import Vault
from core.sms import get_sms_gateway
from core.stores import Stores

JOB = "auth.send_sms"
_TABLE, _COLUMN = "outbox", "auth.send_sms"


class _Message(msgspec.Struct):
    phone: str
    template: str
    params: dict[str, str]


class SendSms(msgspec.Struct, frozen=True):
    message_id: str
    sealed: bytes


async def queue_sms(conn: Connection, vault: Vault, phone: str, template: str, params: dict[str, str]) -> str:
    """Write the message to the outbox in the caller's transaction; it is sent once that commits."""
    message_id = ids.new_id().hex
    sealed = await vault.encrypt(
        conn,
        msgspec.json.encode(_Message(phone, template, params)).decode(),
        table=_TABLE,
        column=_COLUMN,
        row_id=message_id,
    )
    return await enqueue_in_tx(
        conn, JOB, SendSms(message_id=message_id, sealed=sealed), job_id=f"sms.{message_id}"
    )


@job(JOB, max_tries=4, timeout=30)
async def send_sms(stores: Stores, payload: SendSms) -> None:
    vault = await stores.vault()
    async with transaction(stores.pool, stores.settings) as conn:
        text = await vault.decrypt(
            conn,
            payload.sealed,
            table=_TABLE,
            column=_COLUMN,
            row_id=payload.message_id,
            actor="job:auth.send_sms",
            reason="deliver a text message",
        )
    message = msgspec.json.decode(text, type=_Message)
    # ProviderUnavailable propagates: the job is retried with backoff.
    await get_sms_gateway(stores.settings).send(message.phone, message.template, message.params)
