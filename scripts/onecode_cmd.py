"""`tongban onecode`: One-code ops: links, ledger, reconciliation."""

from __future__ import annotations

import typer

app = typer.Typer(help="One-code ops: links, ledger, reconciliation.", no_args_is_help=True)
