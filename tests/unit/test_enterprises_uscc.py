"""Unified social credit codes (GB 32100) as the enterprise registration takes them: codes built by the
standard's own rule pass, every single-character change fails, and a failure names the field `uscc`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth.enterprises import canonical_uscc
from core.errors import InvalidInput

# GB 32100 code alphabet: digits and capitals without I, O, S, V, Z; a character's value is its place here.
ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
ANY_CHARACTER = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def check_character(body: str) -> str:
    """The 18th character, written out from the standard (weights 3^i mod 31), not taken from the library."""
    total = sum(ALPHABET.index(char) * pow(3, i, 31) for i, char in enumerate(body))
    return ALPHABET[(31 - total % 31) % 31]


bodies = st.builds(
    lambda head, tail: head + tail,
    st.text("0123456789", min_size=8, max_size=8),  # registering authority, entity type, region code
    st.text(ALPHABET, min_size=9, max_size=9),  # organisation code
)
codes = bodies.map(lambda body: body + check_character(body))


def test_a_published_code_passes() -> None:
    assert canonical_uscc("91110000600037341L") == "91110000600037341L"


@given(codes)
def test_valid_codes_pass_unchanged(code: str) -> None:
    assert canonical_uscc(code) == code


@given(codes, st.data())
def test_every_single_character_change_fails(code: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, 17), label="position")
    replacement = data.draw(
        st.sampled_from([c for c in ANY_CHARACTER if c != code[position]]), label="replacement"
    )
    changed = code[:position] + replacement + code[position + 1 :]
    with pytest.raises(InvalidInput) as refused:
        canonical_uscc(changed)
    assert refused.value.field == "uscc" and refused.value.code == "invalid_uscc"


@given(codes, st.data())
def test_a_dropped_or_added_character_fails(code: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, 17))
    for changed in (code[:position] + code[position + 1 :], code + data.draw(st.sampled_from(ALPHABET))):
        with pytest.raises(InvalidInput):
            canonical_uscc(changed)


@given(codes)
def test_how_people_write_it_does_not_matter(code: str) -> None:
    """Lower case, spaces, dashes and full-width characters (from a Chinese input method) fold to the code."""
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in code)
    spaced = f" {code[:2]} {code[2:8]}-{code[8:17]} {code[17]} "
    for spelling in (code.lower(), full_width, spaced):
        assert canonical_uscc(spelling) == code


@pytest.mark.parametrize(
    "value", ["", "   ", "91110000600037341", "9111000060003734IL", "911100006000373410L"]
)
def test_malformed_values_fail(value: str) -> None:
    with pytest.raises(InvalidInput):
        canonical_uscc(value)
