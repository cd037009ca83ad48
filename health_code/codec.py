"""The health pass wire format, layer by layer: Base45 (RFC 9285), zlib with a bounded inflate, strict CBOR,
COSE_Sign1 (RFC 9052) with ES256, and the CWT claim keys (RFC 8392). docs/pass-format.md describes it byte
by byte. Every decoder raises a `CodecError` subclass (a ValueError) and nothing else for bad input.

    payload = PREFIX + Base45( zlib( COSE_Sign1( CBOR(CWT claims) ) ) )
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

TONGBAN_PREFIX: Final = "TB1:"  # our passes, format version 1
EU_PREFIX: Final = "HC1:"  # EU Digital COVID Certificate (HCERT)

# The longest text an alphanumeric QR code holds (version 40, level L): nothing longer can be a scan.
MAX_PAYLOAD_CHARS: Final = 4296
# A pass inflates to a few hundred bytes; far above that is a zip bomb.
MAX_COSE_BYTES: Final = 16 * 1024
MAX_CBOR_DEPTH: Final = 16

# CWT claim keys (RFC 8392 section 4) and the private claims.
CLAIM_ISS: Final = 1
CLAIM_SUB: Final = 2
CLAIM_EXP: Final = 4
CLAIM_IAT: Final = 6
CLAIM_CTI: Final = 7
CLAIM_HCERT: Final = -260  # EU: {1: DGC map}
HCERT_DGC_V1: Final = 1
# Ours, in the RFC 8392 private-use range (below -65536): {1 type, 2 colour, 3 since, 4 name, 5 number}.
CLAIM_TONGBAN: Final = -70000
TB_TYPE: Final = 1
TB_COLOUR: Final = 2
TB_SINCE: Final = 3
TB_NAME: Final = 4
TB_NUMBER: Final = 5

COSE_SIGN1_TAG: Final = 18
HEADER_ALG: Final = 1
HEADER_CRIT: Final = 2
HEADER_KID: Final = 4
ALG_ES256: Final = -7
ES256_SIGNATURE_BYTES: Final = 64
_COORD: Final = 32


class CodecError(ValueError):
    """Bad input at one layer of the pass format."""


class Base45Error(CodecError):
    pass


class CompressionError(CodecError):
    pass


class TooLarge(CodecError):
    pass


class CborError(CodecError):
    pass


class CoseError(CodecError):
    pass


# ---------------------------------------------------------------------------------------------------------
# Base45 (RFC 9285)

BASE45_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_INVALID: Final = 0xFF
# byte -> its Base45 digit value, 0xFF for bytes outside the alphabet.
_DIGITS: Final = bytes(
    BASE45_ALPHABET.index(chr(b)) if chr(b) in BASE45_ALPHABET else _INVALID for b in range(256)
)


def b45encode(data: bytes) -> str:
    """RFC 9285: each 2 bytes -> 3 characters (c, d, e with n = c + 45d + 2025e), a last odd byte -> 2."""
    chars: list[str] = []
    alphabet = BASE45_ALPHABET
    for i in range(0, len(data) - 1, 2):
        e, rest = divmod(data[i] * 256 + data[i + 1], 2025)
        d, c = divmod(rest, 45)
        chars += (alphabet[c], alphabet[d], alphabet[e])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        chars += (alphabet[c], alphabet[d])
    return "".join(chars)


# The lane masks by triple count (passes come in a few lengths): each lane's low byte (0x0000FF repeated),
# and its bit 16 (0x010000 repeated).
_lane_masks: dict[int, tuple[int, int]] = {}
_MASK_CACHE_SIZE: Final = 256


def b45decode(text: str) -> bytes:
    """RFC 9285 decoding. Rejects characters outside the alphabet, a length of 3k+1, a triple above 65535
    and a final pair above 255 (section 4.2: such input MUST be rejected)."""
    try:
        digits = text.encode("ascii").translate(_DIGITS)
    except (UnicodeEncodeError, AttributeError):
        raise Base45Error("Base45: characters outside the alphabet") from None
    full, rest = divmod(len(digits), 3)
    if rest == 1:
        raise Base45Error("Base45: a length of 3k+1 characters is not valid")
    if _INVALID in digits:
        raise Base45Error("Base45: characters outside the alphabet")
    out = bytearray(2 * full)
    if full:
        # All triples at once with big-integer arithmetic (C loops, not a Python loop per triple): read as
        # one integer, each triple (c, d, e) is a 24-bit lane c<<16 | d<<8 | e. Masks pull c, d and e into
        # lanes of their own; c + 45d + 2025e <= 91124 < 2**17, so no lane carries into the next, and a
        # triple above 65535 is one whose lane has bit 16 set.
        lanes = int.from_bytes(digits[: 3 * full], "big")
        masks = _lane_masks.get(full)
        if masks is None:
            masks = (
                int.from_bytes(b"\x00\x00\xff" * full, "big"),
                int.from_bytes(b"\x01\x00\x00" * full, "big"),
            )
            if len(_lane_masks) < _MASK_CACHE_SIZE:
                _lane_masks[full] = masks
        low_bytes, bit16 = masks
        value = ((lanes >> 16) & low_bytes) + 45 * ((lanes >> 8) & low_bytes) + 2025 * (lanes & low_bytes)
        if value & bit16:
            raise Base45Error("Base45: a triple decodes above 65535")
        packed = value.to_bytes(3 * full, "big")
        out[0::2] = packed[1::3]
        out[1::2] = packed[2::3]
    if rest == 2:
        value = digits[-2] + 45 * digits[-1]
        if value > 255:
            raise Base45Error("Base45: the final pair decodes above 255")
        out.append(value)
    return bytes(out)


# ---------------------------------------------------------------------------------------------------------
# zlib


def deflate(data: bytes) -> bytes:
    return zlib.compress(data, 9)


def inflate(data: bytes, limit: int = MAX_COSE_BYTES) -> bytes:
    """zlib (RFC 1950) decompression that stops at `limit` output bytes: more raises TooLarge (zip bombs
    cost at most `limit` bytes of memory). A truncated stream or bytes after its end raise CompressionError."""
    inflater = zlib.decompressobj()
    try:
        # One byte of room over the limit: a stream of exactly `limit` bytes then reaches its end.
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise CompressionError(f"zlib: {exc}") from None
    if len(out) > limit:
        raise TooLarge(f"zlib: inflates to more than {limit} bytes")
    if not inflater.eof:  # below max_length zlib has used all the input: the stream just stops
        raise CompressionError("zlib: truncated stream")
    if inflater.unused_data:
        raise CompressionError("zlib: bytes after the end of the stream")
    return out


# ---------------------------------------------------------------------------------------------------------
# CBOR


def cbor_loads(data: bytes) -> Any:
    """One CBOR item (RFC 8949), strictly: no bytes after it, no duplicate map keys, nesting at most
    MAX_CBOR_DEPTH."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream, max_depth=MAX_CBOR_DEPTH, allow_duplicate_keys=False).decode()
    except Exception as exc:  # cbor2 raises CBORDecodeError, ValueError, OverflowError, ... on bad input
        raise CborError(f"CBOR: {type(exc).__name__}") from None
    if stream.tell() != len(data):
        raise CborError("CBOR: bytes after the item")
    return value


def cbor_dumps(value: Any) -> bytes:
    return cbor2.dumps(value)


# ---------------------------------------------------------------------------------------------------------
# COSE_Sign1 with ES256


def _bstr_head(length: int) -> bytes:
    if length < 24:
        return bytes((0x40 | length,))
    if length < 0x100:
        return b"\x58" + length.to_bytes(1, "big")
    if length < 0x10000:
        return b"\x59" + length.to_bytes(2, "big")
    return b"\x5a" + length.to_bytes(4, "big")


_SIG_STRUCTURE_HEAD: Final = b"\x84\x6aSignature1"  # array(4), text(10) "Signature1"


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """RFC 9052 section 4.4: CBOR ["Signature1", protected, external_aad = b"", payload], the bytes signed.
    Encoded by hand (what cbor2.dumps gives for this array, without building it on the hot path)."""
    return (
        _SIG_STRUCTURE_HEAD
        + _bstr_head(len(protected))
        + protected
        + b"\x40"
        + _bstr_head(len(payload))
        + payload
    )


def es256_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as COSE wants it: r || s, 32 bytes each."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")


_ECDSA_SHA256: Final = ec.ECDSA(hashes.SHA256())


def _der_integer_signature(signature: bytes) -> bytes:
    """r || s -> DER for any r and s: each half loses its leading zero bytes and gains one where its first
    bit is set (DER integers are signed); 0 is one zero byte."""
    r = signature[:_COORD].lstrip(b"\x00")
    s = signature[_COORD:].lstrip(b"\x00")
    if not r or r[0] & 0x80:
        r = b"\x00" + r
    if not s or s[0] & 0x80:
        s = b"\x00" + s
    return b"\x30" + bytes((len(r) + len(s) + 4, 0x02, len(r))) + r + bytes((0x02, len(s))) + s


# DER SEQUENCE {INTEGER r, INTEGER s} around two halves without leading zero bytes, by whether r's and s's
# first bit is set (then the INTEGER takes a leading zero byte): the head up to r's bytes, and s's head.
_DER_HEADS: Final = tuple(
    bytes((0x30, 0x44 + high_r + high_s, 0x02, 0x20 + high_r)) + b"\x00" * high_r
    for high_r in (0, 1)
    for high_s in (0, 1)
)
_DER_S_HEADS: Final = (b"\x02\x20", b"\x02\x21\x00")


def _der_signature(signature: bytes) -> bytes:
    """r || s (32 bytes each) -> DER SEQUENCE {INTEGER r, INTEGER s}, the bytes encode_dss_signature gives,
    without the round trip through Python ints. Nearly every signature has no leading zero byte in either
    half: its DER is then one of four heads and the halves as they are."""
    first_r, first_s = signature[0], signature[_COORD]
    if first_r and first_s:
        high_s = first_s >> 7
        return b"".join(
            (
                _DER_HEADS[(first_r >> 7) * 2 + high_s],
                signature[:_COORD],
                _DER_S_HEADS[high_s],
                signature[_COORD:],
            )
        )
    return _der_integer_signature(signature)


def es256_verify(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    if len(signature) != ES256_SIGNATURE_BYTES:
        return False
    try:
        public_key.verify(_der_signature(signature), data, _ECDSA_SHA256)
    except (InvalidSignature, ValueError):
        return False
    return True


class CoseSign1(NamedTuple):  # a tuple: made once per verify, on the hot path
    protected: bytes  # the serialized protected header, exactly as signed
    alg: int
    kid: bytes
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        return sig_structure(self.protected, self.payload)


def protected_header(kid: bytes) -> bytes:
    """{1: -7 (ES256), 4: kid} in that order."""
    return cbor2.dumps({HEADER_ALG: ALG_ES256, HEADER_KID: kid})


def cose_sign1_encode(
    payload: bytes, *, kid: bytes, sign: Callable[[bytes], bytes], tagged: bool = True
) -> bytes:
    """Tag 18 [protected {1: -7, 4: kid}, unprotected {}, payload, signature r||s]. `sign` takes the
    Sig_structure bytes and returns the 64-byte ES256 signature (es256_sign, or a key store signer)."""
    protected = protected_header(kid)
    signature = sign(sig_structure(protected, payload))
    if len(signature) != ES256_SIGNATURE_BYTES:
        raise CoseError("ES256 signatures are r || s, 64 bytes")
    body = [protected, {}, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, body) if tagged else body)


# Parsed protected headers by their bytes: one signer's passes all carry the same 13 bytes.
_protected_cache: dict[bytes, tuple[int, bytes | None]] = {}
_PROTECTED_CACHE_SIZE: Final = 1024
_PROTECTED_CACHE_MAX_BYTES: Final = 64


def _parse_protected(protected: bytes) -> tuple[int, bytes | None]:
    """(alg, kid or None). Raises CoseError."""
    cached = _protected_cache.get(protected)
    if cached is not None:
        return cached
    try:
        header = cbor_loads(protected) if protected else {}
    except CborError:
        raise CoseError("COSE: the protected header is not CBOR") from None
    if type(header) is not dict:
        raise CoseError("COSE: the protected header is not a map")
    if HEADER_CRIT in header:
        raise CoseError("COSE: critical header parameters are not supported")
    alg = header.get(HEADER_ALG)
    kid = header.get(HEADER_KID)
    if type(alg) is not int:
        raise CoseError("COSE: the protected header has no algorithm")
    if kid is not None and type(kid) is not bytes:
        raise CoseError("COSE: kid is not a byte string")
    parsed = (alg, kid)
    if len(protected) <= _PROTECTED_CACHE_MAX_BYTES:
        if len(_protected_cache) >= _PROTECTED_CACHE_SIZE:
            _protected_cache.clear()
        _protected_cache[protected] = parsed
    return parsed


def cose_sign1_from_cbor(item: Any, *, require_tag: bool = True) -> CoseSign1:
    """The COSE_Sign1 in a decoded CBOR item: tag 18 (or, with require_tag=False, the bare array), four
    members of the right types, ES256 in the protected header, a kid in the protected header (or, as some
    EU issuers do, in the unprotected one). Raises CoseError."""
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise CoseError(f"COSE: tag {item.tag} is not COSE_Sign1 (18)")
        item = item.value
    elif require_tag:
        raise CoseError("COSE: not tagged as COSE_Sign1 (18)")
    # Inside a tag cbor2 gives immutable containers: a tuple and a cbor2.frozendict.
    if type(item) not in (list, tuple) or len(item) != 4:
        raise CoseError("COSE: COSE_Sign1 is an array of four")
    protected, unprotected, payload, signature = item
    if type(protected) is not bytes or type(unprotected) not in (dict, cbor2.frozendict):
        raise CoseError("COSE: malformed headers")
    if type(payload) is not bytes or type(signature) is not bytes:
        raise CoseError("COSE: the payload and signature are byte strings (no detached payload)")
    alg, kid = _parse_protected(protected)
    if alg != ALG_ES256:
        raise CoseError(f"COSE: algorithm {alg} is not ES256 (-7)")
    if HEADER_ALG in unprotected or HEADER_CRIT in unprotected:
        raise CoseError("COSE: alg and crit belong in the protected header")
    if kid is None:
        kid = unprotected.get(HEADER_KID)
        if type(kid) is not bytes:
            raise CoseError("COSE: no kid")
    elif HEADER_KID in unprotected:
        raise CoseError("COSE: kid in both header buckets")
    return CoseSign1(protected, alg, kid, payload, signature)


def _read_bstr(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The definite-length byte string at `pos` and the offset after it; None if there is none there."""
    head = data[pos]
    if 0x40 <= head <= 0x57:
        length, start = head - 0x40, pos + 1
    elif head == 0x58:
        length, start = data[pos + 1], pos + 2
    elif head == 0x59:
        length, start = int.from_bytes(data[pos + 1 : pos + 3], "big"), pos + 3
    else:
        return None
    end = start + length
    if end > len(data):
        return None
    return data[start:end], end


def _split_cose(data: bytes, require_tag: bool) -> tuple[bytes, bytes, bytes] | None:
    """(protected, payload, signature) when `data` is exactly [tag 18] array(4) [bstr, {}, bstr, bstr], the
    shape every issuer writes, read without building CBOR objects; None for anything else."""
    try:
        if data[0] == 0xD2 and data[1] == 0x84:
            pos = 2
        elif data[0] == 0x84 and not require_tag:
            pos = 1
        else:
            return None
        protected = _read_bstr(data, pos)
        if protected is None or data[protected[1]] != 0xA0:
            return None
        payload = _read_bstr(data, protected[1] + 1)
        if payload is None:
            return None
        signature = _read_bstr(data, payload[1])
    except IndexError:
        return None
    if signature is None or signature[1] != len(data):
        return None
    return protected[0], payload[0], signature[0]


def cose_sign1_decode(data: bytes, *, require_tag: bool = True) -> CoseSign1:
    """A COSE_Sign1 from its bytes. Raises CborError when the bytes are not one well-formed CBOR item, and
    CoseError when the item is not a COSE_Sign1 we accept (see cose_sign1_from_cbor)."""
    parts = _split_cose(data, require_tag)
    if parts is None:  # an unusual encoding: the generic, strict path
        return cose_sign1_from_cbor(cbor_loads(data), require_tag=require_tag)
    protected, payload, signature = parts
    alg, kid = _parse_protected(protected)
    if alg != ALG_ES256:
        raise CoseError(f"COSE: algorithm {alg} is not ES256 (-7)")
    if kid is None:
        raise CoseError("COSE: no kid")
    return CoseSign1(protected, alg, kid, payload, signature)


# A COSE_Sign1 as a verifier needs it: (kid, Sig_structure, payload, signature). A plain tuple: made once per
# verify, on the hot path.
SignedCose = tuple[bytes, bytes, bytes, bytes]


def _common_layout(data: bytes, require_tag: bool) -> SignedCose | None:
    """The layout every issuer writes: [tag 18] array(4) [a short protected header bstr, an empty
    unprotected map, a payload bstr of 24 to 65535 bytes, a 64-byte signature bstr ending the data], heads in
    shortest form. Its Sig_structure is cut from the bytes as they are (the heads are the ones sig_structure
    writes) rather than encoded again. None for anything else (cose_sign1_signed takes the general path)."""
    try:
        if data[0] == 0xD2 and data[1] == 0x84:
            pos = 2
        elif data[0] == 0x84 and not require_tag:
            pos = 1
        else:
            return None
        head = data[pos]
        if not 0x41 <= head <= 0x57:
            return None
        protected_end = pos + head - 0x3F
        if data[protected_end] != 0xA0:
            return None
        length_head = data[protected_end + 1]
        if length_head == 0x58:  # 1-byte length: 24 to 255 bytes
            payload_start = protected_end + 3
            length = data[protected_end + 2]
            shortest = length >= 24
        elif length_head == 0x59:  # 2-byte length: 256 to 65535 bytes
            payload_start = protected_end + 4
            length = data[protected_end + 2] << 8 | data[protected_end + 3]
            shortest = length >= 0x100
        else:
            return None
        payload_end = payload_start + length
        if (
            not shortest
            or payload_end + 2 + ES256_SIGNATURE_BYTES != len(data)
            or data[payload_end] != 0x58
            or data[payload_end + 1] != ES256_SIGNATURE_BYTES
        ):
            return None
    except IndexError:
        return None
    protected = data[pos + 1 : protected_end]
    parsed = _protected_cache.get(protected)
    alg, kid = parsed if parsed is not None else _parse_protected(protected)
    if alg != ALG_ES256 or kid is None:
        return None  # the general path names the error
    return (
        kid,
        _SIG_STRUCTURE_HEAD + data[pos:protected_end] + b"\x40" + data[protected_end + 1 : payload_end],
        data[payload_start:payload_end],
        data[payload_end + 2 :],
    )


def cose_sign1_signed(data: bytes, *, require_tag: bool = True) -> SignedCose:
    """cose_sign1_decode for a verifier: the same checks and errors, giving (kid, Sig_structure, payload,
    signature). Passes in the common layout take a shorter path to the same result."""
    common = _common_layout(data, require_tag)
    if common is not None:
        return common
    cose = cose_sign1_decode(data, require_tag=require_tag)
    return cose.kid, cose.to_be_signed(), cose.payload, cose.signature


def claims_loads(payload: bytes) -> Any:
    """The CWT claims in a COSE payload: one CBOR item, no duplicate map keys, nesting at most
    MAX_CBOR_DEPTH. Bytes after the item are ignored: the payload is signed, so only the signer could have
    put them there (and skipping the second pass that would find them keeps verify() fast)."""
    try:
        return cbor2.loads(payload, max_depth=MAX_CBOR_DEPTH, allow_duplicate_keys=False)
    except Exception as exc:  # as in cbor_loads
        raise CborError(f"CBOR: {type(exc).__name__}") from None


# ---------------------------------------------------------------------------------------------------------
# The whole text


def pack(cose: bytes, prefix: str = TONGBAN_PREFIX) -> str:
    """COSE bytes -> the QR text: prefix + Base45(zlib(cose))."""
    return prefix + b45encode(deflate(cose))


def unpack(text: str, limit: int = MAX_COSE_BYTES) -> tuple[str, bytes]:
    """The QR text -> (prefix, COSE bytes). Raises CodecError (TooLarge for text or inflated bytes over
    the limits)."""
    if len(text) > MAX_PAYLOAD_CHARS:
        raise TooLarge(f"payload: more than {MAX_PAYLOAD_CHARS} characters")
    prefix = text[:4]
    if prefix not in (TONGBAN_PREFIX, EU_PREFIX):
        raise CodecError("payload: unknown prefix")
    return prefix, inflate(b45decode(text[4:]), limit)
