"""The job worker process (filled in by the jobs work)."""

from __future__ import annotations

from core.settings import Settings


def run_worker(settings: Settings) -> None:
    raise NotImplementedError
