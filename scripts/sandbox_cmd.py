"""`tongban sandbox`: the simulated outside providers (SMS gateway, ...) as HTTP servers on loopback."""

from __future__ import annotations

import typer
from rich.table import Table

from core import logging as tongban_logging
from core.settings import Settings
from scripts.common import console, fail, load_settings

app = typer.Typer(help="Simulated outside providers for development and tests.", no_args_is_help=True)


def _port(settings: Settings, setting: str) -> int:
    port: int = getattr(settings, setting)
    return port


@app.command("start")
def start_command(
    only: list[str] | None = typer.Option(None, "--only", help="start only this provider (repeatable)"),
    host: str | None = typer.Option(None, help="bind address [TONGBAN_SANDBOX_HOST]"),
) -> None:
    """Start the providers in one process until Ctrl-C / SIGTERM. Ports: TONGBAN_SANDBOX_<NAME>_PORT."""
    from sandbox.frame import Provider
    from sandbox.providers import PROVIDERS
    from sandbox.runner import PortUnavailable, Running, run

    settings = load_settings()
    tongban_logging.configure(settings.log_level, settings.log_json)
    unknown = sorted(set(only or ()) - PROVIDERS.keys())
    if unknown:
        fail(f"unknown sandbox provider {', '.join(unknown)}; known: {', '.join(PROVIDERS)}", 2)
    chosen: list[Provider] = (
        [PROVIDERS[name] for name in dict.fromkeys(only)] if only else list(PROVIDERS.values())
    )

    def show(running: list[Running]) -> None:
        table = Table(title="Sandbox providers")
        table.add_column("provider")
        table.add_column("URL", no_wrap=True)
        table.add_column("our setting", no_wrap=True)
        for item in running:
            table.add_row(item.provider.name, item.url, "TONGBAN_" + item.provider.url_setting.upper())
        console.print(table)

    try:
        run(
            [(provider, _port(settings, provider.port_setting)) for provider in chosen],
            host or settings.sandbox_host,
            show,
        )
    except PortUnavailable as exc:
        fail(f"{exc} — set TONGBAN_{exc.provider.port_setting.upper()} to another port")
    console.print("sandbox stopped")
