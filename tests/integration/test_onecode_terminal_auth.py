"""Signed terminal requests over the API (the app in process, real PostgreSQL and Redis): a correct request
passes; a wrong signature, an altered body, a skewed clock, a replayed nonce, an unknown or disabled terminal
and a missing header are each a 401 with its own code; a terminal of the wrong kind is a 403; the secret is
stored encrypted and can be reset; the pure signing helpers change the signature with any signed part; and
`tongban terminals` adds, lists, disables and resets."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from core import db
from core.keys import KeyStoreError
from core.stores import Stores
from onecode import terminal_auth, terminals
from onecode.terminal_auth import TERMINALS, canonical, open_secret, sign
from scripts.cli import app
from tests.integration.test_onecode_terminal_support import Client, make_terminal, signed_call

BUNDLE = "/v1/terminals/bundle"
RESOLVE = "/v1/terminals/resolve"
RIDES = "/v1/terminals/rides"


def problem_code(answer: object) -> str:
    code: str = answer.json()["code"]  # type: ignore[attr-defined]
    return code


async def test_a_correctly_signed_request_passes(client: Client, stores: Stores) -> None:
    term = await make_terminal(stores)
    answer = await signed_call(client, term, "GET", BUNDLE)
    assert answer.status_code == 200, answer.text
    assert answer.json()["format"] == "tongban-onecode-bundle/1"


async def test_a_wrong_signature_is_refused(client: Client, stores: Stores) -> None:
    term = await make_terminal(stores)
    headers = term.headers("GET", BUNDLE)
    headers["X-Signature"] = sign("00" * 32, "GET", BUNDLE, b"", headers["X-Timestamp"], headers["X-Nonce"])
    answer = await client.get(BUNDLE, headers=headers)
    assert answer.status_code == 401
    assert problem_code(answer) == "terminal_unauthorized"


async def test_a_body_changed_after_signing_is_refused(client: Client, stores: Stores) -> None:
    term = await make_terminal(stores, "pos")
    signed_body = msgspec.json.encode(
        {"code": "TBO1:X", "scene": "payment", "amount_fen": 100, "order_id": "a"}
    )
    sent_body = signed_body.replace(b"100", b"900")
    headers = {**term.headers("POST", RESOLVE, signed_body), "Content-Type": "application/json"}
    answer = await client.post(RESOLVE, content=sent_body, headers=headers)
    assert answer.status_code == 401
    assert problem_code(answer) == "terminal_unauthorized"


async def test_a_path_with_another_query_is_refused(client: Client, stores: Stores) -> None:
    term = await make_terminal(stores)
    answer = await client.get(BUNDLE + "?x=1", headers=term.headers("GET", BUNDLE))
    assert answer.status_code == 401
    signed_query = await client.get(BUNDLE + "?x=1", headers=term.headers("GET", BUNDLE + "?x=1"))
    assert signed_query.status_code == 200, signed_query.text


@pytest.mark.parametrize("offset", [-91, 91, -3600])
async def test_a_skewed_clock_is_refused(client: Client, stores: Stores, offset: int) -> None:
    term = await make_terminal(stores)
    answer = await signed_call(client, term, "GET", BUNDLE, now=time.time() + offset)
    assert answer.status_code == 401
    assert problem_code(answer) == "terminal_clock_skew"


@pytest.mark.parametrize("offset", [-85, 85])
async def test_a_clock_within_the_window_passes(client: Client, stores: Stores, offset: int) -> None:
    term = await make_terminal(stores)
    answer = await signed_call(client, term, "GET", BUNDLE, now=time.time() + offset)
    assert answer.status_code == 200, answer.text


async def test_a_replayed_nonce_is_refused(client: Client, stores: Stores) -> None:
    term = await make_terminal(stores)
    headers = term.headers("GET", BUNDLE)
    first = await client.get(BUNDLE, headers=headers)
    assert first.status_code == 200, first.text
    again = await client.get(BUNDLE, headers=headers)
    assert again.status_code == 401
    assert problem_code(again) == "terminal_nonce_replayed"
    # The nonce is kept in Redis (every process sees it), for as long as its timestamp could pass.
    key = terminal_auth.nonce_key(term.id, headers["X-Nonce"])
    ttl = await stores.redis.ttl(key)
    assert 2 * stores.settings.onecode_terminal_skew_seconds <= ttl <= 2 * 90 + 1


async def test_a_nonce_is_spent_only_by_a_correct_signature(client: Client, stores: Stores) -> None:
    term = await make_terminal(stores)
    good = term.headers("GET", BUNDLE)
    forged = {**good, "X-Signature": "0" * 64}
    assert (await client.get(BUNDLE, headers=forged)).status_code == 401
    answer = await client.get(BUNDLE, headers=good)
    assert answer.status_code == 200, answer.text


async def test_an_unknown_terminal_is_refused(client: Client, stores: Stores) -> None:
    term = await make_terminal(stores)
    term.id = uuid.uuid4()
    answer = await signed_call(client, term, "GET", BUNDLE)
    assert answer.status_code == 401
    assert problem_code(answer) == "terminal_unauthorized"


async def test_a_disabled_terminal_is_refused_and_enabled_again(client: Client, stores: Stores) -> None:
    term = await make_terminal(stores)
    assert (await signed_call(client, term, "GET", BUNDLE)).status_code == 200
    async with db.connection(stores.pool, stores.settings) as conn:
        await terminals.set_status(conn, term.id, "disabled")
    answer = await signed_call(client, term, "GET", BUNDLE)
    assert answer.status_code == 401
    assert problem_code(answer) == "terminal_unauthorized"
    async with db.connection(stores.pool, stores.settings) as conn:
        await terminals.set_status(conn, term.id, "active")
    assert (await signed_call(client, term, "GET", BUNDLE)).status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"X-Terminal-Id": None},
        {"X-Timestamp": None},
        {"X-Nonce": None},
        {"X-Signature": None},
        {"X-Terminal-Id": "validator-7"},
        {"X-Timestamp": "yesterday"},
        {"X-Nonce": "short"},
        {"X-Nonce": "has spaces in it, sixteen+"},
        {"X-Signature": "AB" * 32},
    ],
)
async def test_missing_or_malformed_headers_are_refused(
    client: Client, stores: Stores, change: dict[str, str | None]
) -> None:
    term = await make_terminal(stores)
    headers = term.headers("GET", BUNDLE)
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    answer = await client.get(BUNDLE, headers=headers)
    assert answer.status_code == 401
    assert problem_code(answer) == "terminal_unauthorized"


async def test_a_terminal_of_another_kind_is_forbidden(client: Client, stores: Stores) -> None:
    pos = await make_terminal(stores, "pos")
    answer = await signed_call(client, pos, "POST", RIDES, {"rides": []})
    assert answer.status_code == 403
    assert problem_code(answer) == "terminal_kind_not_allowed"


async def test_the_secret_is_stored_encrypted_and_bound_to_its_terminal(stores: Stores) -> None:
    term = await make_terminal(stores)
    other = await make_terminal(stores)
    async with db.connection(stores.pool, stores.settings) as conn:
        row = await conn.fetchrow(
            "SELECT secret_enc, master_key_id FROM onecode_terminals WHERE id = $1", term.id
        )
        dump = b"".join(
            bytes(r["secret_enc"]) + str(r["master_key_id"]).encode()
            for r in await conn.fetch("SELECT * FROM onecode_terminals")
        )
    secret = bytes.fromhex(term.secret)
    assert secret not in dump and term.secret.encode() not in dump
    assert open_secret(stores.settings, term.id, row["secret_enc"], row["master_key_id"]) == secret
    with pytest.raises(KeyStoreError):  # moved to another terminal's row, it does not decrypt
        open_secret(stores.settings, other.id, row["secret_enc"], row["master_key_id"])


async def test_a_reset_secret_refuses_the_old_one(client: Client, stores: Stores) -> None:
    term = await make_terminal(stores)
    assert (await signed_call(client, term, "GET", BUNDLE)).status_code == 200
    async with db.connection(stores.pool, stores.settings) as conn:
        made = await terminals.reset_secret(conn, stores.settings, term.id)
    old_secret, term.secret = term.secret, made.secret
    assert made.secret != old_secret
    assert (await signed_call(client, term, "GET", BUNDLE)).status_code == 200
    term.secret = old_secret
    assert (await signed_call(client, term, "GET", BUNDLE)).status_code == 401


async def test_a_hospital_counter_needs_its_org_code(stores: Stores) -> None:
    from core.errors import InvalidInput

    async with db.connection(stores.pool, stores.settings) as conn:
        with pytest.raises(InvalidInput) as refused:
            await terminals.register(conn, stores.settings, kind="counter", name="门诊 1", owner="医院")
        assert refused.value.field == "org_code"
        with pytest.raises(InvalidInput) as bad_kind:
            await terminals.register(conn, stores.settings, kind="gate", name="闸机", owner="某站")
        assert bad_kind.value.field == "kind"


# --- the pure helpers --------------------------------------------------------------------------------------

METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])
PATHS = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40).map(
    lambda text: "/" + text
)
NONCES = st.from_regex(r"[A-Za-z0-9_-]{16,64}", fullmatch=True)
STAMPS = st.integers(min_value=0, max_value=2**33)
PARTS = st.fixed_dictionaries(
    {"method": METHODS, "path": PATHS, "body": st.binary(max_size=200), "timestamp": STAMPS, "nonce": NONCES}
)


@settings(max_examples=120, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), one=PARTS, other=PARTS)
def test_any_change_of_a_signed_part_changes_the_signature(
    secret: bytes, one: dict[str, object], other: dict[str, object]
) -> None:
    first = sign(secret, **one)  # type: ignore[arg-type]
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    for name, value in other.items():
        changed = {**one, name: value}
        if value == one[name]:
            continue
        assert sign(secret, **changed) != first, name  # type: ignore[arg-type]
        assert canonical(**changed) != canonical(**one)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), parts=PARTS)
def test_the_secret_as_hex_or_bytes_signs_alike(secret: bytes, parts: dict[str, object]) -> None:
    assert sign(secret, **parts) == sign(secret.hex(), **parts) == sign(secret.hex().upper(), **parts)  # type: ignore[arg-type]


def test_signed_headers_carry_a_fresh_nonce_and_verify() -> None:
    secret = "ab" * 32
    first = terminal_auth.signed_headers(
        "t-1", secret, "POST", "/v1/terminals/rides", b"{}", now=1_700_000_000
    )
    second = terminal_auth.signed_headers(
        "t-1", secret, "POST", "/v1/terminals/rides", b"{}", now=1_700_000_000
    )
    assert first["X-Nonce"] != second["X-Nonce"]
    assert first["X-Timestamp"] == "1700000000"
    assert terminal_auth.NONCE_RE.fullmatch(first["X-Nonce"])
    assert first["X-Signature"] == sign(
        secret, "POST", "/v1/terminals/rides", b"{}", 1_700_000_000, first["X-Nonce"]
    )


def test_the_worked_example_of_the_guide_signs_as_documented() -> None:
    """docs/terminals.md section 2: terminal makers test their implementation against these."""
    secret = "3f1c9a7be2d04c5a8e6b1f2d7c9a0e4b5d6c7f8e9a0b1c2d3e4f5a6b7c8d9e0f"
    body = b'{"code":"TBO1:EXAMPLE","scene":"medical"}'
    assert terminal_auth.body_hash(body) == "5fbc6e447588f25c79504a6243a6c01286dd6516a55f90c1846902dabfa4ba4f"
    assert (
        sign(secret, "POST", "/v1/terminals/resolve", body, 1767225600, "n0nce-7f3a9c2e41d8")
        == "3063eb31705b2d0f069a243ffa04821a3a6ad9f8e1f995e75511c0eb4c14c753"
    )
    assert (
        sign(secret, "GET", "/v1/terminals/bundle", b"", 1767225600, "n0nce-5b1e77aa0c93")
        == "1a3a55c21acec26baa0c09d9aa83b2cfdbd7ca265535dcf97613f16d69c039d9"
    )
    guide = (Path(__file__).resolve().parents[2] / "docs" / "terminals.md").read_text()
    assert "3063eb31705b2d0f069a243ffa04821a3a6ad9f8e1f995e75511c0eb4c14c753" in guide


def test_a_secret_must_be_64_hex_digits() -> None:
    for bad in ("ab" * 31, "zz" * 32, b"short"):
        with pytest.raises(ValueError):
            terminal_auth.parse_secret(bad)


# --- the CLI ---------------------------------------------------------------------------------------------


def test_the_cli_adds_lists_disables_and_resets(stores: Stores) -> None:
    runner = CliRunner()
    added = runner.invoke(app, ["terminals", "add", "--kind", "pos", "--name", "便利店 1号收银台"])
    assert added.exit_code == 0, added.output
    terminal_id = re.search(r"id:\s+(\S+)", added.output).group(1)  # type: ignore[union-attr]
    secret = re.search(r"secret:\s+([0-9a-f]{64})", added.output).group(1)  # type: ignore[union-attr]
    listed = runner.invoke(app, ["terminals", "list", "--kind", "pos"])
    assert listed.exit_code == 0, listed.output
    assert terminal_id in listed.output and "便利店 1号收银台" in listed.output
    assert secret not in listed.output
    reset = runner.invoke(app, ["terminals", "reset-secret", terminal_id])
    assert reset.exit_code == 0, reset.output
    new_secret = re.search(r"secret:\s+([0-9a-f]{64})", reset.output).group(1)  # type: ignore[union-attr]
    assert new_secret != secret
    disabled = runner.invoke(app, ["terminals", "disable", terminal_id])
    assert disabled.exit_code == 0 and "disabled" in disabled.output
    assert "disabled" in runner.invoke(app, ["terminals", "list"]).output
    missing = runner.invoke(app, ["terminals", "disable", str(uuid.uuid4())])
    assert missing.exit_code == 1
    counter = runner.invoke(app, ["terminals", "add", "--kind", "counter", "--name", "门诊 1"])
    assert counter.exit_code == 1 and "org_code" in counter.output


def teardown_module() -> None:
    TERMINALS.forget()


async def test_rewrap_moves_terminal_secrets_to_the_new_master_key(stores: Stores, own_database: str) -> None:
    from core.masterkey import key_id, master_keyring, new_key_text
    from core.stores import close_stores, open_stores

    old, new = new_key_text(), new_key_text()
    before = msgspec.structs.replace(
        stores.settings, database_url=own_database, master_key=old, master_key_file=None
    )
    after = msgspec.structs.replace(before, master_key=f"{new},{old}")
    only_new = msgspec.structs.replace(before, master_key=new)
    opened = await open_stores(before)
    try:
        async with db.connection(opened.pool, before) as conn:
            made = await terminals.register(
                conn, before, kind="validator", name="5路 3号车", owner="大连公交"
            )
            async with conn.transaction():
                assert await terminals.rewrap_secrets(conn, after) == 1
                assert await terminals.rewrap_secrets(conn, after) == 0  # nothing left under the old key
            row = await conn.fetchrow(
                "SELECT secret_enc, master_key_id FROM onecode_terminals WHERE id = $1", made.terminal.id
            )
    finally:
        await close_stores(opened)
    assert (
        row["master_key_id"]
        == master_keyring(only_new).current_id
        == key_id(master_keyring(only_new).current)
    )
    # The old key can go: the same secret opens under the new key alone.
    secret = open_secret(only_new, made.terminal.id, row["secret_enc"], row["master_key_id"])
    assert terminal_auth.secret_text(secret) == made.secret
