"""`tongban health signer rotate` against the real PostgreSQL and Redis: the next key is certified and
signs the next passes; the old certificate is retired but stays in the published trust list (and in the
API process's TrustStore) until its passes have expired, then leaves it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import msgspec
import pytest
from click.testing import Result
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from api.app import create_app
from core import clock
from core.settings import Settings
from core.stores import Stores
from health_code import certs, issuer, passes, trustlist
from health_code.passes import PASSES
from health_code.trust import TrustStore, load_trust_list
from health_code.trustlist import TRUST
from health_code.verify import verify
from scripts.cli import app as cli_app
from tests.integration.test_health_pass_support import eventually, l2_citizen

ApiClient = AsyncTestClient  # type: ignore[type-arg]


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[ApiClient]:
    # Key caches that follow a rotation at once, a fast poll and a new trust list on every request.
    fast = msgspec.structs.replace(
        settings, key_cache_seconds=0.0, health_pass_poll_seconds=0.2, health_trust_list_seconds=0.0
    )
    trustlist.forget_published()  # another module's app may have left a list it serves for 5 s
    async with AsyncTestClient(app=create_app(fast)) as client:
        yield client


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner(env={"COLUMNS": "200"}).invoke, cli_app, list(args))


async def published(api: ApiClient) -> TrustStore:
    root = certs.load_certificate((await api.get("/v1/trust-list/root.pem")).content)
    return load_trust_list((await api.get("/v1/trust-list")).content, root=root)


async def test_rotation_keeps_old_passes_valid_until_they_expire(
    api: ApiClient, stores: Stores, settings: Settings
) -> None:
    citizen = await l2_citizen(stores)
    before = (await api.get("/v1/health-pass", headers=citizen.auth)).json()

    rotated = await cli("health", "signer", "rotate")
    assert rotated.exit_code == 0, rotated.output
    assert "1 retired" in rotated.output

    # The pass cached before is still shown (nothing changed for the citizen); a new one comes from the
    # new signer.
    PASSES.clear()
    await stores.redis.delete(passes._redis_key(citizen.account_id, 1))
    after = (await api.get("/v1/health-pass", headers=citizen.auth)).json()
    assert after["kid"] != before["kid"]
    assert after["kid"] in rotated.output

    now = clock.now()
    listed = await published(api)
    assert {signer.kid_b64 for signer in listed.all_signers()} >= {before["kid"], after["kid"]}
    assert verify(before["payload"], listed, now).valid
    assert verify(after["payload"], listed, now).valid

    async def both_online() -> bool | None:
        store = TRUST.store
        ok = verify(before["payload"], store, now).valid and verify(after["payload"], store, now).valid
        return True if ok else None

    assert await eventually(both_online, timeout=5)

    infos = {info.kid: info for info in await issuer.certificate_list(stores)}
    old, new = infos[before["kid"]], infos[after["kid"]]
    assert (old.status, new.status) == ("retired", "active")
    assert old.retired_at is not None and old.trusted_until is not None
    # Trusted for a pass lifetime (plus the key cache and some slack) after it stopped signing.
    lifetime = timedelta(seconds=settings.health_pass_ttl_seconds)
    assert lifetime < old.trusted_until - old.retired_at < lifetime + timedelta(minutes=10)
    shown = await cli("health", "signer", "list")
    assert shown.exit_code == 0 and before["kid"] in shown.output and "retired" in shown.output

    # Once its passes have expired the old signer leaves the list.
    await stores.pool.execute(
        "UPDATE pass_certificates SET trusted_until = now() - interval '1 second' WHERE status = 'retired'"
    )
    listed = await published(api)
    assert before["kid"] not in {signer.kid_b64 for signer in listed.all_signers()}
    assert verify(before["payload"], listed, now).reason == "unknown_kid"
    assert verify(after["payload"], listed, now).valid
