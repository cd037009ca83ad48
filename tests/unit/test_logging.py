"""No ID number, phone number, token, OTP or traceback reaches a log line."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from core.logging import configure, scrub_text


@pytest.fixture()
def captured() -> io.StringIO:
    configure("debug", json=True)
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)  # type: ignore[arg-type]
    return stream


def test_sensitive_keys_are_redacted(captured: io.StringIO) -> None:
    structlog.get_logger("t").info(
        "login", code="493817", token="abc.def", id_number="21010219900101123X", phone_tail="5678"
    )
    line = json.loads(captured.getvalue())
    assert line["code"] == line["token"] == line["id_number"] == "[redacted]"
    assert line["phone_tail"] == "5678"
    assert "493817" not in captured.getvalue()


def test_values_that_look_personal_are_masked_anywhere(captured: io.StringIO) -> None:
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"
    structlog.get_logger("t").warning("odd", detail=f"user 21010219900101123X phone 13812345678 {jwt}")
    logging.getLogger("thirdparty").error("Authorization: Bearer sekret-token for 13900001111")
    text = captured.getvalue()
    for leak in ("21010219900101123X", "13812345678", jwt, "sekret-token", "13900001111"):
        assert leak not in text
    assert "210102********123X" in text and "138****5678" in text


def test_tracebacks_are_reduced_to_the_exception_type(captured: io.StringIO) -> None:
    try:
        raise ValueError("id 21010219900101123X")
    except ValueError:
        structlog.get_logger("t").exception("failed")
        logging.getLogger("thirdparty").warning("failed too", exc_info=True)
    text = captured.getvalue()
    assert "Traceback" not in text and "21010219900101123X" not in text
    assert [json.loads(line)["exc_type"] for line in text.splitlines()] == ["ValueError", "ValueError"]


def test_request_id_is_on_every_line(captured: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(request_id="r-1")
    try:
        structlog.get_logger("t").info("one")
        logging.getLogger("thirdparty").info("two")
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    assert [json.loads(line)["request_id"] for line in captured.getvalue().splitlines()] == ["r-1", "r-1"]


@given(st.from_regex(r"[1-6]\d{5}(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d)\d{3}[0-9X]", fullmatch=True))
def test_any_id_number_shape_is_masked(id_number: str) -> None:
    assert id_number not in scrub_text(f"holder={id_number};")
