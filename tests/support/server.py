"""Start `tongban` as a real process and talk to it over HTTP, as phones, mini-app servers and scanners do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    log_file: IO[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log_file is not None:
            self.log_file.close()
        return self.proc.returncode


def tongban_env(**overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def start(args: list[str], env: dict[str, str], log_path: Path, port: int) -> Process:
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    return Process(proc, f"http://127.0.0.1:{port}", log_path, log)


def wait_ready(process: Process, timeout: float = 60.0, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            process.stop()
            raise RuntimeError(f"server exited with {process.proc.returncode}:\n{process.log()}")
        try:
            if httpx.get(process.base_url + path, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.stop()
    raise TimeoutError(f"server not ready after {timeout}s:\n{process.log()}")


@contextmanager
def running_server(
    tmp_path: Path, env: dict[str, str], *, workers: int = 1, extra_args: list[str] | None = None
) -> Iterator[Process]:
    port = free_port()
    process = start(
        ["serve", "--port", str(port), "--workers", str(workers), *(extra_args or [])],
        env,
        tmp_path / f"server-{port}.log",
        port,
    )
    try:
        wait_ready(process)
        yield process
    finally:
        process.stop()


@contextmanager
def embedded_data_dir() -> Iterator[Path]:
    """A fresh data dir for a process that starts embedded stores. Not under pytest's tmp_path: pytest resets
    its base temp dir to mode 0700 whenever a session starts, which would lock out the unprivileged user the
    embedded PostgreSQL runs as (when the tests run as root)."""
    import secrets
    import shutil

    path = ROOT / ".tongban" / "test" / f"embedded-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
