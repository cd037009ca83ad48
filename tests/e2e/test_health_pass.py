"""The health pass from a real server process, its PostgreSQL and Redis behind proxies the test cuts: the
PNG decodes (a real QR decoder) to a pass that verifies with the trust list and root fetched over HTTP;
with PostgreSQL down a cached pass is served until its exp and a pass that cannot be made is a 503; with
Redis down passes are signed from PostgreSQL and a status change still reaches the pass (the poll).
Never a 500."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zxingcpp
from PIL import Image

from core import clock
from core.settings import Settings
from core.stores import Stores
from health_code.certs import load_certificate
from health_code.trust import TrustStore, load_trust_list
from health_code.verify import verify
from tests.integration.test_health_pass_support import Citizen, l2_citizen, turn
from tests.support.proxy import OutageProxy, proxy_for, through_proxy
from tests.support.server import Process, running_server, tongban_env

pytestmark = pytest.mark.e2e

# Passes that need re-signing after 5 s and expire after 20 s: an outage outlives a cached pass's
# freshness, then its exp, within one test.
TTL, REFRESH = 20, 15


@pytest.fixture()
def proxied_server(tmp_path: Path, settings: Settings) -> Iterator[tuple[Process, OutageProxy, OutageProxy]]:
    assert settings.database_url and settings.redis_url
    pg_proxy, redis_proxy = proxy_for(settings.database_url), proxy_for(settings.redis_url)
    env = tongban_env(
        TONGBAN_DATABASE_URL=through_proxy(settings.database_url, pg_proxy),
        TONGBAN_REDIS_URL=through_proxy(settings.redis_url, redis_proxy),
        TONGBAN_DB_ACQUIRE_TIMEOUT="1",
        TONGBAN_REDIS_TIMEOUT="0.5",
        TONGBAN_RETRY_AFTER_SECONDS="3",
        TONGBAN_HEALTH_PASS_TTL_SECONDS=str(TTL),
        TONGBAN_HEALTH_PASS_REFRESH_SECONDS=str(REFRESH),
        TONGBAN_HEALTH_PASS_POLL_SECONDS="0.3",
    )
    try:
        with running_server(tmp_path, env) as process:
            yield process, pg_proxy, redis_proxy
    finally:
        pg_proxy.close()
        redis_proxy.close()


async def get(server: Process, path: str, citizen: Citizen | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=15) as client:
        return await client.get(path, headers=citizen.auth if citizen else None)


async def checkpoint_trust(server: Process) -> TrustStore:
    root = load_certificate((await get(server, "/v1/trust-list/root.pem")).content)
    return load_trust_list((await get(server, "/v1/trust-list")).content, root=root)


async def test_the_png_decodes_to_a_pass_that_verifies_with_the_published_list(
    proxied_server: tuple[Process, OutageProxy, OutageProxy], stores: Stores
) -> None:
    server, _, _ = proxied_server
    citizen = await l2_citizen(stores)
    png = await get(server, "/v1/health-pass.png", citizen)
    assert png.status_code == 200, png.text
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png.content)), formats=zxingcpp.BarcodeFormat.QRCode)
    assert [barcode.format for barcode in found] == [zxingcpp.BarcodeFormat.QRCode]
    payload = found[0].text
    assert payload == (await get(server, "/v1/health-pass", citizen)).json()["payload"]
    verdict = verify(payload, await checkpoint_trust(server), clock.now())
    assert verdict.valid, verdict.reason
    assert verdict.claims is not None and verdict.claims.colour == "green" and verdict.claims.name == "张*"
    assert "Traceback" not in server.log()


async def test_postgres_down_serves_cached_passes_until_their_exp(
    proxied_server: tuple[Process, OutageProxy, OutageProxy], stores: Stores
) -> None:
    server, pg_proxy, _ = proxied_server
    shown, never_shown = await l2_citizen(stores), await l2_citizen(stores)
    first = await get(server, "/v1/health-pass", shown)
    assert first.status_code == 200, first.text
    started = time.monotonic()
    exp = first.json()["exp"]

    pg_proxy.down()
    try:
        # Past its freshness the server tries PostgreSQL, fails, and shows the cached pass.
        await asyncio.sleep(max(0.0, TTL - REFRESH + 0.5 - (time.monotonic() - started)))
        again = await get(server, "/v1/health-pass", shown)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        assert (await get(server, "/v1/health-pass.png", shown)).status_code == 200

        # Nothing cached: no pass can be made without the status.
        refused = await get(server, "/v1/health-pass", never_shown)
        assert refused.status_code == 503 and refused.json()["code"] == "store_unavailable"
        assert refused.headers["retry-after"] == "3"

        # Past its exp the cached pass is not shown any more.
        await asyncio.sleep(max(0.0, TTL + 1 - (time.monotonic() - started)))
        expired = await get(server, "/v1/health-pass", shown)
        assert expired.status_code == 503
    finally:
        pg_proxy.up()

    async def recovered() -> httpx.Response:
        deadline = time.monotonic() + 20
        while True:
            answer = await get(server, "/v1/health-pass", never_shown)
            if answer.status_code == 200 or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.3)

    assert (await recovered()).status_code == 200
    renewed = await get(server, "/v1/health-pass", shown)
    assert renewed.status_code == 200 and renewed.json()["exp"] != exp
    assert "Traceback" not in server.log()
    assert " 500 " not in server.log()


async def test_redis_down_signs_from_postgres_and_status_changes_still_arrive(
    proxied_server: tuple[Process, OutageProxy, OutageProxy], stores: Stores
) -> None:
    server, _, redis_proxy = proxied_server
    cached = await l2_citizen(stores)
    assert (await get(server, "/v1/health-pass", cached)).status_code == 200

    redis_proxy.down()
    try:
        fresh = await l2_citizen(stores)
        made = await get(server, "/v1/health-pass", fresh)
        assert made.status_code == 200, made.text
        assert verify(made.json()["payload"], await checkpoint_trust(server), clock.now()).valid

        # The change is published on the real Redis, which the server cannot reach: its poll finds it.
        await turn(stores, cached.account_id, "red")
        deadline = time.monotonic() + 10
        while (await get(server, "/v1/health-pass", cached)).json()["colour"] != "red":
            assert time.monotonic() < deadline, "the status change did not reach the pass"
            await asyncio.sleep(0.2)
    finally:
        redis_proxy.up()
    assert (await get(server, "/v1/health-pass", fresh)).status_code == 200
    assert "Traceback" not in server.log()
