"""`tongban sandbox start` as a real process: providers answer on their ports, the table names them, and
SIGTERM/SIGINT stop every server cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sandbox.providers import PROVIDERS
from tests.support.sandbox import running_sandbox, start_sandbox
from tests.support.server import ROOT, free_port, tongban_env

pytestmark = pytest.mark.e2e


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_all_providers_start_and_stop_cleanly_on_signal(tmp_path: Path, stop_signal: signal.Signals) -> None:
    sandbox = start_sandbox(tmp_path)
    try:
        assert set(sandbox.urls) == set(PROVIDERS)
        for name, url in sandbox.urls.items():
            assert httpx.get(url + "/health").json() == {"status": "ok", "provider": name}
            assert url in sandbox.log()  # the start-up table names each provider's URL
        assert "TONGBAN_SMS_GATEWAY_URL" in sandbox.log()

        sandbox.process.proc.send_signal(stop_signal)
        assert sandbox.process.proc.wait(timeout=15) == 0
    finally:
        sandbox.process.stop()
    log = sandbox.log()
    assert "sandbox stopped" in log and "Traceback" not in log
    for url in sandbox.urls.values():
        assert port_is_free(int(url.rsplit(":", 1)[1]))


def test_only_starts_just_the_named_provider(tmp_path: Path) -> None:
    with running_sandbox(tmp_path, only=["sms"]) as sandbox:
        assert list(sandbox.urls) == ["sms"]
        assert httpx.get(sandbox.urls["sms"] + "/health").status_code == 200


def test_state_lives_in_memory_and_dies_with_the_process(tmp_path: Path) -> None:
    body = {"phone": "13800138000", "template": "notice", "params": {"text": "x"}, "sign": "通办"}
    ports = {"sms": free_port()}
    for _ in range(2):
        with running_sandbox(tmp_path, only=["sms"], ports=ports) as sandbox:
            url = sandbox.urls["sms"]
            assert url.endswith(f":{ports['sms']}")
            assert httpx.get(url + "/sms/outbox").json()["messages"] == []  # nothing kept from the last run
            httpx.post(url + "/sms/send", json=body).raise_for_status()
            assert len(httpx.get(url + "/sms/outbox").json()["messages"]) == 1


def test_unknown_provider_is_refused_by_name() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "sandbox", "start", "--only", "no_such"],
        cwd=ROOT,
        env=tongban_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown sandbox provider no_such" in result.stderr and "sms" in result.stderr


def test_taken_port_fails_at_once_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "scripts.cli", "sandbox", "start", "--only", "sms"],
            cwd=ROOT,
            env=tongban_env(TONGBAN_SANDBOX_SMS_PORT=str(port), TONGBAN_SANDBOX_HOST="127.0.0.1"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "TONGBAN_SANDBOX_SMS_PORT" in result.stderr
    assert "Traceback" not in result.stderr


TWO_PROVIDERS = """
import dataclasses, sys
from sandbox.runner import run
from sandbox.sms import PROVIDER
pairs = [(dataclasses.replace(PROVIDER, name=f"sms-{n}"), int(port)) for n, port in enumerate(sys.argv[1:])]
run(pairs, "127.0.0.1", lambda running: print("ready", flush=True))
print("stopped", flush=True)
"""


def test_one_signal_stops_every_provider_in_the_process() -> None:
    ports = [free_port(), free_port()]
    with subprocess.Popen(
        [sys.executable, "-c", TWO_PROVIDERS, *map(str, ports)],
        cwd=ROOT,
        env=tongban_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            for port in ports:
                assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert proc.stdout.read().strip() == "stopped"
        finally:
            if proc.poll() is None:
                proc.kill()
    assert all(port_is_free(port) for port in ports)
