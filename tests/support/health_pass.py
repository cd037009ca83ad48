"""Health-pass steps that end-to-end tests share: waiting for the worker's effect, checkpoint credentials
from the `tongban checkpoints create` output, and an offline `tongban pass verify` with the trust list as a
checkpoint downloads it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support.stack import Stack

T = TypeVar("T")
CHECKPOINT_TOKEN = re.compile(r"Bearer (cp_[0-9a-f-]{36}\.[A-Za-z0-9_-]{43})")


def eventually(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """check()'s first truthy answer, asked every 0.3 s (the worker and the pass watchers work behind)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout}s: {what}")


def new_checkpoint(stack: Stack, name: str) -> str:
    """A checkpoint made with `tongban checkpoints create`: its bearer token (cp_<id>.<secret>), which the
    CLI prints once."""
    created = stack.cli("checkpoints", "create", name)
    assert created.returncode == 0, created.stdout + created.stderr
    token = CHECKPOINT_TOKEN.search(created.stdout)
    assert token is not None, created.stdout
    return token.group(1)


def verify_offline(stack: Stack, payload: str, folder: Path) -> tuple[int, dict[str, Any]]:
    """(exit code, verdict) of `tongban pass verify` against the trust list and root just downloaded from
    the API, as a checkpoint refreshes them before going offline."""
    trust, root = folder / "trust-list.json", folder / "root.pem"
    listed = httpx.get(stack.url + "/v1/trust-list")
    assert listed.status_code == 200, listed.text
    trust.write_bytes(listed.content)
    root.write_bytes(httpx.get(stack.url + "/v1/trust-list/root.pem").content)
    verified = stack.cli("pass", "verify", "--trust", str(trust), "--root", str(root), payload)
    assert verified.returncode in (0, 1), verified.stdout + verified.stderr
    verdict: dict[str, Any] = json.loads(verified.stdout)
    return verified.returncode, verdict
