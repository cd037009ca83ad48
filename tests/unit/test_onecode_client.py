"""The phone-side reference client: device keys, holding an authorisation, making codes with a strictly
increasing counter in 30 s steps, and importing nothing of the server."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onecode import client as phone_lib
from onecode import codec
from onecode.client import ClientError, OneCodeClient
from onecode.validator import Bundle, SeenSet, verify
from tests.support.onecode_codes import NOW, issue, new_key

ISSUER = new_key()
BUNDLE = Bundle.of([ISSUER.public_key()])


def test_a_device_key_exports_its_uncompressed_public_key() -> None:
    key = phone_lib.generate_device_key()
    point = phone_lib.public_key_bytes(key)
    numbers = key.public_key().public_numbers()
    assert point == b"\x04" + numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")
    text = phone_lib.public_key_b64(key)
    assert len(text) == 88 and base64.b64decode(text) == point
    assert codec.device_public_key(point).public_numbers() == key.public_key().public_numbers()


def test_a_device_key_survives_pem_with_and_without_a_password() -> None:
    key = phone_lib.generate_device_key()
    for password in (None, b"correct horse"):
        again = phone_lib.load_private_key_pem(phone_lib.private_key_pem(key, password), password)
        assert again.private_numbers() == key.private_numbers()


@pytest.mark.parametrize(
    "encode",
    [
        lambda raw: raw,
        lambda raw: base64.b64encode(raw).decode(),
        lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("="),
        lambda raw: base64.b64encode(raw),
        lambda raw: " " + base64.b64encode(raw).decode() + "\n",
    ],
)
def test_the_authorisation_is_taken_in_the_forms_an_api_gives_it(encode: object) -> None:
    key = phone_lib.generate_device_key()
    raw = issue(ISSUER, key)
    client = OneCodeClient(key, encode(raw))  # type: ignore[operator]
    assert client.authorisation == codec.parse_authorisation(raw)
    assert client.code_id == raw[9:25] and client.expires_at == client.authorisation.expires_at


@pytest.mark.parametrize(
    "bad",
    [
        "not base64!",
        base64.b64encode(b"\x01" * (codec.AUTHORISATION_BYTES - 1)).decode(),
        base64.b64encode(b"\x01" * 167).decode(),  # the length before the device key was uncompressed
        "",
        b"\x00" * 10,
    ],
)
def test_what_is_not_an_authorisation_is_refused(bad: str | bytes) -> None:
    with pytest.raises(ClientError):
        OneCodeClient(phone_lib.generate_device_key(), bad)


def test_an_authorisation_of_another_version_or_key_is_refused() -> None:
    key = phone_lib.generate_device_key()
    raw = issue(ISSUER, key)
    with pytest.raises(ClientError, match="unsupported_version"):
        OneCodeClient(key, b"\x02" + raw[1:])
    with pytest.raises(ClientError, match="another device key"):
        OneCodeClient(phone_lib.generate_device_key(), raw)
    with pytest.raises(ClientError, match="counter"):
        OneCodeClient(key, raw, counter=-1)


def test_codes_have_a_strictly_increasing_counter_and_30_second_steps() -> None:
    key = phone_lib.generate_device_key()
    client = OneCodeClient(key, issue(ISSUER, key))
    seen = SeenSet()
    counters = []
    for offset in (0, 0, 7, 29, 30, 31, 95):
        text = client.make_code(NOW + offset)
        verdict = verify(text, BUNDLE, NOW + offset, scene=codec.SCENE_TRANSIT, seen=seen)
        assert verdict.valid, verdict.reason
        assert verdict.code is not None
        assert verdict.code.generated_at == (NOW + offset) // 30 * 30
        counters.append(verdict.code.counter)
    assert counters == [1, 2, 3, 4, 5, 6, 7] and client.counter == 7


def test_the_displayed_code_changes_with_the_step_or_after_a_scan() -> None:
    key = phone_lib.generate_device_key()
    client = OneCodeClient(key, issue(ISSUER, key))
    shown = client.code_for_display(NOW + 1)
    assert client.code_for_display(NOW + 29) == shown
    after_step = client.code_for_display(NOW + 30)
    assert after_step != shown and client.counter == 2
    fresh = client.make_code(NOW + 31)  # after a scan: a new code at once, and it is the one shown
    assert client.code_for_display(NOW + 32) == fresh and client.counter == 3


def test_a_restarted_app_continues_its_counter() -> None:
    key = phone_lib.generate_device_key()
    raw = issue(ISSUER, key)
    client = OneCodeClient(key, raw, counter=41)
    verdict = verify(client.make_code(NOW), BUNDLE, NOW, scene=codec.SCENE_TRANSIT)
    assert verdict.code is not None and verdict.code.counter == 42


def test_no_codes_after_expiry_or_with_the_counter_used_up() -> None:
    key = phone_lib.generate_device_key()
    raw = issue(ISSUER, key, issued_at=NOW - 7200, expires_at=NOW - 60)
    client = OneCodeClient(key, raw)
    assert client.needs_renewal(NOW)
    with pytest.raises(ClientError, match="expired"):
        client.make_code(NOW)
    fresh = OneCodeClient(key, issue(ISSUER, key), counter=codec.UINT32_MAX)
    with pytest.raises(ClientError, match="used up"):
        fresh.make_code(NOW)


def test_renewal_is_due_within_the_margin() -> None:
    key = phone_lib.generate_device_key()
    client = OneCodeClient(key, issue(ISSUER, key, issued_at=NOW, expires_at=NOW + 7200))
    assert not client.needs_renewal(NOW)
    assert client.needs_renewal(NOW + 3600)
    assert client.needs_renewal(NOW + 100, margin=7200)


def test_the_client_imports_nothing_of_the_server() -> None:
    probe = "import sys, onecode.client;print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert {"onecode", "cryptography", "health_code"} <= loaded
    server = {"core", "api", "auth", "miniapps", "litestar", "asyncpg", "redis", "arq", "httpx", "msgspec"}
    assert not loaded & server, loaded & server


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_decode_authorisation_raises_only_client_errors(text: str | bytes) -> None:
    try:
        raw = phone_lib.decode_authorisation(text)
    except ClientError:
        return
    assert len(raw) == codec.AUTHORISATION_BYTES
