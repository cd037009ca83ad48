"""Masked display forms: the examples from the spec, and properties over arbitrary input."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.pii import (
    mask_id_number,
    mask_name,
    mask_phone,
    normalize_id_number,
    normalize_name,
    normalize_phone,
)


@pytest.mark.parametrize(
    ("mask", "value", "shown"),
    [
        (mask_id_number, "210102199001011234", "2101**********1234"),
        (mask_id_number, "21010219900101123x", "2101**********123X"),
        (mask_id_number, " 2101 0219 9001 0112 34 ", "2101**********1234"),
        (mask_id_number, "12345678", "********"),
        (mask_name, "张三", "张*"),
        (mask_name, "欧阳娜娜", "欧***"),
        (mask_name, "李", "*"),
        (mask_name, "  王小明 ", "王**"),
        (mask_name, "", ""),
        (mask_phone, "13812345678", "138****5678"),
        (mask_phone, "+86 138-1234-5678", "138****5678"),
        (mask_phone, "1234567", "*******"),
    ],
)
def test_examples(mask: object, value: str, shown: str) -> None:
    assert callable(mask)
    assert mask(value) == shown


def _hidden_between(masked: str, original: str, head: int, tail: int) -> None:
    assert len(masked) == len(original)
    if len(original) <= head + tail:
        assert masked == "*" * len(original)
        return
    assert masked[:head] == original[:head]
    assert masked[len(original) - tail :] == original[len(original) - tail :]
    assert set(masked[head : len(original) - tail]) == {"*"}


@given(st.text())
def test_id_number_mask_keeps_four_and_four(value: str) -> None:
    _hidden_between(mask_id_number(value), normalize_id_number(value), 4, 4)


@given(st.from_regex(r"\A[1-9]\d{16}[\dX]\Z"))
def test_id_number_mask_never_shows_the_birth_date(value: str) -> None:
    masked = mask_id_number(value)
    assert masked[4:14] == "*" * 10
    assert value[6:14] not in masked


@given(st.text())
def test_phone_mask_keeps_three_and_four(value: str) -> None:
    _hidden_between(mask_phone(value), normalize_phone(value), 3, 4)


@given(st.text())
def test_name_mask_keeps_only_the_first_character(value: str) -> None:
    name = normalize_name(value)
    masked = mask_name(value)
    assert len(masked) == len(name)
    if len(name) >= 2:
        assert masked[0] == name[0]
        assert set(masked[1:]) == {"*"}
    else:
        assert set(masked) <= {"*"}


@given(st.text())
@example("a \u0301")  # removing the space joins a letter and a combining accent
@example("\u00b4")  # NFKC turns the acute accent into a space and a combining accent
@example("+86+8613812345678")
@example("ß ẞ ǅ")  # upper-casing changes the length
def test_normalisers_are_idempotent(value: str) -> None:
    for normalize in (normalize_id_number, normalize_name, normalize_phone):
        once = normalize(value)
        assert normalize(once) == once
