"""Start-up with a store down, and outages while running: clear errors, 503s, recovery without restart."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from tests.support.proxy import OutageProxy, proxy_for, through_proxy
from tests.support.server import Process, free_port, running_server, tongban_env

pytestmark = pytest.mark.e2e


def _serve_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.cli", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_bad_setting_stops_start_up_with_one_line() -> None:
    result = _serve_once(tongban_env(TONGBAN_PORT="eighty"))
    assert result.returncode == 2
    assert result.stderr.strip() == "tongban: TONGBAN_PORT: Expected `int`, got `str`"


@pytest.mark.parametrize("store", ["postgres", "redis"])
def test_store_down_at_start_retries_then_fails_clearly(store: str) -> None:
    closed = f"127.0.0.1:{free_port()}"
    overrides = {"TONGBAN_DB_CONNECT_ATTEMPTS": "3"}
    if store == "postgres":
        overrides["TONGBAN_DATABASE_URL"] = f"postgresql://postgres@{closed}/nothing"
    else:
        overrides["TONGBAN_REDIS_URL"] = f"redis://{closed}/0"
    started = time.monotonic()
    result = _serve_once(tongban_env(**overrides))
    assert result.returncode == 1
    name = "PostgreSQL" if store == "postgres" else "Redis"
    assert result.stderr.strip().splitlines()[-1] == (
        f"tongban: {name} is unavailable: check the URL and that the server is running"
    )
    assert time.monotonic() - started >= 0.5  # two backoff waits: 0.2 s + 0.4 s
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture()
def proxied_server(tmp_path: Path, settings: Settings) -> Iterator[tuple[Process, OutageProxy, OutageProxy]]:
    assert settings.database_url and settings.redis_url
    pg_proxy, redis_proxy = proxy_for(settings.database_url), proxy_for(settings.redis_url)
    env = tongban_env(
        TONGBAN_BENCH_ROUTES="true",
        TONGBAN_DATABASE_URL=through_proxy(settings.database_url, pg_proxy),
        TONGBAN_REDIS_URL=through_proxy(settings.redis_url, redis_proxy),
        TONGBAN_DB_ACQUIRE_TIMEOUT="1",
        TONGBAN_RETRY_AFTER_SECONDS="3",
    )
    try:
        with running_server(tmp_path, env) as process:
            yield process, pg_proxy, redis_proxy
    finally:
        pg_proxy.close()
        redis_proxy.close()


def _eventually(check: object, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = check()  # type: ignore[operator]
        if response is not None or time.monotonic() > deadline:
            return response  # type: ignore[no-any-return]
        time.sleep(0.3)


@pytest.mark.parametrize(("store", "route"), [("postgres", "/v1/bench/db"), ("redis", "/v1/bench/redis")])
def test_outage_gives_503_then_recovers_without_restart(
    proxied_server: tuple[Process, OutageProxy, OutageProxy], store: str, route: str
) -> None:
    server, pg_proxy, redis_proxy = proxied_server
    proxy = pg_proxy if store == "postgres" else redis_proxy
    assert httpx.get(server.base_url + route).status_code == 200

    proxy.down()
    ready = httpx.get(server.base_url + "/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.headers["retry-after"] == "3"
    assert ready.headers["content-type"] == "application/problem+json"
    assert f"{store}: down" in ready.json()["detail"]

    failed = httpx.get(server.base_url + route, timeout=10)
    assert failed.status_code == 503
    assert failed.headers["retry-after"] == "3"
    assert failed.json()["code"] == "store_unavailable"
    # The other store's route keeps working: one outage does not take the whole API down.
    other = "/v1/bench/redis" if store == "postgres" else "/v1/bench/db"
    assert httpx.get(server.base_url + other, timeout=10).status_code == 200

    proxy.up()

    def recovered() -> httpx.Response | None:
        response = httpx.get(server.base_url + route, timeout=10)
        return response if response.status_code == 200 else None

    assert _eventually(recovered) is not None
    assert httpx.get(server.base_url + "/readyz").status_code == 200
    assert server.proc.poll() is None
    assert "Traceback" not in server.log()
