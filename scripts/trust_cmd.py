"""`tongban trust`: import other issuers' trust, list what is trusted; and `tongban health signer`: our
pass-signer certificates (list, rotate)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import typer
from rich.table import Table
from rich.text import Text

from core import clock, keys
from core.errors import TongbanError
from core.stores import Stores
from health_code import issuer, trustlist
from health_code.certs import CertificateError, load_certificate
from health_code.trust import TrustListError
from scripts.common import console, fail, with_stores
from scripts.users_cmd import ops_actor

app = typer.Typer(help="Trust of other issuers: import, list.", no_args_is_help=True)
signer_app = typer.Typer(help="Our pass-signer certificates: list, rotate.", no_args_is_help=True)
T = TypeVar("T")


def _run(func: Callable[[Stores], Awaitable[T]]) -> T:
    """with_stores, with a bad file, a conflict or a key store problem as one line and exit code 1."""
    try:
        return with_stores(func)
    except (TrustListError, CertificateError, keys.KeyStoreError) as exc:
        fail(str(exc))
    except TongbanError as exc:
        fail(exc.detail)


def _when(moment: datetime | None) -> str:
    return clock.for_display(moment) if moment is not None else "-"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"{what} {path}: {exc.strerror or exc}")


@app.command("import")
def import_command(
    file: Path = typer.Argument(
        ..., help="another province's trust list (JSON), the EU DCC trust list, or one signer certificate"
    ),
    root: Path | None = typer.Option(
        None,
        "--root",
        help="the issuer's root certificate (PEM/DER): required for a province's trust list (its signature "
        "is checked); for one certificate, it must be issued by it",
    ),
) -> None:
    """Trust another issuer's passes: every API process verifies them within seconds. Importing the same
    source again (the same province, the EU list, the same certificate) replaces it."""
    data = _read(file, "trust file")
    root_cert = None
    if root is not None:
        try:
            root_cert = load_certificate(_read(root, "root certificate"))
        except CertificateError as exc:
            fail(f"{root}: {exc}")
    actor = ops_actor()
    result = _run(lambda stores: trustlist.import_trust(stores, data, root=root_cert, by=actor))
    table = Table(title=f"imported {file.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field, value in (
        ("kind", result.kind),
        ("issuer", result.issuer),
        ("version", str(result.version) if result.version is not None else "-"),
        ("signers", str(result.signers)),
        ("revocations", str(result.revocations)),
        ("keys left out (not P-256, unreadable)", str(result.skipped)),
        ("signature checked", "yes" if result.signature_checked else "no"),
    ):
        table.add_row(field, Text(value))
    console.print(table)


@app.command("list")
def list_command() -> None:
    """Every signer whose passes verify here: ours, then the imported ones. Times are Asia/Shanghai."""
    views = _run(trustlist.trusted_signers)
    if not views:
        console.print("no trusted signers (ours are made with the first pass, or `tongban demo seed`)")
        return
    table = Table(title="Trusted signers (times Asia/Shanghai)")
    for column in ("source", "region", "kid", "pass types", "valid until", "subject"):
        table.add_column(column, overflow="fold", no_wrap=column == "kid")
    for view in views:
        table.add_row(
            Text(view.source),
            Text(view.region or "-"),
            view.kid,
            ", ".join(view.pass_types),
            _when(view.not_after),
            Text(view.subject),
        )
    console.print(table)


def _certificate_table(title: str, infos: list[issuer.CertificateInfo]) -> Table:
    table = Table(title=title)
    for column in ("kid", "role", "status", "key", "pass types", "not before", "not after", "trusted until"):
        table.add_column(column, overflow="fold", no_wrap=column in ("kid", "key"))
    for info in infos:
        table.add_row(
            info.kid,
            info.role,
            info.status,
            info.key_kid,
            ", ".join(info.pass_types) or "-",
            _when(info.not_before),
            _when(info.not_after),
            _when(info.trusted_until),
        )
    return table


@signer_app.command("list")
def signer_list() -> None:
    """Our root and signer certificates (made on first use). Times are Asia/Shanghai."""

    async def go(stores: Stores) -> list[issuer.CertificateInfo]:
        await issuer.ensure_certificates(stores)
        return await issuer.certificate_list(stores)

    console.print(_certificate_table("Pass certificates (times Asia/Shanghai)", _run(go)))


@signer_app.command("rotate")
def signer_rotate() -> None:
    """Certify the next signer key and start signing with it. The old certificate stays in the trust list
    until its passes have expired; every API process signs with the new key within the key cache time."""
    rotation = _run(issuer.rotate_signer)
    console.print(
        _certificate_table("Signer rotated (times Asia/Shanghai)", [rotation.issued, *rotation.retired])
    )
    console.print(f"signing with {rotation.issued.kid}; {len(rotation.retired)} retired")
