"""The real-name input checks: resident ID numbers (GB 11643: ISO 7064 MOD 11-2 check digit, birth date,
GB/T 2260 region code), Chinese names with the middle dot, and the face image upload."""

from __future__ import annotations

import base64
import secrets
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum.cn import ric

from auth.realname import MIDDLE_DOT, check_id_number, check_name, decode_image
from core.errors import InvalidInput

# Codes still in use (no end year); several only exist since 1983-1990, after many holders were born.
REGIONS = ["110101", "110105", "310101", "210102", "150102", "650102", "440305", "510104", "330106"]
TODAY = date(2026, 6, 1)


def make_id_number(region: str, born: date, sequence: int) -> str:
    """A valid 18-character ID number (the check digit computed as GB 11643 says)."""
    body = f"{region}{born:%Y%m%d}{sequence:03d}"
    return body + ric.calc_check_digit(body + "0")


def random_id_number() -> str:
    born = date(1950 + secrets.randbelow(55), 1 + secrets.randbelow(12), 1 + secrets.randbelow(28))
    return make_id_number(secrets.choice(REGIONS), born, secrets.randbelow(1000))


SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红梅鹏飞宇浩然子轩欣怡思雨佳琪"


def random_name() -> str:
    return secrets.choice(SURNAMES) + "".join(secrets.choice(GIVEN) for _ in range(1 + secrets.randbelow(2)))


def _refusal(raw: str, **kwargs: date) -> InvalidInput:
    with pytest.raises(InvalidInput) as refused:
        check_id_number(raw, **kwargs)
    return refused.value


id_numbers = st.builds(
    make_id_number,
    st.sampled_from(REGIONS),
    st.dates(min_value=date(1900, 1, 1), max_value=TODAY),
    st.integers(min_value=0, max_value=999),
)


@given(id_numbers)
def test_every_valid_generated_id_number_passes(number: str) -> None:
    assert check_id_number(number, today=TODAY) == number
    assert ric.get_birth_date(number) <= TODAY


@given(id_numbers, st.data())
def test_any_single_character_change_fails_the_check_digit(number: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=0, max_value=17), label="position")
    alphabet = "0123456789X" if position == 17 else "0123456789"
    replacement = data.draw(st.sampled_from([c for c in alphabet if c != number[position]]), label="to")
    changed = number[:position] + replacement + number[position + 1 :]
    refused = _refusal(changed, today=TODAY)
    assert refused.code == "invalid_id_number" and refused.field == "id_number"
    assert "check digit" in refused.detail


@given(id_numbers)
def test_lower_case_x_full_width_digits_and_spaces_are_normalised(number: str) -> None:
    full_width = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in number)
    spaced = f" {number[:6]} {number[6:14]} {number[14:].lower()} "
    assert check_id_number(full_width, today=TODAY) == number
    assert check_id_number(spaced, today=TODAY) == number


@given(st.text(max_size=40))
def test_anything_accepted_is_a_valid_id_number(raw: str) -> None:
    try:
        number = check_id_number(raw, today=TODAY)
    except InvalidInput as refused:
        assert refused.code == "invalid_id_number"
        assert len(raw.strip()) < 6 or raw.strip() not in refused.detail  # never echoed
    else:
        assert len(number) == 18 and ric.calc_check_digit(number) == number[17]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (make_id_number("110101", date(1990, 1, 1), 123)[:-1] + "0", "check digit"),
        ("11010119900101123", "18 characters"),
        ("1101011990010112345", "18 characters"),
        ("11010119900101A234", "18 characters"),
        ("", "18 characters"),
        ("١١٠١٠١١٩٩٠٠١٠١١٢٣٤", "18 characters"),  # Arabic-Indic digits are digits, not ID digits
        (make_id_number("110101", date(1990, 1, 1), 1)[:17] + "Y", "18 characters"),
    ],
)
def test_bad_format_or_check_digit_is_refused(raw: str, reason: str) -> None:
    refused = _refusal(raw, today=TODAY)
    assert refused.code == "invalid_id_number" and refused.field == "id_number"
    assert reason in refused.detail


@pytest.mark.parametrize(
    "birth", ["19900230", "19901301", "19900100", "20230229", "18991231", "20270101"], ids=str
)
def test_impossible_birth_date_is_refused(birth: str) -> None:
    body = f"110101{birth}123"
    refused = _refusal(body + ric.calc_check_digit(body + "0"), today=TODAY)
    assert refused.code == "invalid_id_number" and "birth date" in refused.detail


def test_leap_day_and_today_are_possible() -> None:
    assert check_id_number(make_id_number("110101", date(2000, 2, 29), 7), today=TODAY)
    assert check_id_number(make_id_number("110101", TODAY, 7), today=TODAY)


@pytest.mark.parametrize("region", ["999999", "000000", "110199", "190000"])
def test_unknown_region_code_is_refused(region: str) -> None:
    refused = _refusal(make_id_number(region, date(1990, 1, 1), 123), today=TODAY)
    assert refused.code == "invalid_id_number" and "region code" in refused.detail


def test_region_code_retired_before_birth_is_refused_but_not_one_created_after() -> None:
    # 110103 崇文区 was merged away in 2010; 210102 和平区 has its code since 1983.
    assert check_id_number(make_id_number("110103", date(1980, 5, 1), 1), today=TODAY)
    assert "region code" in _refusal(make_id_number("110103", date(2015, 5, 1), 1), today=TODAY).detail
    born_1960 = make_id_number("210102", date(1960, 5, 1), 1)
    assert check_id_number(born_1960, today=TODAY) == born_1960
    assert not ric.is_valid(born_1960)  # why we do not use stdnum's own region-year rule


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("张三", "张三"),
        ("欧阳娜娜", "欧阳娜娜"),
        ("  王小明 ", "王小明"),
        ("阿卜杜拉·艾则孜", "阿卜杜拉·艾则孜"),
        ("爱新觉罗·溥仪", "爱新觉罗·溥仪"),
        ("阿依古丽•买买提", "阿依古丽·买买提"),  # U+2022 bullet
        ("阿依古丽・买买提", "阿依古丽·买买提"),  # U+30FB katakana middle dot
        ("阿依古丽･买买提", "阿依古丽·买买提"),  # U+FF65 half-width
        ("阿依古丽‧买买提", "阿依古丽·买买提"),  # U+2027 hyphenation point
        ("𠀀𪚥", "𠀀𪚥"),  # Extension B ideographs are real names' characters too
        ("李〇", "李〇"),
        ("王" * 30, "王" * 30),
    ],
)
def test_good_names_are_normalised(raw: str, expected: str) -> None:
    assert check_name(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "张",
        "王" * 31,
        "Zhang San",
        "张三1",
        "张 三",
        "·张三",
        "张三·",
        "张··三",
        "张.三",
        "张三😀",
        "张\u200b三",
        "王" * 500,
    ],
)
def test_bad_names_are_refused_by_field(raw: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_name(raw)
    assert refused.value.code == "invalid_name" and refused.value.field == "name"


@given(st.text(max_size=40))
def test_an_accepted_name_is_han_characters_and_single_middle_dots(raw: str) -> None:
    try:
        name = check_name(raw)
    except InvalidInput as refused:
        assert refused.code == "invalid_name"
        return
    assert 2 <= len(name) <= 30
    assert check_name(name) == name  # normal form: checking again changes nothing
    parts = name.split(MIDDLE_DOT)
    assert all(parts) and all(not c.isascii() and not c.isspace() for part in parts for c in part)


MAX = 1000


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (base64.b64encode(b"\xff\xd8jpeg").decode(), b"\xff\xd8jpeg"),
        ("data:image/jpeg;base64," + base64.b64encode(b"face").decode(), b"face"),
        (base64.encodebytes(b"x" * 200).decode(), b"x" * 200),  # MIME line breaks, as Android sends
        (base64.b64encode(b"y" * MAX).decode(), b"y" * MAX),
    ],
)
def test_images_are_decoded(encoded: str, expected: bytes) -> None:
    assert decode_image(encoded, MAX) == expected


@pytest.mark.parametrize(
    ("encoded", "code"),
    [
        (base64.b64encode(b"y" * (MAX + 1)).decode(), "image_too_large"),
        ("A" * 10_000_000, "image_too_large"),
        ("not base64!", "invalid_image"),
        ("", "invalid_image"),
        ("abc", "invalid_image"),
    ],
)
def test_bad_images_are_refused(encoded: str, code: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        decode_image(encoded, MAX)
    assert refused.value.code == code and refused.value.field == "image"
