"""Normalisers (what the blind index hashes) and masked display forms of personal data.

A mask keeps the length of the normalised value and replaces every hidden character with "*", so a
display never reveals more than the fixed number of characters each helper keeps.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
_PHONE_NOISE = re.compile(r"[\s\-().]")


def normalize_text(value: str) -> str:
    """NFC and surrounding whitespace removed: the default for free text."""
    return unicodedata.normalize("NFC", value).strip()


def _nfkc(value: str) -> str:
    return unicodedata.normalize("NFKC", value)


# NFKC runs again after removing characters: a removed space can bring a letter and a combining mark
# together, and the result must be normal (idempotent) for equal inputs to give equal blind indexes.


def normalize_id_number(value: str) -> str:
    """ID numbers and credit codes: full-width folded (NFKC), all whitespace removed, upper-cased (x -> X)."""
    return _nfkc(_SPACES.sub("", _nfkc(value)).upper())


def normalize_name(value: str) -> str:
    """Names: NFKC (full-width letters folded), trimmed, inner whitespace runs collapsed to one space."""
    return _nfkc(_SPACES.sub(" ", _nfkc(value)).strip())


def normalize_phone(value: str) -> str:
    """Phone numbers: NFKC, spaces, dashes, dots and brackets removed, +86 / 0086 country prefixes dropped."""
    digits = _nfkc(_PHONE_NOISE.sub("", _nfkc(value)))
    stripped = True
    while stripped:
        stripped = False
        for prefix in ("+86", "0086"):
            if digits.startswith(prefix) and len(digits) > len(prefix):
                digits, stripped = digits[len(prefix) :], True
    return digits


def _keep_ends(value: str, head: int, tail: int) -> str:
    if len(value) <= head + tail:
        return "*" * len(value)
    return value[:head] + "*" * (len(value) - head - tail) + value[len(value) - tail :]


def mask_id_number(value: str) -> str:
    """ "210102199001011234" -> "2101**********1234": first 4 and last 4 kept (all hidden if 8 or fewer)."""
    return _keep_ends(normalize_id_number(value), 4, 4)


def mask_name(value: str) -> str:
    """ "张三" -> "张*", "欧阳娜娜" -> "欧***": the first character kept (a one-character name is all hidden)."""
    name = normalize_name(value)
    if len(name) <= 1:
        return "*" * len(name)
    return name[0] + "*" * (len(name) - 1)


def mask_phone(value: str) -> str:
    """ "13812345678" -> "138****5678": first 3 and last 4 kept (all hidden if 7 or fewer)."""
    return _keep_ends(normalize_phone(value), 3, 4)
