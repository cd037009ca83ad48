"""`tongban health`: rule files (check, activate, show), bulk imports, statuses, manual marks, recomputes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, cast
from uuid import UUID

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from core import db
from core.clock import for_display
from core.errors import TongbanError
from core.stores import Stores
from health_code import imports, status
from health_code.imports import ImportResult, Kind
from health_code.rules import Colour, PositiveTest, RiskTrip, Rule, RuleFileError, RuleSet, load_rules
from scripts import appeals_cmd
from scripts.common import console, fail, with_stores
from scripts.users_cmd import ops_actor, parse_id

app = typer.Typer(help="Health pass status: rules, imports, statuses.", no_args_is_help=True)
rules_app = typer.Typer(help="Rule files: check, activate, show.", no_args_is_help=True)
import_app = typer.Typer(help="Bulk CSV imports of rule inputs.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(import_app, name="import")
app.add_typer(appeals_cmd.app, name="appeals")
T = TypeVar("T")


@app.callback()
def health() -> None:
    """Health pass status: rule files, imports of risk areas, tests and vaccinations, statuses."""


def run(func: Callable[[Stores], Awaitable[T]]) -> T:
    """with_stores, with domain errors (bad file, not found, conflict) as one line and exit code 1."""
    try:
        return with_stores(func)
    except TongbanError as exc:
        fail(exc.detail)


# --- rules -----------------------------------------------------------------------------------------------


def _condition_text(rule: Rule) -> str:
    parts = []
    for condition in rule.conditions:
        name = type(condition).__name__
        if isinstance(condition, PositiveTest | RiskTrip):
            parts.append(f"{name} within {condition.within}")
        else:
            parts.append(name)
    return " and ".join(parts)


def render_rules(rules: RuleSet) -> Table:
    table = Table(title=f"rules {rules.version} (first match wins)")
    for column in ("#", "id", "colour", "reason", "when", "cleared by"):
        table.add_column(column, overflow="fold")
    for number, rule in enumerate(rules.rules, 1):
        table.add_row(
            str(number),
            Text(rule.id),
            rule.colour,
            Text(rule.reason),
            Text(_condition_text(rule)),
            Text(", ".join(sorted(rule.cleared_by)) or "-"),
        )
    table.add_row("-", "default", rules.default_colour, Text(rules.default_reason), "none holds", "-")
    return table


def _load(file: Path) -> RuleSet:
    try:
        return load_rules(file)
    except RuleFileError as exc:
        fail(f"{file.name}: {exc}")


@rules_app.command("check")
def rules_check(file: Path = typer.Argument(..., help="rule file (.json or .toml)")) -> None:
    """Validate a rule file and print its rules; exit code 1 with the rule at fault otherwise."""
    rules = _load(file)
    console.print(render_rules(rules))
    console.print(f"{file.name}: valid, version {rules.version}, {len(rules.rules)} rules")


@rules_app.command("activate")
def rules_activate(
    file: Path = typer.Argument(..., help="rule file (.json or .toml)"),
    recompute_all: bool = typer.Option(
        True, "--recompute/--no-recompute", help="enqueue a recompute of every account with a status"
    ),
) -> None:
    """Put a rule file in force for every process (within 30 s); statuses follow through recompute jobs."""
    rules = _load(file)
    actor = ops_actor()

    async def activate(stores: Stores) -> int:
        async with db.transaction(stores.pool, stores.settings) as conn:
            return await status.activate_rules(conn, rules, by=actor, recompute_all=recompute_all)

    jobs = run(activate)
    console.print(f"rules {rules.version} in force; {jobs} recompute job{'' if jobs == 1 else 's'} enqueued")


@rules_app.command("show")
def rules_show() -> None:
    """The rules in force."""

    async def show(stores: Stores) -> RuleSet:
        async with db.connection(stores.pool, stores.settings) as conn:
            status.forget_rules()
            return await status.active_rules(conn)

    console.print(render_rules(run(show)))


# --- imports ---------------------------------------------------------------------------------------------


def _import(kind: Kind, file: Path) -> None:
    if not file.is_file():
        fail(f"{file}: no such file")
    actor = ops_actor()
    size = file.stat().st_size
    progress = Progress(
        TextColumn(f"[bold]{kind}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )

    async def go(stores: Stores) -> ImportResult:
        task = progress.add_task(kind, total=size)
        with progress:
            return await imports.IMPORTERS[kind](
                stores, file, by=actor, progress=lambda done: progress.update(task, completed=done)
            )

    result = run(go)
    table = Table(title=f"import {kind}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field, value in (
        ("import id", str(result.import_id)),
        ("rows read", f"{result.rows_read:,}"),
        ("rows stored (new or changed)", f"{result.rows_stored:,}"),
        ("rows skipped: no such person", f"{result.rows_unknown:,}"),
        ("accounts to recompute", f"{result.accounts_scheduled:,} in {result.jobs:,} jobs"),
        ("file sha-256", result.file_sha256),
    ):
        table.add_row(field, value)
    console.print(table)


@import_app.command("risk-areas")
def import_risk_areas(
    file: Path = typer.Argument(..., help="CSV: region_code,level,valid_from,valid_to"),
) -> None:
    """Import risk areas (GB/T 2260 codes; level low, medium or high); trips inside them get recomputed."""
    _import("risk-areas", file)


@import_app.command("tests")
def import_tests(file: Path = typer.Argument(..., help="CSV: id_number,result,sampled_at")) -> None:
    """Import test results by ID number (matched through the blind index; unknown people are skipped)."""
    _import("tests", file)


@import_app.command("vaccinations")
def import_vaccinations(file: Path = typer.Argument(..., help="CSV: id_number,dose,at")) -> None:
    """Import vaccination doses by ID number (matched through the blind index; unknown people are skipped)."""
    _import("vaccinations", file)


# --- statuses --------------------------------------------------------------------------------------------


@app.command("status")
def status_command(account_id: str = typer.Argument(..., help="account id")) -> None:
    """An account's current status (computed if needed) and its history."""
    target = parse_id(account_id, "ACCOUNT_ID")

    async def show(stores: Stores) -> tuple[status.HealthStatus, list[status.StatusChange]]:
        async with db.connection(stores.pool, stores.settings) as conn:
            current = await status.current_status(conn, target, redis=stores.redis)
            return current, await status.status_history(conn, target, limit=20)

    current, history = run(show)
    table = Table(title=f"health status of {target}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field, value in (
        ("colour", current.colour),
        ("reasons", ", ".join(current.reasons)),
        ("since", for_display(current.since)),
        ("valid until", for_display(current.valid_until) if current.valid_until else "-"),
        ("rules", current.rule_version),
        ("version", str(current.version)),
    ):
        table.add_row(field, Text(value))
    console.print(table)
    changes = Table(title="history (newest first)", caption="times Asia/Shanghai")
    for column in ("version", "colour", "reasons", "since", "changed"):
        changes.add_column(column, overflow="fold")
    for change in history:
        changes.add_row(
            str(change.version),
            change.colour,
            Text(", ".join(change.reasons)),
            for_display(change.since),
            for_display(change.changed_at),
        )
    console.print(changes)


@app.command("recompute")
def recompute_command(account_ids: list[str] = typer.Argument(..., help="account ids")) -> None:
    """Recompute accounts now (changes are written, messaged and published as by the worker)."""
    targets: list[UUID] = [parse_id(text, "ACCOUNT_ID") for text in account_ids]

    async def go(stores: Stores) -> list[status.Changed]:
        return await status.recompute(stores, targets)

    changed = run(go)
    for change in changed:
        console.print(
            f"{change.account_id}: {change.previous_colour or '-'} -> {change.colour} (v{change.version})"
        )
    console.print(f"{len(targets)} recomputed, {len(changed)} changed")


@app.command("mark")
def mark_command(
    account_id: str = typer.Argument(..., help="account id"),
    colour: str = typer.Option(..., "--colour", help="red, yellow, or green (clears what came before)"),
    reason: str = typer.Option(..., "--reason", help="why (kept with the mark)"),
) -> None:
    """Set a manual mark as health-authority staff; the status follows through a recompute job."""
    target = parse_id(account_id, "ACCOUNT_ID")
    if colour not in ("red", "yellow", "green"):
        fail("--colour: red, yellow or green")
    actor = ops_actor()

    async def mark(stores: Stores) -> status.ManualMark:
        async with db.transaction(stores.pool, stores.settings) as conn:
            return await status.add_manual_mark(
                conn, target, colour=cast(Colour, colour), reason=reason, by=actor
            )

    made = run(mark)
    console.print(f"mark {made.id}: {made.colour} on {target}")


@app.command("unmark")
def unmark_command(mark_id: str = typer.Argument(..., help="mark id")) -> None:
    """Lift a manual mark; the status follows through a recompute job."""
    target = parse_id(mark_id, "MARK_ID")
    actor = ops_actor()

    async def unmark(stores: Stores) -> status.ManualMark:
        async with db.transaction(stores.pool, stores.settings) as conn:
            return await status.clear_manual_mark(conn, target, by=actor)

    cleared = run(unmark)
    console.print(f"mark {cleared.id} cleared ({cleared.colour} on {cleared.account_id})")
