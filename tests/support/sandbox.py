"""Start `tongban sandbox start` as a real process on free ports and wait until every provider answers.

with running_sandbox(tmp_path) as sandbox:
    sandbox.urls["sms"]        # base URL of the SMS gateway
    sandbox.env                # environment for child `tongban` processes, pointed at these providers
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from sandbox.providers import PROVIDERS
from tests.support.server import Process, free_port, start, tongban_env


@dataclass
class Sandbox:
    process: Process
    urls: dict[str, str]  # provider name -> base URL
    env: dict[str, str]  # TONGBAN_* variables (ports and URLs) plus the rest of this environment

    def log(self) -> str:
        return self.process.log()


def wait_healthy(process: Process, urls: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError(f"sandbox exited with {process.proc.returncode}:\n{process.log()}")
        try:
            if httpx.get(pending[0] + "/health", timeout=1.0).status_code == 200:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    if pending:
        raise TimeoutError(f"sandbox not answering at {pending} after {timeout}s:\n{process.log()}")


def start_sandbox(
    log_dir: Path,
    only: list[str] | None = None,
    ports: dict[str, int] | None = None,
    **env_overrides: str | None,
) -> Sandbox:
    """Started and answering (on `ports` where given, free ports otherwise); the caller stops it."""
    names = only or list(PROVIDERS)
    overrides: dict[str, str | None] = {"TONGBAN_SANDBOX_HOST": "127.0.0.1"}
    urls: dict[str, str] = {}
    for name in names:
        provider = PROVIDERS[name]
        port = (ports or {}).get(name) or free_port()
        urls[name] = f"http://127.0.0.1:{port}"
        overrides[f"TONGBAN_{provider.port_setting.upper()}"] = str(port)
        overrides[f"TONGBAN_{provider.url_setting.upper()}"] = urls[name]
    overrides.update(env_overrides)
    env = tongban_env(**overrides)
    args = ["sandbox", "start"]
    for name in only or ():
        args += ["--only", name]
    first_port = int(urls[names[0]].rsplit(":", 1)[1])
    log_path = log_dir / f"sandbox-{first_port}-{secrets.token_hex(3)}.log"
    process = start(args, env, log_path, first_port)
    try:
        wait_healthy(process, list(urls.values()))
    except BaseException:
        process.stop()
        raise
    return Sandbox(process=process, urls=urls, env=env)


@contextmanager
def running_sandbox(
    log_dir: Path,
    only: list[str] | None = None,
    ports: dict[str, int] | None = None,
    **env_overrides: str | None,
) -> Iterator[Sandbox]:
    sandbox = start_sandbox(log_dir, only, ports, **env_overrides)
    try:
        yield sandbox
    finally:
        sandbox.process.stop()
