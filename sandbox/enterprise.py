"""Simulated enterprise registry (the market regulator's register of legal persons): look an enterprise up by
its unified social credit code (GB 32100) and get its name, status and legal representative.

POST /registry/enterprises [{uscc, name, status, legal_rep_name, legal_rep_id_number}, ...] seeds or replaces
records (tests and the demo); DELETE /registry/enterprises clears them.
GET /registry/enterprises/{uscc} -> the record, or 404 NotFound. Only this lookup fails under injected faults.
Records hold a person's name and ID number, so log lines carry counts and the (public) credit code only.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import structlog
from litestar import Litestar, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from stdnum.cn import ric, uscc
from stdnum.exceptions import ValidationError
from stdnum.iso7064 import mod_11_2

from sandbox.frame import FAULTY, Provider, ProviderError, provider_app

log = structlog.get_logger(__name__)

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class EnterpriseRecord(msgspec.Struct, forbid_unknown_fields=True):
    uscc: Annotated[str, msgspec.Meta(max_length=64)]
    name: Text
    legal_rep_name: Text
    legal_rep_id_number: Annotated[str, msgspec.Meta(max_length=32)]
    # 存续/在业 "active"; 吊销 "revoked"; 注销 "cancelled"; 迁出 "moved_out". Free text, as registries vary.
    status: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] = "active"


class SeedOut(msgspec.Struct):
    stored: int


def _checked(record: EnterpriseRecord) -> EnterpriseRecord:
    """The record with its codes in canonical form; a malformed code is refused (naming the field only)."""
    try:
        code = uscc.validate(record.uscc)
    except ValidationError:
        raise ProviderError(400, "isv.INVALID_PARAMETERS", "uscc: not a valid credit code") from None
    try:
        # Check digit only: stdnum's region check refuses codes created after the holder's birth year,
        # which real registries hold (region codes were renumbered after cards were issued).
        id_number = mod_11_2.validate(ric.compact(record.legal_rep_id_number))
        if len(id_number) != 18:
            raise ValidationError
    except ValidationError:
        raise ProviderError(
            400, "isv.INVALID_PARAMETERS", "legal_rep_id_number: not a valid ID number"
        ) from None
    return msgspec.structs.replace(record, uscc=code, legal_rep_id_number=id_number)


@post("/registry/enterprises", status_code=200, sync_to_thread=False)
def seed(state: State, data: JSONBody[list[EnterpriseRecord]]) -> SeedOut:
    records: dict[str, EnterpriseRecord] = state.records
    checked = [_checked(record) for record in data]  # all or nothing
    for record in checked:
        records[record.uscc] = record
    log.info("enterprise.seeded", count=len(checked))
    return SeedOut(stored=len(checked))


@delete("/registry/enterprises", status_code=200, sync_to_thread=False)
def clear(state: State) -> dict[str, int]:
    records: dict[str, EnterpriseRecord] = state.records
    deleted = len(records)
    records.clear()
    return {"deleted": deleted}


@get("/registry/enterprises/{code:str}", opt=FAULTY, sync_to_thread=False)
def lookup(state: State, code: FromPath[str]) -> EnterpriseRecord:
    records: dict[str, EnterpriseRecord] = state.records
    record = records.get(uscc.compact(code))
    log.info("enterprise.lookup", uscc=uscc.compact(code)[:18], found=record is not None)
    if record is None:
        raise ProviderError(404, "NotFound", "no enterprise is registered under this code")
    return record


def create_app() -> Litestar:
    return provider_app("enterprise", [seed, clear, lookup], state={"records": {}})


PROVIDER = Provider(
    name="enterprise",
    title="Enterprise registry",
    create_app=create_app,
    port_setting="sandbox_enterprise_port",
    url_setting="enterprise_registry_url",
)
