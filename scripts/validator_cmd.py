"""`tongban validator`: A bus validator offline: verify codes, keep a seen-set, upload rides."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="A bus validator offline: verify codes, keep a seen-set, upload rides.", no_args_is_help=True
)
