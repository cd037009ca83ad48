"""Simulated population registry (人口库), shaped like the real-name check services: the caller sends a name and
an ID number and hears back only whether the pair matches a record ("usable but not visible": the registry
never gives out a name, a photo or any other field).

POST /registry/import   CSV body (text/csv; `name,id_number` rows, optional header) or JSON
                        {"rows": [{"name", "id_number"}, ...]} -> {imported, total, skipped_lines}
POST /registry/verify   {name, id_number} -> {match}
GET /registry/stats     {records}; DELETE /registry clears every record.
Names and ID numbers are personal data: log lines carry counts only.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from typing import Any

import msgspec
import structlog
from litestar import Litestar, Request, delete, get, post
from litestar.datastructures import State
from litestar.params import JSONBody

from sandbox.frame import FAULTY, Provider, ProviderError, provider_app

log = structlog.get_logger(__name__)

MAX_FIELD = 64  # longer than any name or ID number; refuses garbage without echoing it


def normalize(value: str) -> str:
    """What the registry compares: NFKC (full-width folded), trimmed, upper-cased (the ID number's x)."""
    return unicodedata.normalize("NFKC", value).strip().upper()


class Row(msgspec.Struct):
    name: str
    id_number: str


class ImportIn(msgspec.Struct):
    rows: list[Row]


class ImportOut(msgspec.Struct):
    imported: int
    total: int
    skipped_lines: list[int]  # 1-based lines (CSV) or row positions (JSON) that were not records


class VerifyIn(msgspec.Struct):
    name: str
    id_number: str


class VerifyOut(msgspec.Struct):
    match: bool


def _csv_rows(text: str) -> list[tuple[int, list[str]]]:
    rows = [(number, row) for number, row in enumerate(csv.reader(io.StringIO(text)), start=1) if row]
    if rows and [cell.strip().lower() for cell in rows[0][1]] == ["name", "id_number"]:
        rows = rows[1:]
    return rows


def _json_rows(body: bytes) -> list[tuple[int, list[str]]]:
    try:
        parsed = msgspec.json.decode(body, type=ImportIn | list[Row])
    except msgspec.ValidationError as exc:
        raise ProviderError(400, "isv.INVALID_PARAMETERS", f"rows: {exc}") from None
    except msgspec.DecodeError:
        raise ProviderError(400, "isv.INVALID_PARAMETERS", "body is not JSON") from None
    rows: list[Row] = parsed.rows if isinstance(parsed, ImportIn) else parsed
    return [(number, [row.name, row.id_number]) for number, row in enumerate(rows, start=1)]


def load(records: dict[str, str], rows: list[tuple[int, list[str]]]) -> tuple[int, list[int]]:
    """Add (or replace) the records; (how many were added, numbers of the rows that were not records)."""
    imported, skipped = 0, []
    for number, cells in rows:
        if len(cells) != 2:
            skipped.append(number)
            continue
        name, id_number = normalize(cells[0]), normalize(cells[1])
        if not name or not id_number or len(name) > MAX_FIELD or len(id_number) > MAX_FIELD:
            skipped.append(number)
            continue
        records[id_number] = name
        imported += 1
    return imported, skipped


@post("/registry/import", status_code=200)
async def import_records(request: Request[Any, Any, State], state: State) -> ImportOut:
    body = await request.body()
    if request.content_type[0] in ("text/csv", "text/plain"):
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ProviderError(400, "isv.INVALID_PARAMETERS", "CSV body must be UTF-8") from None
        rows = _csv_rows(text)
    else:
        rows = _json_rows(body)
    records: dict[str, str] = state.records
    imported, skipped = load(records, rows)
    log.info("registry.imported", imported=imported, skipped=len(skipped), total=len(records))
    return ImportOut(imported=imported, total=len(records), skipped_lines=skipped)


@post("/registry/verify", status_code=200, opt=FAULTY, sync_to_thread=False)
def verify(state: State, data: JSONBody[VerifyIn]) -> VerifyOut:
    records: dict[str, str] = state.records
    stored = records.get(normalize(data.id_number))
    matched = stored is not None and stored == normalize(data.name)
    log.info("registry.verified", match=matched)
    return VerifyOut(match=matched)


@get("/registry/stats", sync_to_thread=False)
def stats(state: State) -> dict[str, int]:
    return {"records": len(state.records)}


@delete("/registry", status_code=200, sync_to_thread=False)
def clear(state: State) -> dict[str, int]:
    records: dict[str, str] = state.records
    deleted = len(records)
    records.clear()
    return {"deleted": deleted}


def create_app() -> Litestar:
    return provider_app("population", [import_records, verify, stats, clear], state={"records": {}})


PROVIDER = Provider(
    name="population",
    title="Population registry",
    create_app=create_app,
    port_setting="sandbox_population_port",
    url_setting="population_registry_url",
)
