"""SDK rules without stores: openid derivation, the errcode table, template keywords, and that every error on
the WeChat-compatible router becomes HTTP 200 {errcode, errmsg} without a trace."""

from __future__ import annotations

import re
import string
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar import Litestar, Router, get
from litestar.testing import TestClient

from api import sdk as sdk_api
from core.errors import InvalidInput, NotFound, RateLimited, StoreUnavailable
from miniapps import messages, sdk
from miniapps.sdk import SdkError

uuids = st.uuids()
salts = st.binary(min_size=32, max_size=32)
URLSAFE = set(string.ascii_letters + string.digits + "-_")


@given(salt=salts, account=uuids)
def test_ids_look_like_wechats_and_are_stable(salt: bytes, account: UUID) -> None:
    openid = sdk.derive_id("o", salt, account)
    assert len(openid) == 28 and openid[0] == "o" and set(openid) <= URLSAFE
    assert sdk.derive_id("o", salt, account) == openid
    assert account.hex not in openid


@given(salt=salts, other_salt=salts, account=uuids, other_account=uuids)
def test_ids_differ_per_salt_and_per_account(
    salt: bytes, other_salt: bytes, account: UUID, other_account: UUID
) -> None:
    if salt != other_salt:
        assert sdk.derive_id("o", salt, account) != sdk.derive_id("o", other_salt, account)
    if account != other_account:
        assert sdk.derive_id("o", salt, account) != sdk.derive_id("o", salt, other_account)


def test_every_errcode_has_wechats_message() -> None:
    codes = {value for name, value in vars(sdk).items() if name.isupper() and isinstance(value, int)}
    documented = {
        -1, 40001, 40002, 40003, 40013, 40029, 40037, 40097, 40125, 40163, 40164, 41001, 41002, 41004, 41008,
        41030, 43101, 45009, 45011, 47001, 47003, 48004, 50001, 50002, 61004, 87008, 87009, 94001,
    }  # fmt: skip
    assert documented <= codes
    assert documented <= set(sdk.ERRMSG)
    assert SdkError(sdk.INVALID_CODE).errmsg == "invalid code"
    assert SdkError(sdk.INVALID_IP, "(ip 10.0.0.1)").errmsg == "invalid ip, not in whitelist (ip 10.0.0.1)"


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("thing1", True),
        ("character_string12", True),
        ("phone_number3", True),
        ("thing0", False),
        ("thing100", False),
        ("foo1", False),
        ("thing", False),
        ("Thing1", False),
    ],
)
def test_template_keyword_keys(key: str, ok: bool) -> None:
    assert bool(re.match(messages._KEY, key)) is ok


def _app_raising(exc: Exception) -> Litestar:
    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise exc

    handlers = sdk_api.router.exception_handlers
    return Litestar([Router(path="/", route_handlers=[boom], exception_handlers=handlers)])


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (SdkError(sdk.INVALID_CODE), sdk.INVALID_CODE),
        (RateLimited(retry_after=3), sdk.MINUTE_QUOTA),
        (StoreUnavailable("Redis"), sdk.SYSTEM_ERROR),
        (ConnectionRefusedError("db down at 10.0.0.5"), sdk.SYSTEM_ERROR),
        (InvalidInput("scopes: bad", field="scopes"), sdk.INVALID_ARGS),
        (NotFound("no such thing"), sdk.SYSTEM_ERROR),
        (RuntimeError("secret internals /srv/app.py line 3"), sdk.SYSTEM_ERROR),
    ],
)
def test_every_error_is_http_200_with_an_errcode_and_no_trace(exc: Exception, code: int) -> None:
    with TestClient(_app_raising(exc)) as client:
        answer = client.get("/boom")
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"errcode", "errmsg"} and body["errcode"] == code
    assert "Traceback" not in answer.text and "internals" not in answer.text and "10.0.0.5" not in answer.text
    assert re.search(r", rid: [0-9a-f]{16}$", body["errmsg"])
