"""EMVCo consumer-presented mode (CPM) QR for standard POS, over a strict BER-TLV codec.

BER-TLV as EMV uses it (EMV Book 3, Annex B): a tag of one or more bytes (first byte's low five bits all set
-> more bytes follow while bit 8 is set; bit 6 set -> constructed, its value is more TLVs), a definite length
(one byte below 0x80, else 0x81-0x83 and that many length bytes), the value. The decoder takes only minimal
lengths, so any bytes it accepts re-encode to exactly themselves.

A CPM payload (EMV QRCPS, Consumer-Presented Mode) is Base64 of: 85 'CPV01' (payload format indicator), then
one or more 61 application templates (4F AID, 50 label, 57 track 2 equivalent data and/or 5A application
PAN, optional 63 application specific transparent template with 9F26 cryptogram, 9F36 counter, ...), then
optional 62 common data templates (with 64 transparent templates). The text always starts with "hQVDUFYw".

Ours (docs/onecode-format.md): the payment link's token number in 5A, the counter in 9F36, the first 8 bytes
of the device signature as the 9F26 cryptogram, and the whole signed one-code in the private tag DF6F of the
transparent template, so a POS resolve verifies exactly what a TBO1: scan verifies and gets the same token.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, NamedTuple

from onecode import codec

CPM_TEXT_PREFIX: Final = "hQVDUFYw"  # Base64 of 85 05 'CPV0'
PAYLOAD_FORMAT_INDICATOR: Final = b"CPV01"
MAX_CPM_CHARS: Final = 4096  # far above what a QR code holds in byte mode at level M
MAX_DEPTH: Final = 8
MAX_TAG_BYTES: Final = 4

TAG_PAYLOAD_FORMAT: Final = 0x85
TAG_APPLICATION_TEMPLATE: Final = 0x61
TAG_COMMON_DATA_TEMPLATE: Final = 0x62
TAG_APPLICATION_TRANSPARENT: Final = 0x63  # application specific transparent template
TAG_COMMON_TRANSPARENT: Final = 0x64
TAG_AID: Final = 0x4F  # ADF name
TAG_LABEL: Final = 0x50
TAG_TRACK2: Final = 0x57
TAG_PAN: Final = 0x5A
TAG_CARDHOLDER_NAME: Final = 0x5F20
TAG_LANGUAGE: Final = 0x5F2D
TAG_PAN_SEQUENCE: Final = 0x5F34
TAG_ISSUER_APPLICATION_DATA: Final = 0x9F10
TAG_CRYPTOGRAM: Final = 0x9F26
TAG_CRYPTOGRAM_INFO: Final = 0x9F27
TAG_ATC: Final = 0x9F36
TAG_UNPREDICTABLE_NUMBER: Final = 0x9F37
TAG_ONECODE: Final = 0xDF6F  # private class, primitive: our signed one-code (271 bytes)

# Ours: an unregistered proprietary AID (ISO/IEC 7816-5: a first nibble F needs no registration).
TONGBAN_AID: Final = bytes.fromhex("F0") + b"TONGBAN"
TONGBAN_LABEL: Final = "Tongban Pay"
TOKEN_NUMBER_PREFIX: Final = "990"  # noqa: S105 (ISO/IEC 7812 industry 9: no card scheme's range)
TOKEN_NUMBER_DIGITS: Final = 19


class TlvError(ValueError):
    """Bytes that are not strict BER-TLV."""


class CpmError(ValueError):
    """Text that is not an EMVCo consumer-presented-mode payload we can read."""


class Tlv(NamedTuple):
    tag: int  # its bytes read as a big-endian number: 0x9F26
    value: bytes | tuple[Tlv, ...]  # bytes when primitive, the children when constructed

    @property
    def constructed(self) -> bool:
        return isinstance(self.value, tuple)

    def children(self) -> tuple[Tlv, ...]:
        return self.value if isinstance(self.value, tuple) else ()

    def primitive(self) -> bytes:
        return self.value if isinstance(self.value, bytes) else b""


# ---------------------------------------------------------------------------------------------------------
# BER-TLV


def tag_is_constructed(tag: int) -> bool:
    first = tag
    while first > 0xFF:
        first >>= 8
    return bool(first & 0x20)


def _read_tag(data: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise TlvError("BER-TLV: a tag is cut off")
    first = data[pos]
    tag, pos = first, pos + 1
    if first & 0x1F == 0x1F:
        count = 1
        while True:
            if pos >= end:
                raise TlvError("BER-TLV: a tag is cut off")
            byte = data[pos]
            tag, pos, count = (tag << 8) | byte, pos + 1, count + 1
            if count > MAX_TAG_BYTES:
                raise TlvError(f"BER-TLV: tags of more than {MAX_TAG_BYTES} bytes")
            if not byte & 0x80:
                break
    return tag, pos


def _read_length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise TlvError("BER-TLV: a length is cut off")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0:
        raise TlvError("BER-TLV: indefinite lengths are not allowed in EMV")
    if count > 3:
        raise TlvError("BER-TLV: lengths above 3 bytes")
    if pos + count > end:
        raise TlvError("BER-TLV: a length is cut off")
    length = int.from_bytes(data[pos : pos + count], "big")
    if length < 0x80 or length < 1 << (8 * (count - 1)):
        raise TlvError("BER-TLV: a length not in its shortest form")
    return length, pos + count


def _decode(data: bytes, pos: int, end: int, depth: int) -> tuple[Tlv, ...]:
    if depth > MAX_DEPTH and pos < end:
        raise TlvError(f"BER-TLV: nested deeper than {MAX_DEPTH}")
    items: list[Tlv] = []
    while pos < end:
        tag, pos = _read_tag(data, pos, end)
        length, pos = _read_length(data, pos, end)
        value_end = pos + length
        if value_end > end:
            raise TlvError(f"BER-TLV: the value of tag {tag:X} runs past its container")
        if tag_is_constructed(tag):
            items.append(Tlv(tag, _decode(data, pos, value_end, depth + 1)))
        else:
            items.append(Tlv(tag, data[pos:value_end]))
        pos = value_end
    return tuple(items)


def tlv_decode(data: bytes) -> tuple[Tlv, ...]:
    """The TLVs in `data`, constructed ones as trees. Raises TlvError (and nothing else) for anything that
    is not strict BER-TLV; what it accepts, tlv_encode gives back byte for byte."""
    if not isinstance(data, bytes):
        raise TlvError("BER-TLV: bytes expected")
    return _decode(data, 0, len(data), 1)


def _tag_bytes(tag: int) -> bytes:
    if tag < 0:
        raise TlvError("BER-TLV: negative tag")
    return tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")


def _length_bytes(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    for count in (1, 2, 3):
        if length < 1 << (8 * count):
            return bytes((0x80 | count,)) + length.to_bytes(count, "big")
    raise TlvError("BER-TLV: values of 16 MiB or more")


def tlv_encode(items: Iterable[Tlv]) -> bytes:
    out = bytearray()
    for item in items:
        value = tlv_encode(item.value) if isinstance(item.value, tuple) else item.value
        if isinstance(item.value, tuple) != tag_is_constructed(item.tag):
            raise TlvError(
                f"BER-TLV: tag {item.tag:X}: children for a primitive tag or bytes for a constructed one"
            )
        out += _tag_bytes(item.tag) + _length_bytes(len(value)) + value
    return bytes(out)


def find(items: Sequence[Tlv], tag: int) -> Tlv | None:
    """The first TLV with `tag` among `items` (not their children)."""
    for item in items:
        if item.tag == tag:
            return item
    return None


def walk(items: Sequence[Tlv]) -> Iterator[Tlv]:
    """Every TLV of the tree, depth first."""
    for item in items:
        yield item
        yield from walk(item.children())


# ---------------------------------------------------------------------------------------------------------
# Numbers: PAN (cn, BCD right-padded with F) and track 2 equivalent data (PAN 'D' YYMM service code ...)


MAX_PAN_BYTES: Final = 10  # n..19, BCD


def bcd_digits(value: bytes) -> str | None:
    """The digits of a PAN (cn: BCD, padded with F at the end, at most 19 digits); None when it is not one."""
    if len(value) > MAX_PAN_BYTES:
        return None
    text = value.hex().upper().rstrip("F")
    return text if text.isdigit() else None


def digits_bcd(digits: str) -> bytes:
    if not digits.isdigit() or not digits.isascii():
        raise ValueError("digits only")
    return bytes.fromhex(digits + "F" * (len(digits) % 2))


def track2_pan(value: bytes) -> str | None:
    """The PAN in track 2 equivalent data: the digits before the 'D' separator."""
    text = value.hex().upper()
    pan, separator, _ = text.partition("D")
    return pan if separator and pan.isdigit() else None


def luhn_digit(digits: str) -> str:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char)
        if index % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str(-total % 10)


def token_number(payment_handle: bytes) -> str:
    """The 19-digit, Luhn-checked number standing for a payment handle in 5A (never a card number): our
    prefix, 15 digits from the handle, the check digit."""
    if len(payment_handle) != codec.HANDLE_BYTES:
        raise ValueError(f"payment handle: {codec.HANDLE_BYTES} bytes")
    body = TOKEN_NUMBER_PREFIX + f"{int.from_bytes(payment_handle, 'big') % 10**15:015d}"
    return body + luhn_digit(body)


# ---------------------------------------------------------------------------------------------------------
# CPM


class CpmApplication(NamedTuple):
    """One application template (61) or common data template (62), its well-known elements read out."""

    tag: int
    aid: bytes | None  # 4F
    label: str | None  # 50
    track2: bytes | None  # 57
    pan: str | None  # 5A, when it is BCD digits
    cryptogram: bytes | None  # 9F26 from the transparent template (63 / 64)
    atc: int | None  # 9F36
    onecode: bytes | None  # DF6F: our signed one-code
    tlv: Tlv

    @property
    def token(self) -> str | None:
        """The account token: 5A, else the PAN of the track 2 equivalent data."""
        if self.pan is not None:
            return self.pan
        return track2_pan(self.track2) if self.track2 is not None else None


class CpmPayload(NamedTuple):
    applications: tuple[CpmApplication, ...]  # the 61 templates, in order
    common: tuple[CpmApplication, ...]  # the 62 templates
    tlvs: tuple[Tlv, ...]  # the whole tree, for re-encoding byte for byte
    raw: bytes

    @property
    def token(self) -> str | None:
        """The first token of the applications, else of the common data."""
        for application in self.applications + self.common:
            if application.token is not None:
                return application.token
        return None

    def onecode_text(self) -> str | None:
        """Our one-code (TBO1: text) when the payload carries one, to verify like any scan."""
        for application in self.applications + self.common:
            if application.onecode is not None:
                return codec.pack(application.onecode)
        return None


def _application(template: Tlv) -> CpmApplication:
    children = template.children()
    values: dict[int, bytes] = {}
    for item in children:
        if not item.constructed:
            values.setdefault(item.tag, item.primitive())
    transparent: dict[int, bytes] = {}
    for item in children:
        if item.tag in (TAG_APPLICATION_TRANSPARENT, TAG_COMMON_TRANSPARENT):
            for inner in item.children():
                if not inner.constructed:
                    transparent.setdefault(inner.tag, inner.primitive())
    label = values.get(TAG_LABEL)
    atc = transparent.get(TAG_ATC)
    return CpmApplication(
        tag=template.tag,
        aid=values.get(TAG_AID),
        label=label.decode("latin-1") if label is not None else None,
        track2=values.get(TAG_TRACK2),
        pan=bcd_digits(values[TAG_PAN]) if TAG_PAN in values else None,
        cryptogram=transparent.get(TAG_CRYPTOGRAM),
        atc=int.from_bytes(atc, "big") if atc else None,
        onecode=transparent.get(TAG_ONECODE),
        tlv=template,
    )


def decode_cpm_bytes(raw: bytes) -> CpmPayload:
    try:
        tlvs = tlv_decode(raw)
    except TlvError as exc:
        raise CpmError(f"CPM: {exc}") from None
    if not tlvs or tlvs[0] != Tlv(TAG_PAYLOAD_FORMAT, PAYLOAD_FORMAT_INDICATOR):
        raise CpmError("CPM: the payload does not start with the format indicator 85 'CPV01'")
    applications = tuple(_application(t) for t in tlvs if t.tag == TAG_APPLICATION_TEMPLATE)
    if not applications:
        raise CpmError("CPM: no application template (61)")
    if any(not a.aid for a in applications):
        raise CpmError("CPM: an application template without its AID (4F)")
    common = tuple(_application(t) for t in tlvs if t.tag == TAG_COMMON_DATA_TEMPLATE)
    return CpmPayload(applications=applications, common=common, tlvs=tlvs, raw=raw)


def decode_cpm(text: str) -> CpmPayload:
    """A scanned CPM text. Raises CpmError (and nothing else) for anything but canonical Base64 of a CPM
    payload; what it accepts, encode_cpm_payload gives back character for character."""
    if not isinstance(text, str) or not text.startswith(CPM_TEXT_PREFIX):
        raise CpmError("CPM: the text does not start with " + CPM_TEXT_PREFIX)
    if len(text) > MAX_CPM_CHARS:
        raise CpmError(f"CPM: more than {MAX_CPM_CHARS} characters")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise CpmError("CPM: not Base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise CpmError("CPM: not canonical Base64 (padding or trailing bits)")
    return decode_cpm_bytes(raw)


def encode_cpm_payload(payload: CpmPayload) -> str:
    """The text of a decoded payload (its tree re-encoded)."""
    return base64.b64encode(tlv_encode(payload.tlvs)).decode("ascii")


def encode_cpm(
    code_text: str,
    *,
    aid: bytes = TONGBAN_AID,
    label: str = TONGBAN_LABEL,
    extra: Sequence[Tlv] = (),
) -> str:
    """The CPM text that shows a one-code (a TBO1: text with the payment scene) to a standard POS: the
    payment handle's token number in 5A, and in the transparent template 63 the counter (9F36, its low 16
    bits), the first 8 bytes of the device signature as the cryptogram (9F26) and the whole code (DF6F).
    `extra` TLVs go into the application template after those. Raises CodeError for a code that does not
    parse, ValueError for one without the payment scene."""
    code = codec.parse(codec.unpack(code_text))
    auth = code.authorisation
    if not auth.scenes & codec.SCENE_PAYMENT:
        raise ValueError("the code does not have the payment scene")
    if not 5 <= len(aid) <= 16:
        raise ValueError("AID: 5 to 16 bytes")
    label_bytes = label.encode("ascii")
    if not 1 <= len(label_bytes) <= 16:
        raise ValueError("label: 1 to 16 characters")
    transparent = Tlv(
        TAG_APPLICATION_TRANSPARENT,
        (
            Tlv(TAG_CRYPTOGRAM, code.device_signature[:8]),
            Tlv(TAG_ATC, (code.counter & 0xFFFF).to_bytes(2, "big")),
            Tlv(TAG_ONECODE, code.raw),
        ),
    )
    application = Tlv(
        TAG_APPLICATION_TEMPLATE,
        (
            Tlv(TAG_AID, aid),
            Tlv(TAG_LABEL, label_bytes),
            Tlv(TAG_PAN, digits_bcd(token_number(auth.payment_handle))),
            transparent,
            *extra,
        ),
    )
    tree = (Tlv(TAG_PAYLOAD_FORMAT, PAYLOAD_FORMAT_INDICATOR), application)
    return base64.b64encode(tlv_encode(tree)).decode("ascii")


def onecode_from_cpm(text: str) -> tuple[str, str]:
    """(the TBO1: text inside, the token number in 5A) of one of our CPM payloads, after checking that the
    token number is the one the code's payment handle gives. Raises CpmError (a CodeError inside the
    payload is reported as CpmError too, so callers handle one type)."""
    payload = decode_cpm(text)
    code_text = payload.onecode_text()
    token = payload.token
    if code_text is None or token is None:
        raise CpmError("CPM: not a Tongban payload (no one-code or no token)")
    try:
        code = codec.parse(codec.unpack(code_text))
    except codec.CodeError as exc:
        raise CpmError(f"CPM: the one-code inside is not valid ({exc.reason})") from None
    if token != token_number(code.authorisation.payment_handle):
        raise CpmError("CPM: the token does not belong to the one-code inside")
    return code_text, token
