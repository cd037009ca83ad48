"""`tongban pass`: health passes offline, as a checkpoint checks them (no stores, no network)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import typer

from health_code.certs import CertificateError, load_certificate
from health_code.trust import TrustListError, TrustStore, load_trust_file
from health_code.verify import verify
from scripts.common import fail

app = typer.Typer(
    help="Health passes offline: verify a scanned pass against a trust list.", no_args_is_help=True
)

USAGE_ERROR = 2


def parse_time(text: str) -> datetime:
    """ISO 8601 (a time without offset is UTC) or unix seconds."""
    stripped = text.strip()
    try:
        if stripped.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(stripped), UTC)
        moment = datetime.fromisoformat(stripped)
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"--at {text!r}: an ISO 8601 time (2025-06-01T08:00:00+08:00) or unix seconds"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"{what} {path}: {exc.strerror or exc}", USAGE_ERROR)


@app.command("verify")
def verify_command(
    payload: str = typer.Argument(
        ..., help="the scanned text (TB1:... or HC1:...), or - to read it from stdin"
    ),
    trust: Path | None = typer.Option(
        None, "--trust", help="our trust-list JSON, an EU DCC trust list, or one signer certificate (PEM/DER)"
    ),
    root: Path | None = typer.Option(
        None,
        "--root",
        help="root certificate (PEM/DER): the trust list's signature (or the certificate's issuer) is checked",
    ),
    at: str | None = typer.Option(
        None, "--at", help="verify as of this time (ISO 8601 or unix seconds; default now)"
    ),
) -> None:
    """Verify a pass offline and print the verdict as JSON. Exit 0 valid, 1 invalid, 2 usage error."""
    if payload == "-":
        payload = sys.stdin.read()
    payload = payload.rstrip("\r\n")
    try:
        now = parse_time(at) if at is not None else datetime.now(UTC)
    except ValueError as exc:
        fail(str(exc), USAGE_ERROR)
    store = TrustStore()
    if root is not None and trust is None:
        fail("--root checks a --trust file: give both", USAGE_ERROR)
    root_cert = None
    if root is not None:
        try:
            root_cert = load_certificate(_read(root, "root certificate"))
        except CertificateError as exc:
            fail(f"{root}: {exc}", USAGE_ERROR)
    if trust is not None:
        try:
            store = load_trust_file(_read(trust, "trust file"), root=root_cert)
        except TrustListError as exc:
            fail(f"{trust}: {exc}", USAGE_ERROR)
    verdict = verify(payload, store, now)
    sys.stdout.write(msgspec.json.encode(verdict).decode() + "\n")
    raise typer.Exit(0 if verdict.valid else 1)
