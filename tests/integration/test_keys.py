"""The signing key store against the real PostgreSQL. Each test uses its own purpose."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization

from core import keys
from core.errors import StoreUnavailable
from core.masterkey import key_id, master_keyring, new_key_text
from core.settings import Settings, SettingsError
from core.stores import Stores, close_stores, open_stores
from tests.support.proxy import proxy_for, through_proxy


def new_purpose() -> str:
    return "t" + secrets.token_hex(6)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "someone", "exp": int(time.time()) + 300, **extra}


@asynccontextmanager
async def other_process(settings: Settings, **changes: Any) -> AsyncIterator[Stores]:
    """Stores with their own pool, hence their own key cache: what another worker process would have."""
    opened = await open_stores(msgspec.structs.replace(settings, **changes))
    try:
        yield opened
    finally:
        await close_stores(opened)


async def rows(stores: Stores, purpose: str) -> list[dict[str, Any]]:
    records = await stores.pool.fetch(
        "SELECT kid, status, private_key_enc, public_jwk, master_key_id FROM signing_keys WHERE purpose = $1",
        purpose,
    )
    return [dict(r) for r in records]


def verify_with_jwks(jwks: dict[str, Any], token: str) -> dict[str, Any]:
    key_set = jwt.PyJWKSet.from_dict(jwks)
    kid = jwt.get_unverified_header(token)["kid"]
    decoded: dict[str, Any] = jwt.decode(token, key_set[kid].key, algorithms=["ES256"])
    return decoded


async def test_ensure_keys_is_idempotent(stores: Stores) -> None:
    purpose = new_purpose()
    made = await keys.ensure_keys(stores, purpose)
    assert sorted(k.status for k in made) == ["active", "next"]
    assert await keys.ensure_keys(stores, purpose) == []
    assert await keys.ensure_keys(stores, purpose) == []

    listed = await keys.list_keys(stores, purpose)
    assert {k.kid for k in listed} == {k.kid for k in made}
    by_status = {k.status: k for k in listed}
    assert by_status["active"].activated_at is not None and by_status["next"].activated_at is None
    assert all(k.alg == "ES256" and k.retired_at is None for k in listed)
    assert all(k.master_key_id == master_keyring(stores.settings).current_id for k in listed)
    # Only key information: no field can carry private material.
    assert set(keys.KeyInfo.__struct_fields__) == {
        "kid",
        "purpose",
        "alg",
        "status",
        "master_key_id",
        "created_at",
        "activated_at",
        "retired_at",
    }


async def test_concurrent_ensure_from_several_connections_makes_one_pair(
    stores: Stores, settings: Settings
) -> None:
    purpose = new_purpose()
    async with other_process(settings) as second, other_process(settings) as third:
        results = await asyncio.gather(
            *(keys.ensure_keys(s, purpose) for _ in range(4) for s in (stores, second, third))
        )
    assert sum(len(made) for made in results) == 2  # exactly one caller made the pair
    assert sorted(r["status"] for r in await rows(stores, purpose)) == ["active", "next"]


async def test_concurrent_rotations_serialise_into_a_chain(stores: Stores, settings: Settings) -> None:
    purpose = new_purpose()
    await keys.ensure_keys(stores, purpose)
    async with other_process(settings) as second:
        rotations = await asyncio.gather(
            *(keys.rotate(s, purpose) for _ in range(3) for s in (stores, second))
        )
    statuses = sorted(r["status"] for r in await rows(stores, purpose))
    assert statuses == ["active", "next"] + ["retired"] * 6
    # Each rotation promoted the key the previous one made next: no key was skipped or promoted twice.
    activated = [r.activated.kid for r in rotations]
    made_next = {r.next.kid for r in rotations}
    assert len(set(activated)) == 6
    assert len(made_next & set(activated)) == 5


async def test_rotation_keeps_old_tokens_verifiable_and_new_ones_verify_at_once(stores: Stores) -> None:
    purpose = new_purpose()
    await keys.ensure_keys(stores, purpose)
    before = {k.status: k.kid for k in await keys.list_keys(stores, purpose)}
    old_signer = await keys.active_signer(stores, purpose)
    assert old_signer.kid == before["active"]
    old_token = old_signer.sign_jwt(claims(n=1))
    jwks_before = await keys.jwks(stores, purpose)
    assert [k["kid"] for k in jwks_before["keys"]] == [before["active"], before["next"]]

    rotation = await keys.rotate(stores, purpose)
    assert rotation.retired is not None and rotation.retired.kid == before["active"]
    assert rotation.retired.status == "retired" and rotation.retired.retired_at is not None
    assert rotation.activated.kid == before["next"] and rotation.activated.status == "active"
    assert rotation.next.kid not in before.values() and rotation.next.status == "next"
    assert not rotation.created_from_empty

    new_signer = await keys.active_signer(stores, purpose)  # rotate() refreshed this process at once
    assert new_signer.kid == before["next"]
    new_token = new_signer.sign_jwt(claims(n=2))

    jwks_after = await keys.jwks(stores, purpose)
    assert {k["kid"] for k in jwks_after["keys"]} == {before["active"], before["next"], rotation.next.kid}
    for jwk in jwks_after["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
        assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("EC", "P-256", "sig", "ES256")
    assert verify_with_jwks(jwks_after, old_token)["n"] == 1
    assert verify_with_jwks(jwks_after, new_token)["n"] == 2
    # A verifier still holding the JWKS from before the rotation already knows the promoted key.
    assert verify_with_jwks(jwks_before, new_token)["n"] == 2
    assert msgspec.json.decode(await keys.jwks_json(stores, purpose)) == jwks_after

    assert (await keys.verify_jwt(stores, purpose, old_token))["n"] == 1
    assert (await keys.verify_jwt(stores, purpose, new_token))["n"] == 2


async def test_rotating_a_purpose_without_keys_creates_them(stores: Stores) -> None:
    purpose = new_purpose()
    rotation = await keys.rotate(stores, purpose)
    assert rotation.created_from_empty and rotation.retired is None
    assert (rotation.activated.status, rotation.next.status) == ("active", "next")
    assert sorted(r["status"] for r in await rows(stores, purpose)) == ["active", "next"]


async def test_first_signer_use_makes_the_keys(stores: Stores) -> None:
    purpose = new_purpose()
    signer = await keys.active_signer(stores, purpose)
    assert {r["kid"]: r["status"] for r in await rows(stores, purpose)}[signer.kid] == "active"


async def test_retired_keys_leave_the_jwks_after_the_publication_window(stores: Stores) -> None:
    purpose = new_purpose()
    await keys.ensure_keys(stores, purpose)
    first_token = (await keys.active_signer(stores, purpose)).sign_jwt(claims())
    first = await keys.rotate(stores, purpose)
    second = await keys.rotate(stores, purpose)
    assert first.retired is not None and second.retired is not None
    days = stores.settings.key_retired_publish_days
    await stores.pool.execute(
        "UPDATE signing_keys SET retired_at = now() - make_interval(secs => $2) WHERE kid = $1",
        first.retired.kid,
        (days + 1) * 86400.0,
    )
    keys.clear_cache(stores, purpose)
    published = {k["kid"] for k in (await keys.jwks(stores, purpose))["keys"]}
    assert first.retired.kid not in published
    assert {second.retired.kid, second.activated.kid, second.next.kid} <= published
    assert await keys.public_key(stores, purpose, first.retired.kid) is None
    assert await keys.public_key(stores, purpose, second.retired.kid) is not None
    with pytest.raises(jwt.InvalidTokenError, match="unknown kid"):
        await keys.verify_jwt(stores, purpose, first_token)
    # Still listed for ops: it left the JWKS, not the store.
    assert first.retired.kid in {k.kid for k in await keys.list_keys(stores, purpose)}


async def test_stored_private_key_is_encrypted(stores: Stores) -> None:
    purpose = new_purpose()
    await keys.ensure_keys(stores, purpose)
    signer = await keys.active_signer(stores, purpose)
    private_key = signer.private_key
    der = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    scalar = private_key.private_numbers().private_value.to_bytes(32, "big")
    stored = {r["kid"]: r for r in await rows(stores, purpose)}[signer.kid]
    blob = bytes(stored["private_key_enc"])
    for secret in (der, pem, scalar, base64.urlsafe_b64encode(scalar).rstrip(b"="), scalar.hex().encode()):
        assert secret not in blob
        assert secret not in stored["public_jwk"].encode()
    assert "d" not in msgspec.json.decode(stored["public_jwk"])
    assert (
        keys.unwrap_private_key(
            master_keyring(stores.settings).current, blob, kid=signer.kid, purpose=purpose
        )
        == der
    )


async def test_the_wrong_master_key_fails_naming_the_variable(stores: Stores, settings: Settings) -> None:
    purpose = new_purpose()
    await keys.ensure_keys(stores, purpose)
    async with other_process(settings, master_key=new_key_text(), master_key_file=None) as wrong:
        with pytest.raises(SettingsError) as info:
            await keys.active_signer(wrong, purpose)
    message = str(info.value)
    assert message.startswith("TONGBAN_MASTER_KEY:") and "\n" not in message
    assert master_keyring(settings).current_id in message
    assert len(await rows(stores, purpose)) == 2  # and it did not make keys of its own


async def test_ciphertext_swapped_between_rows_does_not_load(stores: Stores, settings: Settings) -> None:
    purpose = new_purpose()
    await keys.ensure_keys(stores, purpose)
    original = {r["kid"]: r["private_key_enc"] for r in await rows(stores, purpose)}
    swap = """UPDATE signing_keys AS a SET private_key_enc = b.private_key_enc
              FROM signing_keys AS b
              WHERE a.purpose = $1 AND b.purpose = $1 AND a.kid <> b.kid"""
    await stores.pool.execute(swap, purpose)
    try:
        async with other_process(settings) as fresh:
            with pytest.raises(keys.KeyStoreError, match="does not decrypt") as info:
                await keys.active_signer(fresh, purpose)
        assert "\n" not in str(info.value)
    finally:
        await stores.pool.executemany(
            "UPDATE signing_keys SET private_key_enc = $2 WHERE kid = $1", list(original.items())
        )
    async with other_process(settings) as fresh:
        await keys.active_signer(fresh, purpose)  # the same blobs in their own rows load again


async def test_signer_cache_picks_up_a_rotation_after_its_ttl(stores: Stores, settings: Settings) -> None:
    purpose = new_purpose()
    await keys.ensure_keys(stores, purpose)
    async with other_process(settings, key_cache_seconds=0.5) as worker:
        before = await keys.active_signer(worker, purpose)
        rotation = await keys.rotate(stores, purpose)  # another process rotates
        assert rotation.retired is not None and rotation.retired.kid == before.kid
        assert (await keys.active_signer(worker, purpose)).kid == before.kid  # served from cache
        await asyncio.sleep(0.6)
        after = await keys.active_signer(worker, purpose)
    assert after.kid == rotation.activated.kid


async def test_unknown_kids_cost_at_most_one_reload_per_interval(
    stores: Stores, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    purpose = new_purpose()
    await keys.ensure_keys(stores, purpose)
    reloads = 0
    real_fetch: Callable[..., Any] = keys._fetch_snapshot

    async def counting_fetch(*args: Any) -> Any:
        nonlocal reloads
        reloads += 1
        return await real_fetch(*args)

    monkeypatch.setattr(keys, "_fetch_snapshot", counting_fetch)
    async with other_process(settings, key_cache_seconds=600.0, key_unknown_kid_seconds=0.5) as worker:
        await keys.jwks(worker, purpose)
        assert reloads == 1
        # An attacker's stream of made-up kids, well-formed or not.
        for _ in range(100):
            assert await keys.public_key(worker, purpose, keys.b64url(secrets.token_bytes(32))) is None
            assert await keys.public_key(worker, purpose, "not-a-kid' OR 1=1") is None
        await asyncio.gather(
            *(keys.public_key(worker, purpose, keys.b64url(secrets.token_bytes(32))) for _ in range(100))
        )
        assert reloads == 1
        rotation = await keys.rotate(stores, purpose)  # another process makes a new next key
        await asyncio.sleep(0.6)
        # Past the interval, the first unknown kid reloads once and the fresh key is found.
        assert await keys.public_key(worker, purpose, rotation.next.kid) is not None
        assert reloads == 2
        assert await keys.public_key(worker, purpose, rotation.next.kid) is not None
        assert reloads == 2


async def test_verify_jwt_rejects_foreign_unsigned_and_kidless_tokens(stores: Stores) -> None:
    purpose, other = new_purpose(), new_purpose()
    signer = await keys.active_signer(stores, purpose)
    foreign = (await keys.active_signer(stores, other)).sign_jwt(claims())
    with pytest.raises(jwt.InvalidTokenError, match="unknown kid"):
        await keys.verify_jwt(stores, purpose, foreign)
    unsigned = jwt.encode(claims(), "", algorithm="none", headers={"kid": signer.kid})
    with pytest.raises(jwt.InvalidAlgorithmError):
        await keys.verify_jwt(stores, purpose, unsigned)
    hmac = jwt.encode(claims(), "x" * 32, algorithm="HS256", headers={"kid": signer.kid})
    with pytest.raises(jwt.InvalidAlgorithmError):
        await keys.verify_jwt(stores, purpose, hmac)
    kidless = jwt.encode(claims(), signer.private_key, algorithm="ES256")
    with pytest.raises(jwt.InvalidTokenError, match="missing kid"):
        await keys.verify_jwt(stores, purpose, kidless)
    expired = signer.sign_jwt(claims(exp=int(time.time()) - 60))
    with pytest.raises(jwt.ExpiredSignatureError):
        await keys.verify_jwt(stores, purpose, expired)


async def test_bad_purpose_names_are_refused(stores: Stores) -> None:
    from core.errors import InvalidInput

    for bad in ("", "Token", "to ken", "x" * 33, "t\x00"):
        with pytest.raises(InvalidInput):
            await keys.ensure_keys(stores, bad)
        with pytest.raises(InvalidInput):
            await keys.rotate(stores, bad)


async def test_rewrap_moves_keys_to_a_new_master_key_and_keeps_them(
    stores: Stores, settings: Settings
) -> None:
    purpose = new_purpose()
    await keys.ensure_keys(stores, purpose)
    old_text = base64.urlsafe_b64encode(master_keyring(settings).current).decode().rstrip("=")
    old_id = master_keyring(settings).current_id
    new_text = new_key_text()
    new_id = key_id(base64.urlsafe_b64decode(new_text + "=" * (-len(new_text) % 4)))
    old_token = (await keys.active_signer(stores, purpose)).sign_jwt(claims(n=1))
    before = {r["kid"]: r for r in await rows(stores, purpose)}
    everything_before = {k.kid for k in await keys.list_keys(stores)}
    try:
        # With only the new key, nothing can be unwrapped: one line naming the variable, nothing changed.
        async with other_process(settings, master_key=new_text, master_key_file=None) as new_only:
            with pytest.raises(SettingsError, match=r"^TONGBAN_MASTER_KEY: .*" + old_id):
                await keys.rewrap(new_only)
        assert {r["master_key_id"] for r in await rows(stores, purpose)} == {old_id}

        progress: list[tuple[int, int]] = []
        async with other_process(settings, master_key=f"{new_text},{old_text}", master_key_file=None) as both:
            result = await keys.rewrap(both, on_progress=lambda done, total: progress.append((done, total)))
            again = await keys.rewrap(both)
        assert result.rewrapped == result.total == len(everything_before) and result.master_key_id == new_id
        assert progress[0] == (0, result.total) and progress[-1] == (result.total, result.total)
        assert again.rewrapped == 0

        after = {r["kid"]: r for r in await rows(stores, purpose)}
        assert after.keys() == before.keys()
        assert {k.kid for k in await keys.list_keys(stores)} == everything_before
        for kid, row in after.items():
            assert row["master_key_id"] == new_id
            assert row["private_key_enc"] != before[kid]["private_key_enc"]
            assert row["public_jwk"] == before[kid]["public_jwk"]

        async with other_process(settings, master_key=new_text, master_key_file=None) as new_only:
            signer = await keys.active_signer(new_only, purpose)
            assert signer.kid in before
            new_token = signer.sign_jwt(claims(n=2))
            assert (await keys.verify_jwt(new_only, purpose, old_token))["n"] == 1
            assert (await keys.verify_jwt(new_only, purpose, new_token))["n"] == 2
            jwks = await keys.jwks(new_only, purpose)
        assert verify_with_jwks(jwks, old_token)["n"] == 1 and verify_with_jwks(jwks, new_token)["n"] == 2
        # Same key material: the signature from before the rewrap checks against the same public key.
        async with other_process(settings, master_key=old_text, master_key_file=None) as old_only:
            with pytest.raises(SettingsError, match=r"^TONGBAN_MASTER_KEY: .*" + new_id):
                await keys.active_signer(old_only, purpose)
    finally:
        # Put every key back under the suite's master key for the other tests.
        async with other_process(settings, master_key=f"{old_text},{new_text}", master_key_file=None) as back:
            await keys.rewrap(back)
    assert {r["master_key_id"] for r in await rows(stores, purpose)} == {old_id}


async def test_keys_keep_working_from_cache_while_postgresql_is_down(
    stores: Stores, settings: Settings
) -> None:
    purpose = new_purpose()
    await keys.ensure_keys(stores, purpose)
    proxy = proxy_for(settings.database_url or "")
    try:
        proxied = msgspec.structs.replace(
            settings, database_url=through_proxy(settings.database_url or "", proxy), db_acquire_timeout=1.0
        )
        async with other_process(proxied, key_cache_seconds=0.2) as worker:
            signer = await keys.active_signer(worker, purpose)
            proxy.down()
            await asyncio.sleep(0.3)  # past the cache time: the reload fails, the cached keys stay in use
            assert (await keys.active_signer(worker, purpose)).kid == signer.kid
            assert await keys.public_key(worker, purpose, signer.kid) is not None
            token = signer.sign_jwt(claims())
            assert (await keys.verify_jwt(worker, purpose, token))["sub"] == "someone"
            # A process that never loaded the keys cannot make them up: it reports the outage.
            keys.clear_cache(worker, purpose)
            with pytest.raises(StoreUnavailable):
                await keys.active_signer(worker, purpose)
            proxy.up()
            assert (await keys.active_signer(worker, purpose)).kid == signer.kid
    finally:
        proxy.close()
