"""`tongban sandbox`: the simulated outside providers (SMS gateway, ...) as HTTP servers on loopback, and
`tongban sandbox registry import FILE` to load people into the running population registry."""

from __future__ import annotations

import csv
from pathlib import Path

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from core import logging as tongban_logging
from core.settings import Settings
from scripts.common import console, fail, load_settings

app = typer.Typer(help="Simulated outside providers for development and tests.", no_args_is_help=True)
registry_app = typer.Typer(help="The sandbox population registry (real-name checks).", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


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


def read_registry_csv(file: Path) -> list[tuple[int, str, str]]:
    """(line, name, id_number) of every record row; a `name,id_number` header and blank lines are skipped.
    A malformed row stops with its line number (never its content: the file holds personal data)."""
    rows: list[tuple[int, str, str]] = []
    with file.open(encoding="utf-8-sig", newline="") as handle:
        for line, cells in enumerate(csv.reader(handle), start=1):
            if not cells or not "".join(cells).strip():
                continue
            if not rows and [cell.strip().lower() for cell in cells] == ["name", "id_number"]:
                continue
            if len(cells) != 2:
                fail(f"{file.name} line {line}: expected 2 columns (name,id_number), got {len(cells)}")
            rows.append((line, cells[0].strip(), cells[1].strip()))
    return rows


@registry_app.command("import")
def registry_import_command(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="CSV of name,id_number rows (header optional)"
    ),
    batch: int = typer.Option(1000, min=1, max=10_000, help="rows per request"),
) -> None:
    """Load people into the running sandbox population registry [TONGBAN_POPULATION_REGISTRY_URL]."""
    settings = load_settings()
    base_url = settings.population_registry_url.rstrip("/")
    try:
        rows = read_registry_csv(file)
    except UnicodeDecodeError:
        fail(f"{file.name}: not UTF-8 text")
    imported, total, skipped = 0, 0, []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with httpx.Client(base_url=base_url, timeout=30.0) as client, Progress(*columns, console=console) as bar:
        task = bar.add_task("importing", total=len(rows))
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            body = {"rows": [{"name": name, "id_number": id_number} for _, name, id_number in chunk]}
            try:
                response = client.post("/registry/import", json=body)
            except httpx.HTTPError as exc:
                fail(
                    f"population registry at {base_url} is not reachable ({type(exc).__name__}); "
                    "start it: tongban sandbox start"
                )
            if response.status_code != 200:
                fail(
                    f"population registry at {base_url} answered {response.status_code}: {_message(response)}"
                )
            answer = response.json()
            imported += answer["imported"]
            total = answer["total"]
            skipped += [chunk[position - 1][0] for position in answer["skipped_lines"]]
            bar.advance(task, len(chunk))
    console.print(f"imported {imported} records from {file.name}; the registry now holds {total}")
    if skipped:
        console.print(f"skipped (empty or over-long fields) at lines: {', '.join(map(str, skipped))}")


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", "")) or response.reason_phrase
    except ValueError:
        return response.reason_phrase
