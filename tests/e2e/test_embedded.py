"""With no store URLs configured, `tongban serve` brings its own PostgreSQL and Valkey and stops them."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.server import embedded_data_dir, running_server, tongban_env

pytestmark = pytest.mark.e2e


def _processes_using(path: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(attrs=["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmdline and ("postgres" in cmdline or "valkey" in cmdline):
            found.append(cmdline)
    return found


def test_serve_without_urls_runs_on_embedded_stores(tmp_path: Path) -> None:
    with embedded_data_dir() as data_dir:
        _serve_and_check(tmp_path, data_dir)


def _serve_and_check(tmp_path: Path, data_dir: Path) -> None:
    env = tongban_env(
        TONGBAN_DATABASE_URL=None,
        TONGBAN_REDIS_URL=None,
        TONGBAN_DATA_DIR=str(data_dir),
        TONGBAN_MASTER_KEY_FILE=None,
        TONGBAN_BENCH_ROUTES="true",
    )
    with running_server(tmp_path, env) as server:
        ready = httpx.get(server.base_url + "/readyz")
        assert ready.status_code == 200 and ready.json()["migrations"] == "current"
        assert httpx.get(server.base_url + "/v1/bench/db").json() == {"value": 42}
        assert httpx.get(server.base_url + "/v1/bench/redis").json() == {"value": 1}
        assert _processes_using(data_dir), "embedded servers should run under the data dir"
        assert (data_dir / "pg" / "PG_VERSION").exists()
    assert _processes_using(data_dir) == []
