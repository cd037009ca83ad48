"""Mainland China mobile numbers (the only phones Tongban logs in)."""

from __future__ import annotations

import re

from core.errors import InvalidInput

_MOBILE = re.compile(r"^1[3-9]\d{9}$")


def normalize_mobile(raw: str, field: str = "phone") -> str:
    """'+86 138-1234-5678' -> '13812345678'; anything that is not a mainland mobile number -> 422."""
    digits = re.sub(r"[\s-]", "", raw)
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    if not _MOBILE.match(digits):
        raise InvalidInput(f"{field}: not a mainland China mobile number", field=field)
    return digits
