"""WeChat open data: WeChat's published worked examples byte for byte (encryptedData, rawData signature,
login-state signature), and round trips and refusals as properties."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miniapps import opendata
from miniapps.opendata import OpenDataError

# WeChat's worked example of encryptedData (开放数据校验与解密, WXBizDataCrypt demo).
EXAMPLE_APPID = "wx4f4bc4dec97d474b"
EXAMPLE_SESSION_KEY = "tiihtNczf5v6AKRyjwEUhQ=="
EXAMPLE_IV = "r7BXXKkLb8qrSNn05n0qiA=="
EXAMPLE_ENCRYPTED = (
    "CiyLU1Aw2KjvrjMdj8YKliAjtP4gsMZMQmRzooG2xrDcvSnxIMXFufNstNGTyaGS9uT5geRa0W4oTOb1WT7fJlAC+oNPdbB+"
    "3hVbJSRgv+4lGOETKUQz6OYStslQ142dNCuabNPGBzlooOmB231qMM85d2/fV6ChevvXvQP8Hkue1poOFtnEtpyxVLW1zAo6"
    "/1Xx1COxFvrc2d7UL/lmHInNlxuacJXwu0fjpXfz/YqYzBIBzD6WUfTIF9GRHpOn/Hz7saL8xz+W//FRAUid1OksQaQx4CMs"
    "8LOddcQhULW4ucetDf96JcR3g0gfRK4PC7E/r7Z6xNrXd2UIeorGj5Ef7b1pJAYB6Y5anaHqZ9J6nKEBvB4DnNLIVWSgARns"
    "/8wR2SiRS7MNACwTyrGvt9ts8p12PKFdlqYTopNHR1Vf7XjfhQlVsAJdNiKdYmYVoKlaRv85IfVunYzO0IKXsyl7JCUjCpoG"
    "20f0a04COwfneQAGGwd5oa+T8yO5hzuyDb/XcxxmK01EpqOyuxINew=="
)
EXAMPLE_PLAINTEXT = (
    b'{"openId":"oGZUI0egBJY1zhBYw2KhdUfwVJJE","nickName":"Band","gender":1,"language":"zh_CN",'
    b'"city":"Guangzhou","province":"Guangdong","country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/'
    b"vi_32/aSKcBBPpibyKNicHNTMM0qJVh8Kjgiak2AHWr8MHM4WgMEm7GFhsf8OYrySdbvAMvTsw3mo8ibKicsnfN5pRjl1p8HQ/0"
    b'","unionId":"ocMvos6NjeKLIBqg5Mr9QjxrP1FA","watermark":{"timestamp":1477314187,'
    b'"appid":"wx4f4bc4dec97d474b"}}'
)
# WeChat's worked example of the rawData signature: sha1(rawData + session_key).
SIGNATURE_SESSION_KEY = "HyVFkGl5F5OQWJZZaNzBBg=="
SIGNATURE_RAW_DATA = (
    '{"nickName":"Band","gender":1,"language":"zh_CN","city":"Guangzhou","province":"Guangdong",'
    '"country":"CN","avatarUrl":"http://wx.qlogo.cn/mmopen/vi_32/1vZvI39NWFQ9XM4LtQpFrQJ1xlgZxx3w7bQxKAR'
    'ol6503Iuswjjn6nIGBiaycAjAtpujxyzYsrztuuICqIM5ibXQ/0"}'
)
SIGNATURE = "75e81ceda165f4ffa64f4068af58c64b8f54b88c"
# WeChat's worked example of the login-state signature (用户登录态签名): hmac_sha256 keyed with the session_key.
STATE_SESSION_KEY = "o0q0otL8aEzpcZL/FT9WsQ=="
STATE_SIGNATURE = "654571f79995b2ce1e149e53c0a33dc39c0a74090db514261454e8dbe432aa0b"

session_keys = st.binary(min_size=16, max_size=16).map(lambda raw: base64.b64encode(raw).decode())


def test_wechats_worked_example_decrypts_byte_for_byte() -> None:
    assert opendata.decrypt(EXAMPLE_ENCRYPTED, EXAMPLE_IV, EXAMPLE_SESSION_KEY) == EXAMPLE_PLAINTEXT
    data = opendata.open_user_data(EXAMPLE_ENCRYPTED, EXAMPLE_IV, EXAMPLE_SESSION_KEY, appid=EXAMPLE_APPID)
    assert data["openId"] == "oGZUI0egBJY1zhBYw2KhdUfwVJJE"
    assert data["watermark"] == {"timestamp": 1477314187, "appid": EXAMPLE_APPID}


def test_encrypting_the_example_gives_wechats_bytes() -> None:
    iv = base64.b64decode(EXAMPLE_IV)
    assert opendata.encrypt(EXAMPLE_PLAINTEXT, EXAMPLE_SESSION_KEY, iv) == (EXAMPLE_ENCRYPTED, EXAMPLE_IV)


def test_the_watermark_must_name_the_app() -> None:
    with pytest.raises(OpenDataError, match="another app"):
        opendata.open_user_data(
            EXAMPLE_ENCRYPTED, EXAMPLE_IV, EXAMPLE_SESSION_KEY, appid="tb0123456789abcdef"
        )


def test_wechats_raw_data_signature_example() -> None:
    assert opendata.raw_data_signature(SIGNATURE_RAW_DATA, SIGNATURE_SESSION_KEY) == SIGNATURE
    assert opendata.check_raw_data(SIGNATURE_RAW_DATA, SIGNATURE.upper(), SIGNATURE_SESSION_KEY)
    assert not opendata.check_raw_data(SIGNATURE_RAW_DATA + " ", SIGNATURE, SIGNATURE_SESSION_KEY)


def test_wechats_login_state_signature_example() -> None:
    assert opendata.session_signature(STATE_SESSION_KEY, b'{"foo":"bar"}') == STATE_SIGNATURE
    # GET requests sign the empty string (what checksession and resetusersessionkey take).
    empty = opendata.session_signature(STATE_SESSION_KEY)
    assert empty == opendata.session_signature(STATE_SESSION_KEY, b"") != STATE_SIGNATURE


def test_new_session_keys_are_16_random_bytes_in_base64() -> None:
    keys = {opendata.new_session_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16 for key in keys)


@pytest.mark.parametrize(
    ("encrypted", "iv", "key", "what"),
    [
        ("not base64!", EXAMPLE_IV, EXAMPLE_SESSION_KEY, "encryptedData"),
        (EXAMPLE_ENCRYPTED, "short", EXAMPLE_SESSION_KEY, "iv"),
        (EXAMPLE_ENCRYPTED, base64.b64encode(b"x" * 15).decode(), EXAMPLE_SESSION_KEY, "iv"),
        (EXAMPLE_ENCRYPTED, EXAMPLE_IV, base64.b64encode(b"k" * 32).decode(), "session_key"),
        (EXAMPLE_ENCRYPTED[:-4], EXAMPLE_IV, EXAMPLE_SESSION_KEY, "encryptedData"),
        ("", EXAMPLE_IV, EXAMPLE_SESSION_KEY, "encryptedData"),
    ],
)
def test_bad_inputs_are_refused_naming_the_part(encrypted: str, iv: str, key: str, what: str) -> None:
    with pytest.raises(OpenDataError, match=what):
        opendata.decrypt(encrypted, iv, key)


@settings(max_examples=200)
@given(plaintext=st.binary(max_size=600), key=session_keys)
def test_encrypt_then_decrypt_is_the_identity(plaintext: bytes, key: str) -> None:
    encrypted, iv = opendata.encrypt(plaintext, key)
    raw = base64.b64decode(encrypted)
    assert len(raw) % 16 == 0 and len(raw) > len(plaintext)  # PKCS#7 always pads
    assert opendata.decrypt(encrypted, iv, key) == plaintext


@settings(max_examples=100)
@given(
    data=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=30) | st.integers(), max_size=5),
    key=session_keys,
    timestamp=st.integers(min_value=0, max_value=2**32),
)
def test_sealed_user_data_opens_with_its_watermark(data: dict[str, object], key: str, timestamp: int) -> None:
    data.pop("watermark", None)
    encrypted, iv = opendata.seal_user_data(
        data, appid="tb0123456789abcdef", session_key=key, timestamp=timestamp
    )
    opened = opendata.open_user_data(encrypted, iv, key, appid="tb0123456789abcdef")
    assert opened == {**data, "watermark": {"timestamp": timestamp, "appid": "tb0123456789abcdef"}}


@settings(max_examples=100)
@given(plaintext=st.binary(min_size=1, max_size=200), key=session_keys, other=session_keys)
def test_another_session_key_never_gives_the_plaintext(plaintext: bytes, key: str, other: str) -> None:
    encrypted, iv = opendata.encrypt(plaintext, key)
    if other == key:
        return
    with contextlib.suppress(OpenDataError):  # usually the padding gives it away
        assert opendata.decrypt(encrypted, iv, other) != plaintext


@settings(max_examples=100)
@given(raw=st.text(max_size=200), key=session_keys)
def test_the_raw_data_signature_is_sha1_of_data_and_key(raw: str, key: str) -> None:
    expected = hashlib.sha1((raw + key).encode(), usedforsecurity=False).hexdigest()
    assert opendata.raw_data_signature(raw, key) == expected
    assert opendata.check_raw_data(raw, expected, key)


def test_a_tampered_block_breaks_the_json_or_the_padding() -> None:
    key = opendata.new_session_key()
    encrypted, iv = opendata.seal_user_data(
        {"phone": "13800000000"}, appid="tb0123456789abcdef", session_key=key
    )
    raw = bytearray(base64.b64decode(encrypted))
    raw[-1] ^= 0x01
    with pytest.raises(OpenDataError):
        opendata.open_user_data(base64.b64encode(bytes(raw)).decode(), iv, key, appid="tb0123456789abcdef")
    assert msgspec.json.decode(opendata.decrypt(encrypted, iv, key))["phone"] == "13800000000"


def test_each_encryption_draws_a_fresh_iv() -> None:
    key = opendata.new_session_key()
    ivs = {opendata.encrypt(b"same", key)[1] for _ in range(50)}
    assert len(ivs) == 50
