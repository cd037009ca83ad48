"""`tongban sandbox`."""

from __future__ import annotations

import typer

app = typer.Typer(help="sandbox", no_args_is_help=True)
