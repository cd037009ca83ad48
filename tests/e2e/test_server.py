"""`tongban serve` as a real process, spoken to over HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core import migrate
from core.settings import Settings
from tests.support.server import Process, running_server, tongban_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Process]:
    env = tongban_env(TONGBAN_BENCH_ROUTES="true")
    with running_server(tmp_path_factory.mktemp("server"), env, workers=2) as process:
        yield process


def test_ready_with_current_schema(server: Process) -> None:
    response = httpx.get(server.base_url + "/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "postgres": "ok", "redis": "ok", "migrations": "current"}


def test_liveness(server: Process) -> None:
    assert httpx.get(server.base_url + "/healthz").json() == {"status": "ok"}


def test_openapi_document_and_docs_ui(server: Process) -> None:
    schema = httpx.get(server.base_url + "/schema").json()
    assert schema["openapi"].startswith("3.1")
    assert "/readyz" in schema["paths"]
    docs = httpx.get(server.base_url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_unknown_route_is_problem_json(server: Process) -> None:
    response = httpx.get(server.base_url + "/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"
    assert response.headers["x-request-id"]


def test_store_round_trip_routes(server: Process) -> None:
    assert httpx.get(server.base_url + "/v1/bench/db").json() == {"value": 42}
    assert httpx.get(server.base_url + "/v1/bench/redis").json()["value"] >= 1


def test_metrics_count_requests_across_workers(server: Process) -> None:
    for _ in range(6):
        httpx.get(server.base_url + "/v1/bench/hello")
    text = httpx.get(server.base_url + "/metrics").text
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("tongban_requests_total") and "/v1/bench/hello" in line
    ]
    assert lines and sum(float(line.rsplit(" ", 1)[1]) for line in lines) >= 6


def test_no_stack_trace_in_the_log(server: Process) -> None:
    httpx.get(server.base_url + "/v1/nothing-here")
    assert "Traceback" not in server.log()


def test_schema_is_at_head(settings: Settings) -> None:
    assert settings.database_url is not None
    assert migrate.current(settings.database_url) == migrate.head()
    assert os.environ["TONGBAN_DATABASE_URL"] == settings.database_url


def test_serve_refuses_a_missing_production_setting(tmp_path: Path) -> None:
    env = tongban_env(TONGBAN_ENV="production", TONGBAN_DATABASE_URL=None)
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["tongban: TONGBAN_DATABASE_URL: required when TONGBAN_ENV=production"]
