"""`tongban miniapps`: the review queue, organisations, platform freezes, rectification cases and app
statistics, from the ops console."""

from __future__ import annotations

from datetime import date
from typing import Literal
from uuid import UUID

import typer
from rich.table import Table
from rich.text import Text

from core import clock
from core.clock import for_display
from core.stores import Stores
from miniapps import analytics, ratings, registry, versions
from miniapps.models import (
    Actor,
    AppView,
    CreateOrganisation,
    MemberRef,
    OrganisationView,
    ReviewItem,
    VersionView,
)
from scripts.common import console, fail
from scripts.users_cmd import ops_actor, parse_id, run

app = typer.Typer(help="Mini-apps: review, organisations, freezes, ratings and visits.", no_args_is_help=True)
review_app = typer.Typer(help="The review queue: list, approve, reject.", no_args_is_help=True)
orgs_app = typer.Typer(help="Organisations: create, list.", no_args_is_help=True)
app.add_typer(review_app, name="review")
app.add_typer(orgs_app, name="orgs")


@app.callback()
def miniapps() -> None:
    """Mini-apps: review queue, organisations, platform freezes, ratings and visits."""


def _size(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MiB"


@review_app.command("list")
def review_list_command(limit: int = typer.Option(100, "--limit", min=1, max=1000)) -> None:
    """Versions waiting for review, oldest first."""

    async def queue(stores: Stores) -> list[ReviewItem]:
        return await versions.review_queue(stores, limit)

    items = run(queue)
    table = Table(title="review queue (oldest first)", caption=f"{len(items)} waiting, times Asia/Shanghai")
    for column in ("version id", "app", "appid", "version", "organisation", "package", "submitted"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(
            Text(str(item.version_id)),
            Text(item.app_name),
            Text(item.appid),
            Text(item.version),
            Text(item.organisation_name),
            Text(f"{_size(item.package_size)} sha256 {item.package_sha256[:12]}…"),
            Text(for_display(item.submitted_at) if item.submitted_at else "-"),
        )
    console.print(table)


def _decide(version_id: UUID, action: Literal["approve", "reject"], reason: str | None = None) -> VersionView:
    actor = Actor.ops(ops_actor())

    async def decide(stores: Stores) -> VersionView:
        return await versions.transition(stores, actor, version_id, action, reason=reason)

    return run(decide)


@review_app.command("approve")
def review_approve_command(
    version_id: str = typer.Argument(..., help="version id (from review list)"),
) -> None:
    """Approve a submitted version: its organisation may then grey-release or release it."""
    view = _decide(parse_id(version_id, "VERSION_ID"), "approve")
    console.print(f"version {view.version} of {view.appid} approved ({view.id})")


@review_app.command("reject")
def review_reject_command(
    version_id: str = typer.Argument(..., help="version id (from review list)"),
    reason: str = typer.Option(..., "--reason", help="why (shown to the app's developers)"),
) -> None:
    """Reject a submitted version, saying why."""
    if not reason.strip():
        fail("--reason: say why the version is rejected")
    view = _decide(parse_id(version_id, "VERSION_ID"), "reject", reason)
    console.print(f"version {view.version} of {view.appid} rejected ({view.id})")


@orgs_app.command("create")
def orgs_create_command(
    name: str = typer.Option(..., "--name"),
    kind: str = typer.Option("department", "--kind", help="department, utility, hospital or other"),
    region: str = typer.Option(..., "--region", help="GB/T 2260 region code, e.g. 150100"),
    admin: str | None = typer.Option(None, "--admin", help="account id of the first admin"),
    admin_phone: str | None = typer.Option(None, "--admin-phone", help="or the first admin's phone"),
) -> None:
    """Create an organisation with its first admin (a real-name verified account)."""
    if (admin is None) == (admin_phone is None):
        fail("give exactly one of --admin ACCOUNT_ID or --admin-phone PHONE")
    if kind not in ("department", "utility", "hospital", "other"):
        fail("--kind: department, utility, hospital or other")
    first = MemberRef(account_id=parse_id(admin, "--admin") if admin else None, phone=admin_phone)
    request = CreateOrganisation(name=name, kind=kind, region_code=region, first_admin=first)  # type: ignore[arg-type]
    actor = Actor.ops(ops_actor())

    async def create(stores: Stores) -> OrganisationView:
        return await registry.create_organisation(stores, actor, request)

    view = run(create)
    console.print(f"organisation {view.name} created: {view.id}")


@orgs_app.command("list")
def orgs_list_command() -> None:
    """Every organisation."""
    rows: list[OrganisationView] = run(registry.list_organisations)
    table = Table(title="organisations", caption=f"{len(rows)} organisations, times Asia/Shanghai")
    for column in ("id", "name", "kind", "region", "created"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            Text(str(row.id)),
            Text(row.name),
            Text(row.kind),
            Text(row.region_code),
            Text(for_display(row.created_at)),
        )
    console.print(table)


def _freeze(appid: str, freeze: bool, reason: str | None) -> AppView:
    actor = Actor.ops(ops_actor())

    async def change(stores: Stores) -> AppView:
        if freeze:
            return await registry.freeze_app(stores, actor, appid, reason or "", by="platform")
        return await registry.unfreeze_app(stores, actor, appid, by="platform")

    return run(change)


@app.command("freeze")
def freeze_command(
    appid: str = typer.Argument(...),
    reason: str = typer.Option(..., "--reason", help="why (kept with the app)"),
) -> None:
    """Platform freeze: the app leaves the catalog and gets no SDK tokens; only the platform lifts it."""
    if not reason.strip():
        fail("--reason: say why the app is frozen")
    view = _freeze(appid, True, reason)
    console.print(f"{view.appid} ({view.name}) frozen")


@app.command("unfreeze")
def unfreeze_command(appid: str = typer.Argument(...)) -> None:
    """Lift a freeze (a platform's or an organisation's)."""
    view = _freeze(appid, False, None)
    console.print(f"{view.appid} ({view.name}) unfrozen")


# --- ratings and analytics ---------------------------------------------------------------------------------


@app.command("cases")
def cases_command(
    overdue: bool = typer.Option(False, "--overdue", help="only cases past their due day"),
    limit: int = typer.Option(1000, "--limit", min=1, max=ratings.MAX_CASES),
) -> None:
    """Open rectification cases (好差评), earliest due first."""

    async def load(stores: Stores) -> list[ratings.CaseView]:
        return await ratings.open_cases(stores, overdue_only=overdue, limit=limit)

    cases = run(load)
    today = ratings.local_day(clock.now())
    title = "overdue rectification cases" if overdue else "open rectification cases"
    table = Table(title=title, caption=f"{len(cases)} open, days and times Asia/Shanghai")
    for column in (
        "case id",
        "app",
        "appid",
        "organisation",
        "level",
        "transaction",
        "opened",
        "due",
        "late",
    ):
        table.add_column(column, overflow="fold")
    for case in cases:
        late = (today - case.due_on).days if case.overdue else 0
        table.add_row(
            Text(str(case.id)),
            Text(case.app_name),
            Text(case.appid),
            Text(case.organisation_name),
            Text(case.level),
            Text(case.transaction_id),
            Text(for_display(case.opened_at)),
            Text(case.due_on.isoformat()),
            Text(f"{late} days", style="bold red") if late else Text("-"),
        )
    console.print(table)


@app.command("stats")
def stats_command(
    appid: str = typer.Argument(...),
    days: int = typer.Option(14, "--days", min=1, max=analytics.MAX_DAYS, help="visits of the last N days"),
) -> None:
    """The app's ratings (per level, satisfaction rate, cases) and its visits of the last N days."""

    async def load(stores: Stores) -> tuple[ratings.RatingStats, analytics.VisitStats]:
        return await ratings.app_stats(stores, appid), await analytics.app_visits(stores, appid, days)

    stats, visits = run(load)
    rate = f"{stats.satisfaction_rate:.1%}" if stats.satisfaction_rate is not None else "-"
    rated = Table(title=f"ratings of {appid}")
    for column in ("level", "score", "count", "share"):
        rated.add_column(column, justify="right" if column != "level" else "left")
    for level in stats.levels:
        share = f"{level.count / stats.total:.1%}" if stats.total else "-"
        rated.add_row(Text(level.level), Text(str(level.score)), Text(str(level.count)), Text(share))
    console.print(rated)
    console.print(
        f"{stats.total} ratings, satisfaction rate {rate} (非常满意 + 满意 + 基本满意)",
        markup=False,
        highlight=False,
    )
    cases = stats.cases
    console.print(
        f"cases: {cases.open} open ({cases.overdue} overdue), {cases.answered} answered "
        f"({cases.answered_late} late)",
        markup=False,
        highlight=False,
    )
    visited = Table(title=f"visits of {appid}")
    for column in ("day", "visits", "unique users"):
        visited.add_column(column, justify="left" if column == "day" else "right")
    for item in visits.days:
        visited.add_row(Text(item.day.isoformat()), Text(str(item.visits)), Text(str(item.unique_users)))
    console.print(visited)
    console.print(
        f"{visits.visits} visits in {days} days, peak {visits.peak_unique_users} users a day "
        "(days in Asia/Shanghai; today as of the last rollup)",
        markup=False,
        highlight=False,
    )


@app.command("rollup")
def rollup_command(
    day: str | None = typer.Option(
        None, "--day", help="YYYY-MM-DD (Asia/Shanghai); default today and yesterday"
    ),
) -> None:
    """Roll visits up from Redis into PostgreSQL now (the worker does it every five minutes; safe to repeat).
    Redis keeps a day's counts for eight days."""
    chosen: date | None = None
    if day is not None:
        try:
            chosen = date.fromisoformat(day.strip())
        except ValueError:
            fail(f"--day: {day!r} is not a date (YYYY-MM-DD)")

    async def roll(stores: Stores) -> int:
        if chosen is None:
            return await analytics.rollup_recent(stores)
        return await analytics.rollup_day(stores, chosen)

    written = run(roll)
    console.print(f"{written} app-days rolled up", markup=False, highlight=False)
