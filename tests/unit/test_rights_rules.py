"""Pure rules of the rights and consent code: scope parsing, ID-number input, reasons, deletion states,
erase job ids, the worker's job modules and the guarded routes."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth import consent, rights
from core.errors import InvalidInput
from core.settings import load_settings

# --- scopes ---------------------------------------------------------------------------------------------

valid_scope = st.from_regex(consent.SCOPE, fullmatch=True)


@given(st.lists(valid_scope, min_size=1, max_size=consent.MAX_SCOPES))
def test_valid_scopes_come_back_sorted_without_repeats(scopes: list[str]) -> None:
    checked = consent.check_scopes(scopes)
    assert checked == sorted(set(scopes))
    assert consent.check_scopes(checked) == checked  # idempotent


@given(st.lists(st.text(alphabet=string.printable + "中文", max_size=70), max_size=40))
def test_any_input_is_either_a_clean_scope_list_or_invalid_scopes(scopes: list[str]) -> None:
    try:
        checked = consent.check_scopes(scopes)
    except InvalidInput as exc:
        assert exc.field == "scopes"
        assert (
            not scopes or len(scopes) > consent.MAX_SCOPES or not all(consent.SCOPE.match(s) for s in scopes)
        )
    else:
        assert checked and set(checked) == set(scopes)
        assert all(consent.SCOPE.fullmatch(s) for s in checked)


@pytest.mark.parametrize(
    "scopes",
    [[], "phone", ["Phone"], ["phone "], ["1phone"], ["a" * 65], ["x"] * 0, [f"s{i}" for i in range(33)]],
)
def test_bad_scope_lists(scopes: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        consent.check_scopes(scopes)
    assert caught.value.field == "scopes"


# --- ID numbers and reasons ------------------------------------------------------------------------------


def _valid_id(stem: str) -> str:
    from stdnum.cn import ric

    return next(stem + c for c in "0123456789X" if ric.is_valid(stem + c))


@given(
    st.dates(min_value=datetime(1930, 1, 1).date(), max_value=datetime(2020, 12, 31).date()),
    st.integers(min_value=0, max_value=999),
)
def test_id_number_input_is_normalised_and_checked(born: Any, sequence: int) -> None:
    number = _valid_id(f"110105{born:%Y%m%d}{sequence:03d}")
    assert rights.normalize_id_number_input(number) == number
    # Full-width digits, spaces and a lower-case x are what people type: same number.
    typed = " ".join(number.lower()).translate({ord(d): ord(d) + 0xFEE0 for d in "0123456789"})
    assert rights.normalize_id_number_input(typed) == number
    # Any other last character breaks the MOD 11-2 check.
    for wrong in "0123456789X":
        if wrong != number[-1]:
            with pytest.raises(InvalidInput):
                rights.normalize_id_number_input(number[:-1] + wrong)


@pytest.mark.parametrize("raw", ["", "123", "11010519900307123", "1101051990030712399", "110105199013071230"])
def test_malformed_id_numbers(raw: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        rights.normalize_id_number_input(raw)
    assert caught.value.field == "id_number"


def test_reasons() -> None:
    assert rights.check_reason("  ticket 7 ") == "ticket 7"
    for bad in (None, "", "   ", "a\nb", "x" * (rights.MAX_REASON + 1)):
        with pytest.raises(InvalidInput):
            rights.check_reason(bad)


# --- deletion ---------------------------------------------------------------------------------------------

AT = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def _row(**changes: Any) -> dict[str, Any]:
    row = {"requested_at": AT, "due_at": AT + timedelta(days=15), "cancelled_at": None, "completed_at": None}
    return {**row, **changes}


def test_deletion_states() -> None:
    assert rights.deletion_state(None).state == "none"
    pending = rights.deletion_state(_row())  # type: ignore[arg-type]
    assert pending.state == "pending" and pending.due_at == AT + timedelta(days=15)
    assert rights.deletion_state(_row(cancelled_at=AT)).state == "cancelled"  # type: ignore[arg-type]
    assert rights.deletion_state(_row(completed_at=AT)).state == "completed"  # type: ignore[arg-type]


def test_erase_job_ids_are_one_per_request() -> None:
    from uuid import UUID

    account = UUID("01933c4e-0000-7000-8000-000000000001")
    first = rights.erase_job_id(account, AT)
    assert first == rights.erase_job_id(account, AT)
    assert first != rights.erase_job_id(account, AT + timedelta(microseconds=1))
    assert first != rights.erase_job_id(UUID("01933c4e-0000-7000-8000-000000000002"), AT)
    # What core.jobs.enqueue_in_tx accepts as an idempotency key.
    assert len(first) <= 200 and first.isprintable() and " " not in first
    assert str(account) in first


def test_the_worker_runs_the_erase_job() -> None:
    from core import jobs
    from scripts.worker import JOB_MODULES, load_job_modules

    assert "auth.rights" in JOB_MODULES
    load_job_modules()
    spec = jobs._REGISTRY["auth.erase_account"]
    assert spec.payload_type is rights.EraseAccount


# --- routes ---------------------------------------------------------------------------------------------


def test_rights_routes_exist_and_are_guarded() -> None:
    from api.app import create_app
    from api.guards import citizen

    app = create_app(load_settings({}))
    wanted = {
        ("GET", "/v1/me/export"),
        ("DELETE", "/v1/me"),
        ("GET", "/v1/me/deletion"),
        ("DELETE", "/v1/me/deletion"),
        ("GET", "/v1/me/consents"),
        ("DELETE", "/v1/me/consents/{consent_id:uuid}"),
    }
    found = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in getattr(handler, "http_methods", set()):
                if (method, route.path) in wanted:
                    assert citizen in handler.resolve_guards(), (method, route.path)
                    found.add((method, route.path))
    assert found == wanted
