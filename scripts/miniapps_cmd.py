"""`tongban miniapps`: the review queue, organisations, platform freezes, rectification cases and app
statistics, from the ops console."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

import typer
from rich.table import Table
from rich.text import Text

from core.clock import for_display
from core.stores import Stores
from miniapps import registry, versions
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

app = typer.Typer(help="Mini-apps: review, organisations, freezes.", no_args_is_help=True)
review_app = typer.Typer(help="The review queue: list, approve, reject.", no_args_is_help=True)
orgs_app = typer.Typer(help="Organisations: create, list.", no_args_is_help=True)
app.add_typer(review_app, name="review")
app.add_typer(orgs_app, name="orgs")


@app.callback()
def miniapps() -> None:
    """Mini-apps: review queue, organisations, platform freezes."""


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
