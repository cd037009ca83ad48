"""The citizen's one-code over the API (the app in process) against the real PostgreSQL and Redis and the
sandbox transit operator, medical-insurance platform and payment acquirer running as a real process: links
with their levels (transit and payment L2, medical L3), what is kept of each, unlink; device key validation;
the authorisation signed with the issuer key, parseable by onecode.codec and verifiable offline with the
bundle; re-issue when links change; lost phone revoking at once, and the bundle listing the revoked id."""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from stdnum import luhn

from api.app import create_app
from auth import repository as auth_repository
from auth.tokens import authenticate
from core.db import connection, transaction
from core.errors import InvalidInput
from core.settings import Settings
from core.stores import Stores
from miniapps import inbox
from onecode import authorisations, codec, devices, ledger, providers, validator
from onecode.client import OneCodeClient, generate_device_key, public_key_b64
from onecode.validator import Bundle
from tests.integration.test_health_pass_support import Citizen, l1_citizen, l2_citizen
from tests.integration.test_onecode_terminal_support import (  # noqa: F401 (fixtures)
    card_number,
    provider_settings,
    sandbox,
)
from tests.support.accounts import login_in_process

ApiClient = AsyncTestClient  # type: ignore[type-arg]


@pytest.fixture(scope="module")
def wired_settings(provider_settings: Settings) -> Settings:  # noqa: F811
    return provider_settings


@pytest.fixture(scope="module")
async def api(wired_settings: Settings) -> AsyncIterator[ApiClient]:
    async with AsyncTestClient(app=create_app(wired_settings)) as client:
        yield client  # its shutdown closes the provider adapters it made


@pytest.fixture
async def wired(stores: Stores, wired_settings: Settings) -> Stores:
    return Stores(settings=wired_settings, pool=stores.pool, redis=stores.redis)


async def l3_citizen(stores: Stores) -> Citizen:
    """An L2 citizen whose face check passed (what auth.realname.verify_face stores), logged in again."""
    citizen = await l2_citizen(stores)
    async with transaction(stores.pool, stores.settings) as conn:
        await auth_repository.set_face_verified(conn, citizen.account_id)
        phone = await conn.fetchval("SELECT phone_enc FROM accounts WHERE id = $1", citizen.account_id)
    vault = await stores.vault()
    async with transaction(stores.pool, stores.settings) as conn:
        number = await vault.decrypt(
            conn,
            phone,
            table="accounts",
            column="phone",
            row_id=citizen.account_id,
            actor="test",
            reason="test",
        )
    pair = await login_in_process(stores, number)
    assert (await authenticate(stores, pair.access_token)).level == 3
    return Citizen(account_id=citizen.account_id, token=pair.access_token, id_number=citizen.id_number)


async def linked(api: ApiClient, citizen: Citizen, kind: str, **body: Any) -> dict[str, Any]:
    answer = await api.post("/v1/onecode/links", json={"kind": kind, **body}, headers=citizen.auth)
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def device(api: ApiClient, citizen: Citizen) -> tuple[Any, str]:
    """A new device key registered for the citizen: (private key, device id)."""
    key = generate_device_key()
    answer = await api.post(
        "/v1/onecode/devices", json={"public_key": public_key_b64(key)}, headers=citizen.auth
    )
    assert answer.status_code == 201, answer.text
    return key, answer.json()["id"]


async def authorised(api: ApiClient, citizen: Citizen, device_id: str) -> dict[str, Any]:
    answer = await api.post("/v1/onecode/authorisation", json={"device_id": device_id}, headers=citizen.auth)
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def problem(answer: Any, status: int, code: str, field: str | None = None) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["code"] == code, body
    if field is not None:
        assert body["field"] == field, body


async def current_bundle(stores: Stores) -> Bundle:
    return Bundle.from_json(await authorisations.bundle_json(stores))


# --- links -----------------------------------------------------------------------------------------------


async def test_links_need_their_level_and_keep_no_personal_data(api: ApiClient, stores: Stores) -> None:
    l1 = await l1_citizen(stores)
    problem(
        await api.post("/v1/onecode/links", json={"kind": "transit"}, headers=l1.auth),
        403,
        "insufficient_level",
    )

    citizen = await l2_citizen(stores)
    transit = await linked(api, citizen, "transit")
    assert transit["link"]["kind"] == "transit" and transit["link"]["reference"].startswith("****")
    assert transit["scenes"] == ["transit"] and transit["authorisations"] == []
    again = await api.post("/v1/onecode/links", json={"kind": "transit"}, headers=citizen.auth)
    problem(again, 409, "already_linked", "kind")
    # Medical needs L3 (face).
    problem(
        await api.post("/v1/onecode/links", json={"kind": "medical"}, headers=citizen.auth),
        403,
        "insufficient_level",
    )

    # Payment: a card number is required and checked; it reaches the acquirer once and is never kept.
    no_card = await api.post("/v1/onecode/links", json={"kind": "payment"}, headers=citizen.auth)
    problem(no_card, 422, "invalid_input", "card_number")
    bad = card_number()[:-1] + str((int(card_number()[-1]) + 1) % 10)
    bad = bad if not luhn.is_valid(bad) else bad[:-1] + str((int(bad[-1]) + 1) % 10)
    refused = await api.post(
        "/v1/onecode/links", json={"kind": "payment", "card_number": bad}, headers=citizen.auth
    )
    problem(refused, 422, "invalid_input", "card_number")
    assert bad not in refused.text
    card = card_number()
    payment = await linked(api, citizen, "payment", card_number=card)
    assert payment["link"]["reference"] == "****" + card[-4:] and card not in str(payment)
    assert payment["scenes"] == ["transit", "payment"]

    l3 = await l3_citizen(stores)
    medical = await linked(api, l3, "medical")
    assert medical["scenes"] == ["medical"]
    async with connection(stores.pool, stores.settings) as conn:
        rows = await conn.fetch(
            "SELECT kind, provider_ref, provider_ref_enc, ref_masked FROM onecode_links WHERE account_id = ANY ($1)",
            [citizen.account_id, l3.account_id],
        )
        disclosed = await conn.fetch(
            "SELECT column_name FROM pii_access_log WHERE actor = 'system:onecode-link' AND row_id = $1",
            str(l3.account_id),
        )
    by_kind = {row["kind"]: row for row in rows}
    assert (
        by_kind["payment"]["provider_ref"].startswith("tok_")
        and by_kind["payment"]["provider_ref_enc"] is None
    )
    assert card not in repr([dict(row) for row in rows])
    assert by_kind["medical"]["provider_ref"] is None and by_kind["medical"]["provider_ref_enc"] is not None
    assert l3.id_number.encode() not in bytes(by_kind["medical"]["provider_ref_enc"])
    assert sorted(row["column_name"] for row in disclosed) == ["id_number", "name"]

    overview = (await api.get("/v1/onecode", headers=citizen.auth)).json()
    assert overview["scenes"] == ["transit", "payment"] and overview["authorisation"] is None
    assert [link["kind"] for link in overview["links"]] == ["payment", "transit"]


async def test_unlink(api: ApiClient, stores: Stores) -> None:
    citizen = await l2_citizen(stores)
    await linked(api, citizen, "transit")
    await linked(api, citizen, "payment", card_number=card_number())
    gone = await api.delete("/v1/onecode/links/payment", headers=citizen.auth)
    assert gone.status_code == 200, gone.text
    assert gone.json()["scenes"] == ["transit"] and gone.json()["link"] is None
    problem(await api.delete("/v1/onecode/links/payment", headers=citizen.auth), 404, "not_linked", "kind")
    problem(await api.delete("/v1/onecode/links/bus", headers=citizen.auth), 422, "invalid_input", "kind")
    problem(
        await api.post("/v1/onecode/links", json={"kind": "bus"}, headers=citizen.auth),
        400,
        "malformed_request",
        "kind",
    )
    # Linked again: a new link, the same card or another.
    assert (await linked(api, citizen, "payment", card_number=card_number()))["scenes"] == [
        "transit",
        "payment",
    ]
    assert [
        link["kind"] for link in (await api.get("/v1/onecode", headers=citizen.auth)).json()["links"]
    ] == [
        "payment",
        "transit",
    ]


# --- device keys -----------------------------------------------------------------------------------------


def uncompressed(key: Any) -> bytes:
    """04 || X || Y: what iOS exports, what we store and what the authorisation carries."""
    return codec.device_point(key.public_key())


# The DER head of a P-256 SubjectPublicKeyInfo holding a 33-byte (compressed) point (RFC 5480).
SPKI_COMPRESSED_HEAD = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")


def key_forms(public_key: ec.EllipticCurvePublicKey) -> dict[str, bytes]:
    """Every form of a device key registration takes: the uncompressed point (iOS
    SecKeyCopyExternalRepresentation), the compressed point, DER SubjectPublicKeyInfo (Android/Java
    getEncoded()), and SubjectPublicKeyInfo holding a compressed point."""
    point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    return {
        "uncompressed": codec.device_point(public_key),
        "compressed": point,
        "spki": public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "spki_compressed": SPKI_COMPRESSED_HEAD + point,
    }


def off_curve_point() -> bytes:
    """02 || x where no y satisfies the curve equation."""
    p = 2**256 - 2**224 + 2**192 + 2**96 - 1
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    x = 1
    while pow((x**3 - 3 * x + b) % p, (p - 1) // 2, p) == 1:
        x += 1
    return b"\x02" + x.to_bytes(32, "big")


def not_device_keys(key: Any) -> dict[str, bytes | str]:
    """Inputs that are not a P-256 public key in an accepted form (bytes are sent as base64)."""
    forms = key_forms(key.public_key())
    point, der = forms["uncompressed"], forms["spki"]
    return {
        "not base64": "not base64!" * 4,
        "too short": b"\x02" + bytes(31),
        "too long text": base64.b64encode(der + bytes(40)).decode(),
        "garbage": bytes(range(65, 130)),
        "uncompressed, off the curve": point[:-1] + bytes([point[-1] ^ 1]),
        "compressed, off the curve": off_curve_point(),
        "hybrid form": bytes([6 + (point[-1] & 1)]) + point[1:],
        "no such prefix": b"\x05" + forms["compressed"][1:],
        "uncompressed, one byte short": point[:-1],
        "spki, cut short": der[:-1],
        "spki, trailing byte": der + b"\x00",
        "spki, point off the curve": der[:-1] + bytes([der[-1] ^ 1]),
        "spki, hybrid point": der[:-65] + bytes([6 + (point[-1] & 1)]) + point[1:],
        "a DER sequence, not a key": b"\x30\x03\x02\x01\x01" + bytes(40),
        "spki of a P-384 key": ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "spki of an Ed25519 key": ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    }


async def test_device_keys_are_validated_and_bounded(
    api: ApiClient, stores: Stores, settings: Settings
) -> None:
    citizen = await l2_citizen(stores)
    key = generate_device_key()
    for name, bad in not_device_keys(key).items():
        text = bad if isinstance(bad, str) else base64.b64encode(bad).decode()
        answer = await api.post("/v1/onecode/devices", json={"public_key": text}, headers=citizen.auth)
        problem(answer, 422, "invalid_input", "public_key")
        detail = answer.json()["detail"]
        assert "public_key" in detail and "uncompressed" in detail and "SubjectPublicKeyInfo" in detail, name
    problem(
        await api.post("/v1/onecode/devices", json={}, headers=citizen.auth),
        400,
        "malformed_request",
        "public_key",
    )

    made = await api.post(
        "/v1/onecode/devices", json={"public_key": public_key_b64(key)}, headers=citizen.auth
    )
    assert made.status_code == 201, made.text
    assert base64.b64decode(made.json()["public_key"]) == uncompressed(key)
    url_safe = base64.urlsafe_b64encode(key_forms(key.public_key())["compressed"]).decode().rstrip("=")
    same = await api.post("/v1/onecode/devices", json={"public_key": url_safe}, headers=citizen.auth)
    assert same.status_code == 200 and same.json()["id"] == made.json()["id"]
    other = await l2_citizen(stores)
    for form in key_forms(key.public_key()).values():  # the same key in another form is still taken
        taken = await api.post(
            "/v1/onecode/devices", json={"public_key": base64.b64encode(form).decode()}, headers=other.auth
        )
        problem(taken, 409, "device_key_taken", "public_key")
    for _ in range(settings.onecode_max_devices - 1):
        await device(api, citizen)
    one_more = await api.post(
        "/v1/onecode/devices",
        json={"public_key": public_key_b64(generate_device_key())},
        headers=citizen.auth,
    )
    problem(one_more, 409, "too_many_devices")
    l1 = await l1_citizen(stores)
    problem(
        await api.post("/v1/onecode/devices", json={"public_key": public_key_b64(key)}, headers=l1.auth),
        403,
        "insufficient_level",
    )


@pytest.mark.parametrize("form", ["uncompressed", "compressed", "spki", "spki_compressed"])
async def test_a_device_key_in_any_form_phones_export_is_kept_as_the_uncompressed_point(
    api: ApiClient, stores: Stores, form: str
) -> None:
    citizen = await l2_citizen(stores)
    key = generate_device_key()
    forms = key_forms(key.public_key())
    made = await api.post(
        "/v1/onecode/devices",
        json={"public_key": base64.b64encode(forms[form]).decode()},
        headers=citizen.auth,
    )
    assert made.status_code == 201, made.text
    assert made.json()["public_key"] == public_key_b64(key)
    async with connection(stores.pool, stores.settings) as conn:
        stored = await conn.fetchval(
            "SELECT public_key FROM onecode_devices WHERE id = $1", uuid.UUID(made.json()["id"])
        )
    assert bytes(stored) == uncompressed(key)
    for again in forms.values():  # every form of the same key is the same device
        answer = await api.post(
            "/v1/onecode/devices",
            json={"public_key": base64.urlsafe_b64encode(again).decode().rstrip("=")},
            headers=citizen.auth,
        )
        assert answer.status_code == 200 and answer.json()["id"] == made.json()["id"], answer.text


def test_what_is_not_a_device_key_is_refused_by_decode_public_key() -> None:
    for name, bad in not_device_keys(generate_device_key()).items():
        text = bad if isinstance(bad, str) else base64.b64encode(bad).decode()
        with pytest.raises(InvalidInput) as caught:
            devices.decode_public_key(text)
        assert caught.value.field == "public_key", name


def _mutated(secret: int, form: str, position: int, flip: int) -> bytes:
    raw = bytearray(key_forms(ec.derive_private_key(secret, ec.SECP256R1()).public_key())[form])
    if flip:
        raw[position % len(raw)] ^= flip
    return bytes(raw)


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(min_size=0, max_size=130),
        st.builds(
            _mutated,
            st.integers(min_value=1, max_value=2**255),
            st.sampled_from(["uncompressed", "compressed", "spki", "spki_compressed"]),
            st.integers(min_value=0, max_value=200),
            st.integers(min_value=0, max_value=255),
        ),
    )
)
def test_decode_public_key_accepts_exactly_the_forms_of_a_p256_key(raw: bytes) -> None:
    """Accepted iff the bytes are one of the forms of the key answered, which is the uncompressed point."""
    try:
        point = devices.decode_public_key(base64.b64encode(raw).decode())
    except InvalidInput as exc:
        assert exc.field == "public_key"
        return
    assert raw in key_forms(codec.device_public_key(point)).values()


@hypothesis_settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=2**255))
def test_decode_public_key_accepts_every_real_key_in_every_form(secret: int) -> None:
    key = ec.derive_private_key(secret, ec.SECP256R1())
    assert devices.decode_public_key(public_key_b64(key)) == uncompressed(key)
    for form in key_forms(key.public_key()).values():
        assert devices.decode_public_key(base64.b64encode(form).decode()) == uncompressed(key)
        assert devices.decode_public_key(base64.urlsafe_b64encode(form).decode().rstrip("=")) == uncompressed(
            key
        )


# --- the authorisation -----------------------------------------------------------------------------------


async def test_the_authorisation_is_signed_parseable_and_verifies_offline(
    api: ApiClient, stores: Stores, wired: Stores, settings: Settings
) -> None:
    citizen = await l2_citizen(stores)
    key, device_id = await device(api, citizen)
    problem(
        await api.post("/v1/onecode/authorisation", json={"device_id": device_id}, headers=citizen.auth),
        409,
        "nothing_linked",
    )
    await linked(api, citizen, "transit")
    card = card_number()
    await linked(api, citizen, "payment", card_number=card)
    problem(
        await api.post(
            "/v1/onecode/authorisation", json={"device_id": str(uuid.uuid4())}, headers=citizen.auth
        ),
        404,
        "device_not_found",
        "device_id",
    )
    problem(
        await api.post("/v1/onecode/authorisation", json={}, headers=citizen.auth),
        400,
        "malformed_request",
        "device_id",
    )
    problem(
        await api.post("/v1/onecode/authorisation", json={"device_id": "nope"}, headers=citizen.auth),
        400,
        "malformed_request",
        "device_id",
    )

    before = int(time.time())
    issued = await authorised(api, citizen, device_id)
    raw = base64.b64decode(issued["authorisation"])
    assert len(raw) == codec.AUTHORISATION_BYTES == 199
    parsed = codec.parse_authorisation(raw)
    assert parsed.code_id.hex() == issued["code_id"] and parsed.device_key == uncompressed(key)
    assert parsed.scenes == codec.SCENE_TRANSIT | codec.SCENE_PAYMENT and issued["scenes"] == [
        "transit",
        "payment",
    ]
    assert parsed.ride_cap_fen == settings.onecode_ride_cap_fen == issued["ride_cap_fen"]
    assert parsed.medical_handle == bytes(16) and parsed.payment_handle != bytes(16)
    assert before <= parsed.issued_at <= int(time.time())
    assert parsed.expires_at - parsed.issued_at == settings.onecode_authorisation_seconds <= 24 * 3600

    # The phone makes codes offline; codec.parse reads them, the bundle verifies them.
    phone = OneCodeClient(key, issued["authorisation"])
    text = phone.make_code(time.time())
    code = codec.parse(codec.unpack(text))
    assert code.authorisation.signed == raw[: codec.SIGNED_BYTES] and code.counter == 1
    bundle = await current_bundle(stores)
    assert parsed.issuer_kid in bundle.issuer_keys
    assert validator.verify(text, bundle, time.time(), scene=codec.SCENE_TRANSIT, fare_fen=200).reason == "ok"
    assert validator.verify(text, bundle, time.time(), scene=codec.SCENE_MEDICAL).reason == "wrong_scene"

    # The terminal side's look-ups.
    async with connection(stores.pool, stores.settings) as conn:
        record = await authorisations.by_code_id(conn, parsed.code_id)
        target = await authorisations.handle_target(conn, parsed.payment_handle, "payment")
        ride = await authorisations.transit_target(conn, parsed.code_id)
        assert await authorisations.handle_target(conn, parsed.payment_handle, "medical") is None
        assert await authorisations.handle_target(conn, secrets.token_bytes(16), "payment") is None
        assert await authorisations.by_code_id(conn, secrets.token_bytes(16)) is None
    assert record is not None and record.live() and record.account_id == citizen.account_id
    assert record.device_key == uncompressed(key) and str(record.device_id) == device_id
    assert (
        target is not None
        and target.provider_ref.startswith("tok_")
        and target.account_id == citizen.account_id
    )
    assert ride is not None and ride.kind == "transit" and ride.provider_ref.startswith("TA")

    # The GET shows it, for this device or any.
    overview = (await api.get("/v1/onecode", headers=citizen.auth)).json()
    assert overview["authorisation"]["code_id"] == issued["code_id"]
    assert [d["id"] for d in overview["devices"]] == [device_id]
    elsewhere = await api.get("/v1/onecode", params={"device_id": str(uuid.uuid4())}, headers=citizen.auth)
    assert elsewhere.json()["authorisation"] is None


async def test_medical_handle_resolves_to_the_insured_reference(
    api: ApiClient, stores: Stores, wired: Stores
) -> None:
    citizen = await l3_citizen(stores)
    await linked(api, citizen, "medical")
    _, device_id = await device(api, citizen)
    parsed = codec.parse_authorisation(
        base64.b64decode((await authorised(api, citizen, device_id))["authorisation"])
    )
    assert (
        parsed.scenes == codec.SCENE_MEDICAL
        and parsed.ride_cap_fen == 0
        and parsed.payment_handle == bytes(16)
    )
    vault = await stores.vault()
    async with transaction(stores.pool, stores.settings) as conn:
        with pytest.raises(ValueError, match="vault"):
            await authorisations.handle_target(conn, parsed.medical_handle, "medical")
        target = await authorisations.handle_target(conn, parsed.medical_handle, "medical", vault=vault)
    assert target is not None and target.kind == "medical"
    # The reference is what the platform answers e-voucher queries for.
    platform = providers.HttpMedicalInsurance(wired.settings.medical_insurance_url, timeout=2.0)
    try:
        voucher = await platform.ec_query(target.provider_ref, "H21010200001")
    finally:
        await platform.aclose()
    assert voucher.masked_id_number.endswith(citizen.id_number[-4:]) and voucher.ec_token


async def test_a_link_change_reissues_and_an_unlink_revokes(api: ApiClient, stores: Stores) -> None:
    citizen = await l2_citizen(stores)
    await linked(api, citizen, "transit")
    _, device_id = await device(api, citizen)
    first = await authorised(api, citizen, device_id)

    added = await linked(api, citizen, "payment", card_number=card_number())
    [second] = added["authorisations"]
    assert second["scenes"] == ["transit", "payment"] and second["device_id"] == device_id
    assert (await api.get("/v1/onecode", headers=citizen.auth)).json()["authorisation"]["code_id"] == second[
        "code_id"
    ]
    async with connection(stores.pool, stores.settings) as conn:
        kept = await authorisations.by_code_id(conn, bytes.fromhex(first["code_id"]))
    assert kept is not None and kept.live()  # it lacks a scene, it carries none the citizen lost

    removed = (await api.delete("/v1/onecode/links/transit", headers=citizen.auth)).json()
    [third] = removed["authorisations"]
    assert third["scenes"] == ["payment"] and third["ride_cap_fen"] == 0
    revoked = await authorisations.revocation_list(stores)
    assert {bytes.fromhex(first["code_id"]), bytes.fromhex(second["code_id"])} <= set(revoked)
    assert bytes.fromhex(third["code_id"]) not in revoked
    payment_handle = codec.parse_authorisation(base64.b64decode(second["authorisation"])).payment_handle
    async with connection(stores.pool, stores.settings) as conn:
        old = await authorisations.by_code_id(conn, bytes.fromhex(second["code_id"]))
        assert await authorisations.handle_target(conn, payment_handle, "payment") is None
        # A ride accepted offline before the unlink still settles against the transit account.
        ride = await authorisations.transit_target(conn, bytes.fromhex(first["code_id"]))
    assert old is not None and (old.status, old.revoked_reason) == ("revoked", "unlinked")
    assert ride is not None and ride.provider_ref.startswith("TA")

    # Nothing linked any more: no new authorisation, and the last one revoked.
    last = (await api.delete("/v1/onecode/links/payment", headers=citizen.auth)).json()
    assert last["authorisations"] == [] and last["scenes"] == []
    assert bytes.fromhex(third["code_id"]) in await authorisations.revocation_list(stores)


# --- lost phone ------------------------------------------------------------------------------------------


async def test_lost_phone_revokes_at_once_and_the_bundle_lists_it(api: ApiClient, stores: Stores) -> None:
    citizen = await l2_citizen(stores)
    await linked(api, citizen, "transit")
    await linked(api, citizen, "payment", card_number=card_number())
    lost_key, lost = await device(api, citizen)
    _, kept = await device(api, citizen)
    lost_auth = await authorised(api, citizen, lost)
    lost_older = await authorised(api, citizen, lost)
    kept_auth = await authorised(api, citizen, kept)
    phone = OneCodeClient(lost_key, lost_auth["authorisation"])
    text = phone.make_code(time.time())
    assert validator.verify(text, await current_bundle(stores), time.time(), scene=codec.SCENE_TRANSIT).valid

    problem(
        await api.post("/v1/onecode/lost-phone", json={"device_id": str(uuid.uuid4())}, headers=citizen.auth),
        404,
        "device_not_found",
        "device_id",
    )
    reported = await api.post("/v1/onecode/lost-phone", json={"device_id": lost}, headers=citizen.auth)
    assert reported.status_code == 200, reported.text
    assert reported.json() == {"revoked_devices": [lost], "revoked_authorisations": 2}

    lost_ids = {bytes.fromhex(lost_auth["code_id"]), bytes.fromhex(lost_older["code_id"])}
    bundle = await current_bundle(stores)
    assert lost_ids <= bundle.revoked and bytes.fromhex(kept_auth["code_id"]) not in bundle.revoked
    document = msgspec.json.decode(await authorisations.bundle_json(stores))
    assert document["format"] == "tongban-onecode-bundle/1" and lost_auth["code_id"] in document["revoked"]
    assert validator.verify(text, bundle, time.time(), scene=codec.SCENE_TRANSIT).reason == "revoked"
    handle = codec.parse_authorisation(base64.b64decode(lost_auth["authorisation"])).payment_handle
    async with connection(stores.pool, stores.settings) as conn:
        record = await authorisations.by_code_id(conn, bytes.fromhex(lost_auth["code_id"]))
        assert await authorisations.handle_target(conn, handle, "payment") is None
        messages = await inbox.list_messages(conn, citizen.account_id, limit=5, before=None)
    assert record is not None and (record.status, record.revoked_reason) == ("revoked", "lost_phone")
    assert not record.live()
    assert any(message.source == "onecode" for message in messages.messages)

    # The lost device can get nothing more, and its key never comes back.
    problem(
        await api.post("/v1/onecode/authorisation", json={"device_id": lost}, headers=citizen.auth),
        404,
        "device_not_found",
    )
    problem(
        await api.post(
            "/v1/onecode/devices", json={"public_key": public_key_b64(lost_key)}, headers=citizen.auth
        ),
        409,
        "device_key_revoked",
        "public_key",
    )
    overview = (await api.get("/v1/onecode", headers=citizen.auth)).json()
    assert [d["id"] for d in overview["devices"]] == [kept]
    assert overview["authorisation"]["code_id"] == kept_auth["code_id"]

    # Without a device id: every device. Again: nothing more to revoke.
    everything = await api.post("/v1/onecode/lost-phone", headers=citizen.auth)
    assert everything.json() == {"revoked_devices": [kept], "revoked_authorisations": 1}
    assert (await api.post("/v1/onecode/lost-phone", json={}, headers=citizen.auth)).json() == {
        "revoked_devices": [],
        "revoked_authorisations": 0,
    }


# --- history ---------------------------------------------------------------------------------------------


async def test_ride_and_payment_history_come_from_the_ledger(api: ApiClient, stores: Stores) -> None:
    citizen = await l2_citizen(stores)
    async with transaction(stores.pool, stores.settings) as conn:
        for number in range(3):
            entries = ledger.fare_entries(citizen.account_id, 200 + number)
            await ledger.post(
                conn, reference=f"trn-{secrets.token_hex(6)}", kind=ledger.FARE, entries=entries
            )
        entries = ledger.payment_entries(citizen.account_id, "pos-9", 5000)
        await ledger.post(conn, reference=f"pay-{secrets.token_hex(6)}", kind=ledger.PAYMENT, entries=entries)
    first = (await api.get("/v1/onecode/rides", params={"limit": 2}, headers=citizen.auth)).json()
    assert [item["amount_fen"] for item in first["items"]] == [202, 201] and first["next_before"]
    rest = (
        await api.get(
            "/v1/onecode/rides", params={"limit": 2, "before": first["next_before"]}, headers=citizen.auth
        )
    ).json()
    assert [item["amount_fen"] for item in rest["items"]] == [200] and rest["next_before"] is None
    payments = (await api.get("/v1/onecode/payments", headers=citizen.auth)).json()
    assert [(item["amount_fen"], item["kind"]) for item in payments["items"]] == [(5000, "payment")]
    problem(
        await api.get("/v1/onecode/rides", params={"limit": 0}, headers=citizen.auth),
        400,
        "malformed_request",
        "limit",
    )
    assert (await api.get("/v1/onecode/rides")).status_code == 401


async def test_the_links_command_shows_a_citizen_masked(api: ApiClient, stores: Stores) -> None:
    import asyncio

    from typer.testing import CliRunner

    from scripts.cli import app as cli_app

    citizen = await l2_citizen(stores)
    card = card_number()
    await linked(api, citizen, "payment", card_number=card)
    _, device_id = await device(api, citizen)
    issued = await authorised(api, citizen, device_id)
    shown = await asyncio.to_thread(
        CliRunner(env={"COLUMNS": "200"}).invoke, cli_app, ["onecode", "links", str(citizen.account_id)]
    )
    assert shown.exit_code == 0, shown.output
    assert "****" + card[-4:] in shown.output and card not in shown.output
    assert device_id in shown.output and issued["code_id"] in shown.output
    unknown = await asyncio.to_thread(CliRunner().invoke, cli_app, ["onecode", "links", "nope"])
    assert unknown.exit_code == 1 and "ACCOUNT" in unknown.output
