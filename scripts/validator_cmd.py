"""`tongban validator`: a bus validator offline: verify codes, keep a seen-set, upload rides.

Everything but `bundle` and `upload` works without a network: `verify` checks a scanned text against a bundle
file (issuer keys and revoked code ids) with the validator's own clock, refuses a code it has seen (the
seen-set lives in a file between runs) and can append the accepted ride to a rides file; `upload` sends that
file to POST /v1/terminals/rides in batches, each request signed with the terminal's secret
(docs/terminals.md). Uploading the same rides again is harmless: the server counts them as duplicates.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import msgspec
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from onecode import codec, emv
from onecode.terminal_auth import parse_secret, signed_headers
from onecode.validator import DEFAULT_MAX_AGE, DEFAULT_SKEW, Bundle, BundleError, SeenSet, Verdict, verify
from scripts.common import console, fail

app = typer.Typer(
    help="A bus validator offline: verify codes, keep a seen-set, upload rides.", no_args_is_help=True
)

SEEN_FORMAT: Final = "tongban-validator-seen/1"
RIDES_PATH: Final = "/v1/terminals/rides"
BUNDLE_PATH: Final = "/v1/terminals/bundle"
RIDE_FIELDS: Final = ("ride_id", "code_id", "counter", "generated_at", "ridden_at", "fare_fen")
UPLOAD_ATTEMPTS: Final = 4


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Unix seconds, or an RFC 3339 time with its offset."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--at: unix seconds or an RFC 3339 time, got {text!r}", 2)
    if moment.tzinfo is None:
        fail("--at: give the UTC offset (e.g. 2026-01-01T08:00:00+08:00)", 2)
    return moment.timestamp()


def load_bundle(path: Path) -> Bundle:
    try:
        return Bundle.from_json(path.read_bytes())
    except OSError as exc:
        fail(f"--bundle {path}: {exc.strerror}", 2)
    except BundleError as exc:
        fail(f"--bundle {path}: {exc}", 2)


# --- the seen-set file ---------------------------------------------------------------------------------


@contextmanager
def seen_file(path: Path | None, now: float) -> Iterator[SeenSet | None]:
    """The seen-set stored at `path`, locked against other runs, saved back (atomically) afterwards."""
    if path is None:
        yield None
        return
    lock_path = path.with_name(path.name + ".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        seen = SeenSet()
        if path.exists() and path.stat().st_size:
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
                if document.get("format") != SEEN_FORMAT:
                    raise ValueError("format")
                seen = SeenSet.from_rows(document["entries"])
            except (ValueError, KeyError, TypeError, AttributeError):
                fail(f"--seen {path}: not a seen-set file ({SEEN_FORMAT})", 2)
        seen.prune(now)
        yield seen
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps({"format": SEEN_FORMAT, "entries": seen.rows()}), encoding="utf-8")
        os.replace(temporary, path)


# --- verify ----------------------------------------------------------------------------------------------


def _code_text(code: str) -> str:
    """The TBO1: text of what was scanned: as it is, or from inside one of our EMVCo CPM payloads."""
    if code.startswith(emv.CPM_TEXT_PREFIX):
        try:
            return emv.onecode_from_cpm(code)[0]
        except emv.CpmError:
            return code  # verify() then refuses it as bad_prefix
    return code


def verdict_document(
    verdict: Verdict, *, scene: str, fare_fen: int | None, bundle: Bundle, now: float
) -> dict[str, Any]:
    """What `verify` prints: the verdict and the code's public fields (never the opaque handles)."""
    document: dict[str, Any] = {
        "valid": verdict.valid,
        "reason": verdict.reason,
        "scene": scene,
        "fare_fen": fare_fen,
        "checked_at": _rfc3339(now),
        "bundle_age_seconds": int(bundle.age_seconds(now)),
    }
    if verdict.code is not None:
        auth = verdict.code.authorisation
        document |= {
            "code_id": auth.code_id.hex(),
            "counter": verdict.code.counter,
            "generated_at": _rfc3339(verdict.code.generated_at),
            "issued_at": _rfc3339(auth.issued_at),
            "expires_at": _rfc3339(auth.expires_at),
            "scenes": [name for name, bit in codec.SCENE_NAMES.items() if auth.scenes & bit],
            "ride_cap_fen": auth.ride_cap_fen,
            "issuer_kid": auth.issuer_kid.hex(),
        }
    return document


def ride_record(verdict: Verdict, fare_fen: int, now: float) -> dict[str, Any]:
    """A rides-file line: the ride id is the code id and counter, so the same ride always has the same id."""
    assert verdict.code is not None
    code_id = verdict.code.code_id.hex()
    return {
        "ride_id": f"{code_id}.{verdict.code.counter}",
        "code_id": code_id,
        "counter": verdict.code.counter,
        "generated_at": _rfc3339(verdict.code.generated_at),
        "ridden_at": _rfc3339(now),
        "fare_fen": fare_fen,
    }


@app.command("verify")
def verify_command(
    code: str = typer.Argument(
        ..., help="the scanned text (TBO1:..., or an EMVCo CPM text); '-' reads stdin"
    ),
    bundle_file: Path = typer.Option(..., "--bundle", help="bundle JSON (tongban-onecode-bundle/1)"),
    scene: str = typer.Option("transit", help="transit, medical or payment"),
    fare: int | None = typer.Option(
        None, "--fare", min=0, help="the fare in fen (transit: checked against the cap)"
    ),
    at: str | None = typer.Option(
        None, "--at", help="the time to check at (unix seconds or RFC 3339); default now"
    ),
    seen_path: Path | None = typer.Option(
        None, "--seen", help="seen-set file kept between runs (refuses replays)"
    ),
    record: Path | None = typer.Option(
        None, "--record", help="append the accepted ride to this JSON-lines file"
    ),
    skew: int = typer.Option(DEFAULT_SKEW, min=0, max=600, help="clock skew allowed, seconds"),
    max_age: int = typer.Option(DEFAULT_MAX_AGE, min=1, max=3600, help="oldest code accepted, seconds"),
    max_bundle_age: int = typer.Option(
        86_400, min=60, help="refuse to verify with a bundle older than this (seconds): revocations go stale"
    ),
) -> None:
    """Verify one code offline and print the verdict as JSON: exit 0 valid, 1 refused, 2 usage error."""
    if scene not in codec.SCENE_NAMES:
        fail(f"--scene: transit, medical or payment, got {scene!r}", 2)
    if record is not None and (fare is None or scene != "transit"):
        fail("--record: a ride needs --scene transit and --fare", 2)
    text = typer.get_text_stream("stdin").read().strip() if code == "-" else code.strip()
    now = parse_time(at) if at is not None else time.time()
    bundle = load_bundle(bundle_file)
    age = bundle.age_seconds(now)
    if age > max_bundle_age:
        fail(
            f"--bundle {bundle_file}: {int(age)} s old (over --max-bundle-age {max_bundle_age}): download a new one",
            2,
        )
    with seen_file(seen_path, now) as seen:
        verdict = verify(
            _code_text(text),
            bundle,
            now,
            scene=codec.SCENE_NAMES[scene],
            skew=skew,
            max_age=max_age,
            fare_fen=fare,
            seen=seen,
        )
        if verdict.valid and record is not None and fare is not None:
            with record.open("a", encoding="utf-8") as rides:
                rides.write(json.dumps(ride_record(verdict, fare, now)) + "\n")
    typer.echo(json.dumps(verdict_document(verdict, scene=scene, fare_fen=fare, bundle=bundle, now=now)))
    raise typer.Exit(0 if verdict.valid else 1)


# --- talking to the server --------------------------------------------------------------------------------


def _read_secret(path: Path) -> bytes:
    try:
        return parse_secret(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"--secret-file {path}: {exc.strerror}", 2)
    except ValueError as exc:
        fail(f"--secret-file {path}: {exc}", 2)


def _url(server: str, path: str) -> tuple[str, str]:
    """(full URL, the path as the request line carries it, which is what gets signed)."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        fail(f"--server: an http(s) URL, got {server!r}", 2)
    signed_path = parts.path.rstrip("/") + path
    return f"{parts.scheme}://{parts.netloc}{signed_path}", signed_path


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        return (
            f"HTTP {response.status_code} {body.get('code') or ''}: {body.get('detail') or body.get('title')}"
        )
    return f"HTTP {response.status_code}"


def signed_request(
    client: httpx.Client, method: str, server: str, path: str, terminal: str, secret: bytes, body: bytes = b""
) -> httpx.Response:
    """One signed request, retried (with a fresh nonce and timestamp) on network errors, 429 and 5xx."""
    url, signed_path = _url(server, path)
    delay = 0.5
    for attempt in range(UPLOAD_ATTEMPTS):
        headers = signed_headers(terminal, secret, method, signed_path, body)
        if body:
            headers["Content-Type"] = "application/json"
        try:
            response = client.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            if attempt + 1 == UPLOAD_ATTEMPTS:
                fail(f"{url}: {type(exc).__name__}: the server cannot be reached")
        else:
            if response.status_code != 429 and response.status_code < 500:
                return response
            if attempt + 1 == UPLOAD_ATTEMPTS:
                fail(f"{url}: {_problem(response)}")
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.isdigit():
                delay = max(delay, min(float(retry_after), 30.0))
        time.sleep(delay + secrets.randbelow(100) / 1000)
        delay *= 2
    raise AssertionError("unreachable")


def read_rides(path: Path) -> list[dict[str, Any]]:
    rides: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        fail(f"{path}: {exc.strerror}", 2)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ride = json.loads(line)
        except ValueError:
            fail(f"{path}:{number}: not JSON", 2)
        if not isinstance(ride, dict) or set(ride) != set(RIDE_FIELDS):
            fail(f"{path}:{number}: a ride has exactly {', '.join(RIDE_FIELDS)}", 2)
        rides.append(ride)
    return rides


class UploadTotals(msgspec.Struct, kw_only=True):
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    revoked_codes: int = 0


@app.command("upload")
def upload_command(
    rides_file: Path = typer.Argument(..., help="the JSON-lines rides file `verify --record` writes"),
    server: str = typer.Option(..., help="the API's base URL, e.g. https://api.example.org"),
    terminal: str = typer.Option(..., help="this validator's terminal id"),
    secret_file: Path = typer.Option(..., help="file holding the terminal secret (64 hex digits)"),
    batch: int = typer.Option(1000, min=1, max=5000, help="rides per request"),
    timeout: float = typer.Option(30.0, min=1.0, help="seconds per request"),
) -> None:
    """Upload the rides in batches to POST /v1/terminals/rides (each request signed; idempotent per ride id)."""
    secret = _read_secret(secret_file)
    rides = read_rides(rides_file)
    totals = UploadTotals()
    progress = Progress(
        TextColumn("[bold]rides"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    with progress, httpx.Client(timeout=timeout) as client:
        task = progress.add_task("upload", total=len(rides))
        for start in range(0, len(rides), batch):
            chunk = rides[start : start + batch]
            body = json.dumps({"rides": chunk}, separators=(",", ":")).encode()
            response = signed_request(client, "POST", server, RIDES_PATH, terminal, secret, body)
            if response.status_code != 200:
                progress.stop()
                fail(f"upload refused after {start} rides: {_problem(response)}")
            answer = msgspec.json.decode(response.content, type=UploadTotals)
            totals.received += answer.received
            totals.accepted += answer.accepted
            totals.duplicates += answer.duplicates
            totals.revoked_codes += answer.revoked_codes
            progress.update(task, advance=len(chunk))
    console.print(
        f"{totals.received:,} rides sent: {totals.accepted:,} accepted, {totals.duplicates:,} already there,"
        f" {totals.revoked_codes:,} copied codes revoked",
        markup=False,
        highlight=False,
    )


@app.command("bundle")
def bundle_command(
    out: Path = typer.Option(..., help="where to write the bundle JSON"),
    server: str = typer.Option(..., help="the API's base URL"),
    terminal: str = typer.Option(..., help="this validator's terminal id"),
    secret_file: Path = typer.Option(..., help="file holding the terminal secret (64 hex digits)"),
) -> None:
    """Download the current bundle (issuer keys, revoked code ids) from GET /v1/terminals/bundle."""
    secret = _read_secret(secret_file)
    with httpx.Client(timeout=30.0) as client:
        response = signed_request(client, "GET", server, BUNDLE_PATH, terminal, secret)
    if response.status_code != 200:
        fail(f"bundle: {_problem(response)}")
    try:
        bundle = Bundle.from_json(response.content)
    except BundleError as exc:
        fail(f"bundle: the server sent {exc}")
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_bytes(response.content)
    os.replace(temporary, out)
    console.print(
        f"bundle: {len(bundle.issuer_keys)} issuer keys, {len(bundle.revoked):,} revoked codes -> {out}",
        markup=False,
        highlight=False,
    )
