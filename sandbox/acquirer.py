"""Simulated payment acquirer (收单机构): tokenises a card once, then authorises amounts against the token,
idempotently, and serves the daily statement it settles with us.

POST /acquirer/tokens {account_ref, card_number} -> {token_ref, last4, brand}
    The card number (12 to 19 digits, Luhn-checked) is looked at once: only its last four digits and brand
    are kept, and it is never echoed, logged or stored. A bad one is 400 invalid_card_number.
POST /acquirer/authorisations {token_ref, amount_fen, idempotency_key, merchant}
    -> {approved, provider_ref, amount_fen, reason, authorised_at}
    A decline is a normal answer (200, approved false) with reason "over_limit" (above the per-payment limit,
    小额免密) or "insufficient_funds" (above the token's balance). The same idempotency_key again answers the
    first answer and charges nothing; reused with another token, amount or merchant it is 409
    idempotency_key_reused. An unknown token is 404 token_not_found.
GET /acquirer/statement?date=YYYY-MM-DD and the /sandbox/statement knobs: see sandbox/statement.py (kind
"payment"; approved authorisations only).

Knobs for tests and the demo (never failing under injected faults):
GET|POST /sandbox/acquirer/config {per_payment_limit_fen?, default_balance_fen?}
GET|POST /sandbox/acquirer/tokens/{token_ref} {balance_fen} (what the token holds: last4, brand, balance)
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import structlog
from litestar import Litestar, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from stdnum import luhn

from sandbox.frame import FAULTY, Provider, ProviderError, provider_app
from sandbox.statement import Statement, statement_routes

log = structlog.get_logger(__name__)

Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Fen = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
_CARD_NOISE = re.compile(r"[\s-]")
_CARD = re.compile(r"[0-9]{12,19}")  # [0-9], not \d: \d takes any Unicode digit


class Config(msgspec.Struct):
    per_payment_limit_fen: int = 100_000  # 1000 yuan: the usual password-free (小额免密) limit
    default_balance_fen: int = 500_000  # what a newly tokenised card can spend


class ConfigIn(msgspec.Struct, forbid_unknown_fields=True):
    per_payment_limit_fen: Fen | None = None
    default_balance_fen: Fen | None = None


class TokeniseIn(msgspec.Struct, forbid_unknown_fields=True):
    account_ref: Reference
    card_number: Annotated[str, msgspec.Meta(max_length=40)]


class Instrument(msgspec.Struct):
    token_ref: str
    account_ref: str
    last4: str
    brand: str
    balance_fen: int


class TokeniseOut(msgspec.Struct):
    token_ref: str
    last4: str
    brand: str


class BalanceIn(msgspec.Struct, forbid_unknown_fields=True):
    balance_fen: Fen


class AuthoriseIn(msgspec.Struct, forbid_unknown_fields=True):
    token_ref: Reference
    amount_fen: Annotated[int, msgspec.Meta(gt=0, le=10**12)]
    idempotency_key: Reference
    merchant: Reference


class AuthoriseOut(msgspec.Struct):
    approved: bool
    provider_ref: str
    amount_fen: int
    reason: str | None
    authorised_at: datetime


def brand_of(digits: str) -> str:
    if digits.startswith("62"):
        return "unionpay"
    if digits.startswith("4"):
        return "visa"
    if digits[:2] in {"51", "52", "53", "54", "55"} or "2221" <= digits[:4] <= "2720":
        return "mastercard"
    return "other"


@post("/acquirer/tokens", status_code=200, opt=FAULTY, sync_to_thread=False)
def tokenise(state: State, data: JSONBody[TokeniseIn]) -> TokeniseOut:
    digits = _CARD_NOISE.sub("", data.card_number)
    if not _CARD.fullmatch(digits) or not luhn.is_valid(digits):
        raise ProviderError(400, "invalid_card_number", "card_number: not a valid card number")
    config: Config = state.config
    instrument = Instrument(
        token_ref="tok_" + secrets.token_hex(12),
        account_ref=data.account_ref,
        last4=digits[-4:],
        brand=brand_of(digits),
        balance_fen=config.default_balance_fen,
    )
    state.instruments[instrument.token_ref] = instrument
    log.info("acquirer.tokenised", token_ref=instrument.token_ref, brand=instrument.brand)
    return TokeniseOut(instrument.token_ref, instrument.last4, instrument.brand)


@post("/acquirer/authorisations", status_code=200, opt=FAULTY, sync_to_thread=False)
def authorise(state: State, data: JSONBody[AuthoriseIn]) -> AuthoriseOut:
    answers: dict[str, tuple[AuthoriseIn, AuthoriseOut]] = state.answers  # idempotency key -> first answer
    earlier = answers.get(data.idempotency_key)
    if earlier is not None:
        if earlier[0] != data:
            raise ProviderError(
                409,
                "idempotency_key_reused",
                "this idempotency_key came with another token, amount or merchant",
            )
        return earlier[1]
    instruments: dict[str, Instrument] = state.instruments
    instrument = instruments.get(data.token_ref)
    if instrument is None:
        raise ProviderError(404, "token_not_found", "no instrument with this token")
    config: Config = state.config
    reason = None
    if data.amount_fen > config.per_payment_limit_fen:
        reason = "over_limit"
    elif data.amount_fen > instrument.balance_fen:
        reason = "insufficient_funds"
    answer = AuthoriseOut(
        approved=reason is None,
        provider_ref="pay_" + secrets.token_hex(10),
        amount_fen=data.amount_fen,
        reason=reason,
        authorised_at=datetime.now(UTC),
    )
    answers[data.idempotency_key] = (data, answer)
    if answer.approved:
        instrument.balance_fen -= data.amount_fen
        statement: Statement = state.statement
        statement.record(answer.provider_ref, answer.amount_fen, answer.authorised_at)
    log.info(
        "acquirer.authorised",
        provider_ref=answer.provider_ref,
        token_ref=data.token_ref,
        amount_fen=data.amount_fen,
        approved=answer.approved,
        reason=reason,
    )
    return answer


@get("/sandbox/acquirer/config", sync_to_thread=False)
def show_config(state: State) -> Config:
    config: Config = state.config
    return config


@post("/sandbox/acquirer/config", status_code=200, sync_to_thread=False)
def set_config(state: State, data: JSONBody[ConfigIn]) -> Config:
    """Fields given replace the current ones; the others stay."""
    config: Config = state.config
    if data.per_payment_limit_fen is not None:
        config.per_payment_limit_fen = data.per_payment_limit_fen
    if data.default_balance_fen is not None:
        config.default_balance_fen = data.default_balance_fen
    return config


def _instrument(state: State, token_ref: str) -> Instrument:
    instruments: dict[str, Instrument] = state.instruments
    instrument = instruments.get(token_ref)
    if instrument is None:
        raise ProviderError(404, "token_not_found", "no instrument with this token")
    return instrument


@get("/sandbox/acquirer/tokens/{token_ref:str}", sync_to_thread=False)
def show_instrument(state: State, token_ref: FromPath[str]) -> Instrument:
    return _instrument(state, token_ref)


@post("/sandbox/acquirer/tokens/{token_ref:str}", status_code=200, sync_to_thread=False)
def set_balance(state: State, token_ref: FromPath[str], data: JSONBody[BalanceIn]) -> Instrument:
    instrument = _instrument(state, token_ref)
    instrument.balance_fen = data.balance_fen
    return instrument


def create_app() -> Litestar:
    return provider_app(
        "acquirer",
        [
            tokenise,
            authorise,
            show_config,
            set_config,
            show_instrument,
            set_balance,
            *statement_routes("/acquirer"),
        ],
        state={"config": Config(), "instruments": {}, "answers": {}, "statement": Statement("payment")},
    )


PROVIDER = Provider(
    name="acquirer",
    title="Payment acquirer",
    create_app=create_app,
    port_setting="sandbox_acquirer_port",
    url_setting="payment_acquirer_url",
)
