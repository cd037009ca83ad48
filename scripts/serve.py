"""`tongban serve` and `tongban up`: start-up checks, migrations, the ASGI server, the worker, the sandbox."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from core import migrate
from core.settings import Settings
from core.stores import check_stores
from scripts.common import console, run_async

APP_FACTORY = "api.app:create_app"


def prepare(settings: Settings) -> None:
    """Wait for both stores (retrying with backoff, then one clear error) and bring the schema up to date."""
    run_async(check_stores(settings))
    assert settings.database_url
    migrate.upgrade(settings.database_url)


def _prometheus_dir(settings: Settings, workers: int) -> None:
    """With several worker processes, metrics are aggregated through files (prometheus multiprocess mode)."""
    if workers <= 1 or "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return
    path = Path(settings.data_dir).resolve() / "prometheus"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def run_server(settings: Settings, *, host: str, port: int, workers: int, server: str) -> None:
    _prometheus_dir(settings, workers)
    console.print(f"Tongban on http://{host}:{port} ({server}, {workers} worker{'s' if workers > 1 else ''})")
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        return
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        APP_FACTORY,
        factory=True,
        interface=Interfaces.ASGI,
        address=host,
        port=port,
        workers=workers,
        backlog=2048,
        log_access=False,
        respawn_failed_workers=True,
    ).serve()


def spawn(args: list[str]) -> subprocess.Popen[bytes]:
    """A child `tongban` process with this process's environment (store URLs included)."""
    return subprocess.Popen([sys.executable, "-m", "scripts.cli", *args], env=os.environ.copy())


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


def wait_for_sandbox(settings: Settings, timeout: float = 20.0) -> None:
    """Until every sandbox provider answers /health (so demo data can be loaded into them)."""
    import time

    import httpx

    from sandbox.providers import PROVIDERS

    urls = [str(getattr(settings, provider.url_setting)) for provider in PROVIDERS.values()]
    deadline = time.monotonic() + timeout
    while urls and time.monotonic() < deadline:
        try:
            if httpx.get(urls[0] + "/health", timeout=1.0).status_code == 200:
                urls.pop(0)
                continue
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
