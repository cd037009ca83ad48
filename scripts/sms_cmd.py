"""`tongban sms`."""

from __future__ import annotations

import typer

app = typer.Typer(help="sms", no_args_is_help=True)
