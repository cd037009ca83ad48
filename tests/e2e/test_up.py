"""The README's run command: `tongban up` on a machine with nothing configured brings up embedded stores,
migrations, demo data, the sandbox providers, the job worker and the API, and a citizen can log in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sandbox.providers import PROVIDERS
from tests.support.auth import login
from tests.support.server import ROOT, embedded_data_dir, free_port, start, tongban_env, wait_ready

pytestmark = pytest.mark.e2e


def test_up_serves_demo_data_and_logs_a_citizen_in(tmp_path: Path) -> None:
    with embedded_data_dir() as data_dir:
        _up_and_try(tmp_path, data_dir)


def _up_and_try(tmp_path: Path, data_dir: Path) -> None:
    port = free_port()
    overrides: dict[str, str | None] = {
        "TONGBAN_DATABASE_URL": None,
        "TONGBAN_REDIS_URL": None,
        "TONGBAN_MASTER_KEY_FILE": None,
        "TONGBAN_DATA_DIR": str(data_dir),
    }
    for provider in PROVIDERS.values():
        provider_port = free_port()
        overrides[f"TONGBAN_{provider.port_setting.upper()}"] = str(provider_port)
        overrides[f"TONGBAN_{provider.url_setting.upper()}"] = f"http://127.0.0.1:{provider_port}"
    env = tongban_env(**overrides)
    process = start(["up", "--port", str(port)], env, tmp_path / "up.log", port)
    try:
        wait_ready(process, timeout=90)
        assert httpx.get(process.base_url + "/readyz").json()["status"] == "ready"
        # Demo data: the token signing keys exist (read through the CLI, which finds the running stores).
        keys = subprocess.run(
            [sys.executable, "-m", "scripts.cli", "keys", "list", "--purpose", "token"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert keys.returncode == 0, keys.stderr
        assert "active" in keys.stdout and "next" in keys.stdout
        # The worker and the sandbox SMS gateway are up: a code reaches the outbox and logs a citizen in.
        sms_url = overrides["TONGBAN_SMS_GATEWAY_URL"]
        assert sms_url
        tokens = login(process.base_url, sms_url, "13700001111")
        assert tokens["level"] == 1
        # The demo citizen is already verified, and the sandbox registries know the demo identities.
        demo = login(process.base_url, sms_url, "13800138000")
        assert demo["level"] == 2
        me = httpx.get(
            process.base_url + "/v1/me", headers={"Authorization": "Bearer " + demo["access_token"]}
        )
        assert me.json()["name"] == "张*" and me.json()["id_number"] == "1101**********002X"
        verified = httpx.post(
            process.base_url + "/v1/me/real-name",
            json={"name": "李四", "id_number": "110105198001011238"},
            headers={"Authorization": "Bearer " + tokens["access_token"]},
        )
        assert verified.status_code == 200 and verified.json()["level"] == 2
        enterprise = httpx.post(
            process.base_url + "/v1/me/enterprises",
            json={"uscc": "91350100M000100Y43"},
            headers={"Authorization": "Bearer " + verified.json()["access_token"]},
        )
        assert enterprise.status_code == 201, enterprise.text
        _try_demo_capabilities(process.base_url, demo["access_token"], process.log())
    finally:
        assert process.stop() == 0, process.log()


def _try_demo_capabilities(base_url: str, access_token: str, log: str) -> None:
    """What the demo seed adds per capability shows through the API."""
    from scripts.demo import DEMO_APP_SECRET, DEMO_APPS

    citizen = {"Authorization": "Bearer " + access_token}
    health_pass = httpx.get(base_url + "/v1/health-pass", headers=citizen)
    assert health_pass.status_code == 200 and health_pass.json()["colour"] == "green"
    catalog = httpx.get(base_url + "/v1/catalog", params={"limit": 50}, headers=citizen).json()
    assert catalog["total"] >= DEMO_APPS
    # `tongban up` printed the demo app's appid; its published AppSecret gets an access token.
    appid = log.split("appid ", 1)[1].split(",", 1)[0]
    token = httpx.get(
        base_url + "/cgi-bin/token",
        params={"grant_type": "client_credential", "appid": appid, "secret": DEMO_APP_SECRET},
    ).json()
    assert token.get("access_token") and token["expires_in"] == 7200, token
    onecode = httpx.get(base_url + "/v1/onecode", headers=citizen)
    assert onecode.status_code == 200 and sorted(onecode.json()["scenes"]) == ["payment", "transit"], (
        onecode.text
    )
