"""`tongban onecode`: One-code ops: links, ledger, reconciliation."""

from __future__ import annotations

from datetime import date, timedelta

import typer
from rich.table import Table
from rich.text import Text

from core import db
from core.clock import for_display
from core.errors import ProviderUnavailable
from core.stores import Stores
from onecode import authorisations, ledger, providers, reconcile
from onecode.authorisations import OneCodeOverview
from onecode.ledger import Balance, LedgerLine, Totals
from onecode.providers import ProviderRejected
from onecode.reconcile import Reconciliation
from scripts.common import console, err_console, fail
from scripts.users_cmd import parse_id, run

app = typer.Typer(help="One-code ops: links, ledger, reconciliation.", no_args_is_help=True)


@app.callback()
def onecode_group() -> None:
    """One-code ops: a citizen's links, the settlement ledger, reconciliation with the providers."""


def _fen(amount: int | None) -> str:
    return "-" if amount is None else f"{amount / 100:.2f}"


def parse_day(text: str) -> date:
    if text == "yesterday":
        return reconcile.settlement_today() - timedelta(days=1)
    if text == "today":
        return reconcile.settlement_today()
    try:
        return date.fromisoformat(text)
    except ValueError:
        fail(f"DATE: {text!r} is not a date (expected YYYY-MM-DD, 'yesterday' or 'today')")


def render_run(run_: Reconciliation) -> Table:
    title = (
        f"{run_.provider} {run_.day.isoformat()}: {len(run_.mismatches)} mismatch(es), "
        f"{run_.statement_lines} statement line(s), {run_.ledger_postings} ledger posting(s)"
    )
    table = Table(title=title)
    for column in ("reference", "problem", "ledger (yuan)", "statement (yuan)"):
        table.add_column(column, overflow="fold")
    for mismatch in run_.mismatches:
        table.add_row(
            Text(mismatch.reference),
            mismatch.problem,
            _fen(mismatch.ledger_fen),
            _fen(mismatch.statement_fen),
        )
    return table


@app.command("reconcile")
def reconcile_command(
    day: str = typer.Argument(..., metavar="DATE", help="the settlement day (Asia/Shanghai), YYYY-MM-DD"),
    provider: str | None = typer.Option(None, "--provider", help="transit or payment (default: both)"),
) -> None:
    """Compare the ledger with each provider's statement of DATE and list the mismatches (the run is
    stored). Exit 0 when everything matches, 1 when there are mismatches, 2 when a provider could not be
    reached."""
    wanted = parse_day(day)
    if provider is not None and provider not in reconcile.PROVIDERS:
        fail(f"--provider: {provider!r} is not one of {', '.join(reconcile.PROVIDERS)}")
    names = [provider] if provider is not None else list(reconcile.PROVIDERS)

    async def go(stores: Stores) -> tuple[list[Reconciliation], list[str]]:
        runs: list[Reconciliation] = []
        failures: list[str] = []
        try:
            for name in names:
                try:
                    runs.append(await reconcile.reconcile(stores, wanted, name))
                except (ProviderUnavailable, ProviderRejected) as exc:
                    failures.append(f"{name}: {exc.detail}")
        finally:
            await providers.close_providers()
        return runs, failures

    runs, failures = run(go)
    for done in runs:
        console.print(render_run(done))
    for failure in failures:
        err_console.print(f"tongban: {failure}", markup=False, highlight=False, soft_wrap=True)
    if failures:
        raise SystemExit(2)
    if any(done.mismatches for done in runs):
        raise SystemExit(1)


def render_balances(balances: list[Balance], totals: Totals) -> Table:
    table = Table(
        title=f"ledger: {totals.postings} posting(s), {'balanced' if totals.balanced else 'UNBALANCED'}"
    )
    for column in ("account", "entries", "debit (yuan)", "credit (yuan)", "net debit (yuan)"):
        table.add_column(column, overflow="fold")
    for balance in balances:
        table.add_row(
            Text(balance.account),
            str(balance.entries),
            _fen(balance.debit_fen),
            _fen(balance.credit_fen),
            _fen(balance.net_debit_fen),
        )
    table.add_row(
        "total",
        "",
        _fen(totals.debit_fen),
        _fen(totals.credit_fen),
        _fen(totals.debit_fen - totals.credit_fen),
    )
    return table


def render_lines(account: str, lines: list[LedgerLine]) -> Table:
    table = Table(title=f"{account}: newest entries")
    for column in ("occurred", "kind", "reference", "debit (yuan)", "credit (yuan)"):
        table.add_column(column, overflow="fold")
    for line in lines:
        table.add_row(
            for_display(line.occurred_at),
            line.kind,
            Text(line.reference),
            _fen(line.debit_fen),
            _fen(line.credit_fen),
        )
    return table


@app.command("ledger")
def ledger_command(
    account: str | None = typer.Option(
        None, "--account", help="one ledger account (e.g. provider:transit) or a prefix ending in ':'"
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="entries shown for one account"),
) -> None:
    """Balances per ledger account with the totals (debits equal credits when the ledger balances); with
    --account ACCOUNT also that account's newest entries."""

    async def go(stores: Stores) -> tuple[list[Balance], Totals, list[LedgerLine]]:
        async with db.connection(stores.pool, stores.settings) as conn:
            balances = await ledger.balances(conn, account)
            totals = await ledger.totals(conn)
            lines = await ledger.recent(conn, account, limit) if account and not account.endswith(":") else []
        return balances, totals, lines

    balances, totals, lines = run(go)
    console.print(render_balances(balances, totals))
    if account and not account.endswith(":"):
        console.print(render_lines(account, lines))


def render_overview(found: OneCodeOverview) -> Table:
    table = Table(title=f"one-code: scenes {', '.join(found.scenes) or 'none'}")
    for column in ("what", "detail", "since"):
        table.add_column(column, overflow="fold")
    for link in found.links:
        table.add_row(f"link {link.kind}", Text(link.reference), for_display(link.linked_at))
    for device in found.devices:
        table.add_row("device key", str(device.id), for_display(device.registered_at))
    if found.authorisation is not None:
        issued = found.authorisation
        table.add_row(
            "authorisation",
            f"{issued.code_id} ({', '.join(issued.scenes)}) until {for_display(issued.expires_at)}",
            for_display(issued.issued_at),
        )
    return table


@app.command("links")
def links_command(account_id: str = typer.Argument(..., metavar="ACCOUNT", help="the account id")) -> None:
    """A citizen's links (masked), device keys and newest live authorisation."""
    target = parse_id(account_id, "ACCOUNT")

    async def go(stores: Stores) -> OneCodeOverview:
        return await authorisations.overview(stores, target)

    console.print(render_overview(run(go)))
