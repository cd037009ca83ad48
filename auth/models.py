"""What the accounts API takes and gives (msgspec Structs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

from auth.tokens import Enterprise

ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class SmsCodeRequest(msgspec.Struct, forbid_unknown_fields=False):
    phone: Annotated[str, msgspec.Meta(max_length=32)]
    purpose: Literal["login"] = "login"
    device_id: ShortText | None = None


class SmsCodeSent(msgspec.Struct):
    challenge_id: str
    expires_in: int
    resend_after: int


class Device(msgspec.Struct):
    id: ShortText
    name: ShortText = "phone"


class LoginRequest(msgspec.Struct):
    phone: Annotated[str, msgspec.Meta(max_length=32)]
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    challenge_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    device: Device


class RefreshRequest(msgspec.Struct):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class TokenPair(msgspec.Struct):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int
    session_id: UUID
    account_id: UUID
    level: int


class SessionView(msgspec.Struct):
    id: UUID
    device_id: str
    device_name: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    current: bool
    acting_enterprise: UUID | None = None


class TokenInfo(msgspec.Struct, omit_defaults=True):
    account_id: UUID
    session_id: UUID
    level: int
    amr: list[str]
    expires_at: int
    enterprise: Enterprise | None = None


class Me(msgspec.Struct):
    id: UUID
    phone: str
    level: int
    amr: list[str]
    status: str
    name: str | None
    id_number: str | None
    created_at: datetime
