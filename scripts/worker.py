"""`tongban worker`: the arq job worker with the outbox relay inside it."""

from __future__ import annotations

import asyncio
import importlib

from core import jobs
from core import logging as tongban_logging
from core.errors import StoreUnavailable
from core.settings import Settings
from core.stores import check_stores
from scripts.common import fail

# Capability modules whose @job declarations this worker runs (core's own jobs are always registered).
JOB_MODULES: list[str] = [
    "auth.sms",
    "auth.rights",
    "health_code.jobs",
    "miniapps.jobs",
    "miniapps.messages",
    "onecode.reconcile",
    "onecode.jobs",
]


def load_job_modules() -> None:
    for module in JOB_MODULES:
        importlib.import_module(module)


def run_worker(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT: arq finishes or re-queues running jobs, the relay stops, stores close."""
    tongban_logging.configure(settings.log_level, settings.log_json)
    load_job_modules()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        try:
            # Like `serve`: wait for both stores with backoff, then one clear error.
            loop.run_until_complete(check_stores(settings))
        except StoreUnavailable as exc:
            fail(f"{exc.store} is unavailable: check the URL and that the server is running")
        jobs.create_worker(settings).run()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
