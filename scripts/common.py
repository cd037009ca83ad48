"""What CLI commands share: one-line settings errors, stores (embedded when unconfigured), async runs."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

from rich.console import Console

from core.embedded import EmbeddedStores, ensure_stores
from core.errors import StoreUnavailable
from core.settings import Settings, SettingsError, get_settings
from core.stores import Stores, close_stores, open_stores

# Piped or captured output (scripts, CI, tests) gets wide tables instead of cells squeezed to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)
T = TypeVar("T")


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"tongban: {message}", markup=False, highlight=False, soft_wrap=True)
    raise SystemExit(code)


def load_settings() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        fail(str(exc), 2)


def stores_ready() -> tuple[Settings, EmbeddedStores]:
    """Settings with both store URLs filled: configured ones as they are, missing ones started embedded."""
    settings = load_settings()
    embedded = ensure_stores(settings.database_url, settings.redis_url, settings.data_dir)
    get_settings.cache_clear()
    return load_settings(), embedded


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except StoreUnavailable as exc:
        fail(f"{exc.store} is unavailable: check the URL and that the server is running")
    except SettingsError as exc:
        fail(str(exc), 2)


def with_stores(func: Callable[[Stores], Awaitable[T]], *, connect_attempts: int | None = None) -> T:
    """Run `func(stores)` against this process's stores and close them afterwards."""
    settings, embedded = stores_ready()

    async def go() -> T:
        stores = await open_stores(settings, connect_attempts=connect_attempts)
        try:
            return await func(stores)
        finally:
            await close_stores(stores)

    try:
        return run_async(go())
    finally:
        embedded.stop()
