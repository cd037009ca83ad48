"""The SMS gateway's parsers: phone numbers and template rendering (property-based)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.frame import ProviderError
from sandbox.sms import MAX_TEXT, TEMPLATES, normalize_phone, render, template_fields

MOBILE = re.compile(r"1[3-9][0-9]{9}")
mobiles = st.from_regex(MOBILE, fullmatch=True)


@given(mobiles, st.sampled_from(["", "86", "+86"]), st.sampled_from(["", " ", "\t"]))
def test_every_mainland_mobile_is_accepted_in_any_spelling(phone: str, prefix: str, pad: str) -> None:
    assert normalize_phone(pad + prefix + phone + pad) == phone


@given(st.text(max_size=20))
def test_anything_accepted_is_an_eleven_digit_mobile_it_contained(raw: str) -> None:
    phone = normalize_phone(raw)
    if phone is not None:
        assert MOBILE.fullmatch(phone)
        assert raw.strip().endswith(phone)


@pytest.mark.parametrize(
    "raw", ["", "12345678901", "23800138000", "1380013800", "138001380000", "+85213800138000", "١٣٨٠٠١٣٨٠٠٠"]
)
def test_not_mobiles_are_refused(raw: str) -> None:
    assert normalize_phone(raw) is None


@given(st.sampled_from(sorted(TEMPLATES)), st.text(min_size=1, max_size=30), st.data())
def test_rendering_fills_every_field_under_the_sign(template: str, sign: str, data: st.DataObject) -> None:
    fields = template_fields(TEMPLATES[template])
    params = {field: data.draw(st.text(max_size=40), label=field) for field in fields}
    text = render(sign, template, params)
    assert text.startswith(f"【{sign}】")
    for value in params.values():
        assert value in text
    assert len(text) <= MAX_TEXT


@given(st.sampled_from(sorted(t for t in TEMPLATES if template_fields(TEMPLATES[t]))), st.data())
def test_a_missing_param_is_named_and_never_rendered(template: str, data: st.DataObject) -> None:
    fields = sorted(template_fields(TEMPLATES[template]))
    left_out = data.draw(st.sampled_from(fields))
    params = {field: "v" for field in fields if field != left_out}
    with pytest.raises(ProviderError) as refused:
        render("通办", template, params)
    assert refused.value.status == 400 and left_out in refused.value.message


def test_unknown_template_and_overlong_text_are_refused() -> None:
    with pytest.raises(ProviderError) as unknown:
        render("通办", "no_such", {})
    assert unknown.value.code == "isv.SMS_TEMPLATE_ILLEGAL"
    with pytest.raises(ProviderError) as long_text:
        render("通办", "notice", {"text": "字" * MAX_TEXT})
    assert long_text.value.code == "isv.PARAM_LENGTH_LIMIT"
