"""`tongban terminals`: One-code terminals: register, list, disable."""

from __future__ import annotations

import typer

app = typer.Typer(help="One-code terminals: register, list, disable.", no_args_is_help=True)
