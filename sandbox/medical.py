"""Simulated medical-insurance platform (医保信息平台) and its e-voucher (医保电子凭证) decoding, ec.query.

Shapes. ec.query follows what public integrations of the NHSA e-voucher interface show (the 定点医药机构接口规范
section 1.14.6 "电子凭证解码", as used through the platform's local gateway at
/localcfc/api/hsecfc/localQrCodeQuery): a request envelope {orgId, transType: "ec.query", data: {orgId,
businessType, operatorId, operatorName, officeId, officeName, deviceType}, extra} and an answer envelope
{code (0 = success), message, data} whose data carries ecToken (at most 40 characters: here the 6-digit
insurance region, "ec", 30 more), userName, idNo, idType ("01": resident ID card), insuOrg (参保地区编码, the
6-digit insurance region, the "insuPlc" of our contract) and ecIndexNo. Some gateways send data as a JSON
string rather than an object; this one sends an object.
Modelled where the sources show nothing to follow:
- data.psnNo in the request names the insured person. On a real counter the scanner reads the citizen's
  e-voucher QR instead; we hold the insured-person reference our link got and send that.
- data.ecTokenExpireTime in the answer: when the ecToken stops being accepted (RFC 3339).
- userName and idNo come masked (张* / 2101**********1234): the counter sees who it is, not the full record.
- Business failures answer HTTP 200 with a non-zero code, as the platform does: -1 invalid parameters,
  2001 no e-voucher for this person.
- POST /medical/insured {account_ref, name, id_number} -> {psnNo, insuOrg} links an L3 citizen (the real
  platform does this through its own app and channel authorisation). The ID number must pass the GB 11643
  check digit (400 invalid_id_number); a person is one psnNo however often linked, and linking the ID number
  under another name is 409 identity_mismatch.
No statement: the money of a medical visit is settled between the hospital and the platform, not through us.
Names and ID numbers are personal data: never logged, never answered unmasked.

Knobs: GET|POST /sandbox/medical/config {insu_org?, token_ttl_seconds?}.
"""

from __future__ import annotations

import secrets
import string
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Litestar, get, post
from litestar.datastructures import State
from litestar.params import JSONBody
from stdnum.exceptions import ValidationError
from stdnum.iso7064 import mod_11_2

from sandbox.frame import FAULTY, Provider, ProviderError, provider_app
from sandbox.statement import SETTLEMENT_TZ

log = structlog.get_logger(__name__)

EC_QUERY_PATH = "/localcfc/api/hsecfc/localQrCodeQuery"
# 用码业务类型 (appendix A.1): registration, consultation, examinations, treatment, settlement, dispensing,
# in-patient filing, admission, deposit, pharmacy purchase, prescription download.
BUSINESS_TYPES = frozenset(
    {
        "01101",
        "01201",
        "01202",
        "01203",
        "01204",
        "01301",
        "01302",
        "01102",
        "01103",
        "01104",
        "02121",
        "02122",
    }
)
SUCCESS, INVALID_PARAMETERS, NO_VOUCHER = 0, -1, 2001
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
Text = Annotated[str, msgspec.Meta(max_length=64)]


class Config(msgspec.Struct):
    insu_org: str = "210100"  # 沈阳市: where the sandbox's citizens are insured
    token_ttl_seconds: int = 1800  # an ecToken serves one visit's registration to settlement


class ConfigIn(msgspec.Struct, forbid_unknown_fields=True):
    insu_org: Annotated[str, msgspec.Meta(pattern="^[0-9]{6}$")] | None = None
    token_ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] | None = None


class LinkIn(msgspec.Struct, forbid_unknown_fields=True):
    account_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    id_number: Annotated[str, msgspec.Meta(max_length=32)]


class LinkOut(msgspec.Struct, rename="camel"):
    psn_no: str
    insu_org: str


class Insured(msgspec.Struct):
    psn_no: str
    name: str
    id_number: str
    insu_org: str


class EcQueryIn(msgspec.Struct, rename="camel"):
    org_id: Annotated[str, msgspec.Meta(max_length=40)] = ""
    business_type: Text = ""
    operator_id: Text = ""
    operator_name: Text = ""
    office_id: Text = ""
    office_name: Text = ""
    device_type: Text = ""
    psn_no: Text = ""


class EnvelopeIn(msgspec.Struct, rename="camel"):
    org_id: Annotated[str, msgspec.Meta(max_length=40)]
    trans_type: Annotated[str, msgspec.Meta(max_length=64)]
    data: dict[str, Any] | str  # some gateways send the inner JSON as a string
    extra: Any = None


class EcVoucherOut(msgspec.Struct, rename="camel"):
    ec_token: str
    user_name: str
    id_no: str
    id_type: str
    insu_org: str
    ec_index_no: str
    ec_token_expire_time: datetime


class EnvelopeOut(msgspec.Struct):
    code: int
    message: str
    data: EcVoucherOut | None = None


def _normalize(value: str) -> str:
    return unicodedata.normalize("NFKC", value).strip().upper()


def mask_name(name: str) -> str:
    return name[:1] + "*" * (len(name) - 1) if len(name) > 1 else "*" * len(name)


def mask_id_number(id_number: str) -> str:
    return id_number[:4] + "*" * (len(id_number) - 8) + id_number[-4:]


def _failure(code: int, message: str) -> EnvelopeOut:
    return EnvelopeOut(code=code, message=message)


@post("/medical/insured", status_code=200, opt=FAULTY, sync_to_thread=False)
def link(state: State, data: JSONBody[LinkIn]) -> LinkOut:
    id_number = _normalize(data.id_number)
    try:
        if len(id_number) != 18:
            raise ValidationError
        mod_11_2.validate(id_number)
    except ValidationError:
        raise ProviderError(400, "invalid_id_number", "id_number: not a valid resident ID number") from None
    name = unicodedata.normalize("NFKC", data.name).strip()
    people: dict[str, Insured] = state.people  # ID number -> insured person
    person = people.get(id_number)
    if person is None:
        config: Config = state.config
        person = Insured("psn_" + secrets.token_hex(12), name, id_number, config.insu_org)
        people[id_number] = person
        state.by_psn_no[person.psn_no] = person
    elif person.name != name:
        raise ProviderError(409, "identity_mismatch", "the name does not match the insured person's record")
    state.accounts[data.account_ref] = person.psn_no
    log.info("medical.linked", psn_no=person.psn_no)
    return LinkOut(psn_no=person.psn_no, insu_org=person.insu_org)


@post(EC_QUERY_PATH, status_code=200, opt=FAULTY, sync_to_thread=False)
def ec_trans(state: State, data: JSONBody[EnvelopeIn]) -> EnvelopeOut:
    if data.trans_type != "ec.query":
        return _failure(INVALID_PARAMETERS, "transType: only ec.query is served here")
    try:
        if isinstance(data.data, str):
            query = msgspec.json.decode(data.data, type=EcQueryIn)
        else:
            query = msgspec.convert(data.data, EcQueryIn)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _failure(INVALID_PARAMETERS, f"data: {exc}")
    if not data.org_id or query.org_id != data.org_id:
        return _failure(INVALID_PARAMETERS, "orgId: required, and the same in the envelope and in data")
    if query.business_type not in BUSINESS_TYPES:
        return _failure(INVALID_PARAMETERS, "businessType: not a 用码业务类型 of appendix A.1")
    by_psn_no: dict[str, Insured] = state.by_psn_no
    person = by_psn_no.get(query.psn_no)
    if person is None:
        log.info("medical.ec_query", org_id=data.org_id, found=False)
        return _failure(NO_VOUCHER, "电子凭证不存在")
    config: Config = state.config
    now = datetime.now(UTC)
    voucher = EcVoucherOut(
        ec_token=person.insu_org + "ec" + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(30)),
        user_name=mask_name(person.name),
        id_no=mask_id_number(person.id_number),
        id_type="01",
        insu_org=person.insu_org,
        ec_index_no=secrets.token_hex(16).upper(),
        ec_token_expire_time=(now + timedelta(seconds=config.token_ttl_seconds)).astimezone(SETTLEMENT_TZ),
    )
    log.info("medical.ec_query", org_id=data.org_id, business_type=query.business_type, found=True)
    return EnvelopeOut(code=SUCCESS, message="处理成功", data=voucher)


@get("/sandbox/medical/config", sync_to_thread=False)
def show_config(state: State) -> Config:
    config: Config = state.config
    return config


@post("/sandbox/medical/config", status_code=200, sync_to_thread=False)
def set_config(state: State, data: JSONBody[ConfigIn]) -> Config:
    """Fields given replace the current ones; the others stay (people linked before keep their region)."""
    config: Config = state.config
    if data.insu_org is not None:
        config.insu_org = data.insu_org
    if data.token_ttl_seconds is not None:
        config.token_ttl_seconds = data.token_ttl_seconds
    return config


def create_app() -> Litestar:
    return provider_app(
        "medical",
        [link, ec_trans, show_config, set_config],
        state={"config": Config(), "people": {}, "by_psn_no": {}, "accounts": {}},
    )


PROVIDER = Provider(
    name="medical",
    title="Medical-insurance platform",
    create_app=create_app,
    port_setting="sandbox_medical_port",
    url_setting="medical_insurance_url",
)
