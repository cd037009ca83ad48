"""`tongban db upgrade|downgrade|current`."""

from __future__ import annotations

import typer

from core import migrate
from scripts.common import console, stores_ready

app = typer.Typer(help="Schema migrations.", no_args_is_help=True)


@app.command()
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Upgrade the schema (safe to run twice or from two machines at once)."""
    settings, embedded = stores_ready()
    try:
        assert settings.database_url
        migrate.upgrade(settings.database_url, revision)
        console.print(f"schema at {migrate.current(settings.database_url)}")
    finally:
        embedded.stop()


@app.command()
def downgrade(revision: str = typer.Argument(..., help="target revision, or 'base'")) -> None:
    """Downgrade the schema to REVISION."""
    settings, embedded = stores_ready()
    try:
        assert settings.database_url
        migrate.downgrade(settings.database_url, revision)
        console.print(f"schema at {migrate.current(settings.database_url) or 'base'}")
    finally:
        embedded.stop()


@app.command()
def current() -> None:
    """Print the schema revision and the latest one."""
    settings, embedded = stores_ready()
    try:
        assert settings.database_url
        console.print(f"current: {migrate.current(settings.database_url) or 'base'}  head: {migrate.head()}")
    finally:
        embedded.stop()
