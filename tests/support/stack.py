"""The citizen-facing stack as real processes: sandbox providers, the job worker and a multi-process API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.sandbox import Sandbox, start_sandbox
from tests.support.server import ROOT, Process, free_port, running_server, start


@dataclass
class Stack:
    api: Process
    sandbox: Sandbox
    worker: Process

    @property
    def url(self) -> str:
        return self.api.base_url

    @property
    def sms(self) -> str:
        return self.sandbox.urls["sms"]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`tongban ARGS` with the stack's environment."""
        return subprocess.run(
            [sys.executable, "-m", "scripts.cli", *args],
            cwd=ROOT,
            env=self.sandbox.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def logs(self) -> str:
        return self.api.log() + self.worker.log() + self.sandbox.log()


@contextmanager
def running_stack(tmp: Path, only: list[str], *, workers: int = 2, **env: str) -> Iterator[Stack]:
    """Sandbox providers `only`, a worker and an API of `workers` processes, all with `env` set.
    Every test request comes from 127.0.0.1, so the per-IP SMS limit is lifted unless `env` sets it."""
    overrides: dict[str, str | None] = {"TONGBAN_AUTH_SMS_PER_IP_HOUR": "10000", **env}
    sandbox = start_sandbox(tmp, only, None, **overrides)  # ports given: the overrides are all env
    worker = start(["worker"], sandbox.env, tmp / "worker.log", free_port())
    try:
        with running_server(tmp, sandbox.env, workers=workers) as api:
            yield Stack(api, sandbox, worker)
    finally:
        worker.stop()
        sandbox.process.stop()


def verified_citizen(stack: Stack, device: str, phone_prefix: str = "136") -> tuple[str, str, str]:
    """(account id, phone, L2 access token) of a new citizen: SMS login, then real-name verification against
    the sandbox population registry (which must run in the stack)."""
    import httpx

    from tests.support.auth import bearer, login, new_phone
    from tests.unit.test_realname_validation import random_id_number, random_name

    phone = new_phone(phone_prefix)
    tokens = login(stack.url, stack.sms, phone, device=device)
    name, id_number = random_name(), random_id_number()
    seeded = httpx.post(
        stack.sandbox.urls["population"] + "/registry/import",
        json={"rows": [{"name": name, "id_number": id_number}]},
    )
    assert seeded.status_code == 200, seeded.text
    verified = httpx.post(
        stack.url + "/v1/me/real-name",
        json={"name": name, "id_number": id_number},
        headers=bearer(tokens["access_token"]),
    )
    assert verified.status_code == 200, verified.text
    return tokens["account_id"], phone, verified.json()["access_token"]
