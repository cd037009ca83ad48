"""Simulated transit operator (公交/地铁 operator, the issuer of the ride account behind a ride code): links a
citizen to a transit account, charges fares per ride and serves the daily statement it settles with us.

POST /transit/accounts {account_ref} -> {transit_account}
    account_ref is our opaque reference for the citizen; linking it again gives the same account.
POST /transit/fares {transit_account, fare_fen, ride_ref} -> {txn_ref, fare_fen, charged_at, replayed}
    Idempotent by ride_ref: the same ride again answers the first charge (replayed: true) and charges nothing;
    the same ride_ref with another account or fare is refused (409 ride_ref_conflict). An unknown account is
    404 account_not_found.
GET /transit/statement?date=YYYY-MM-DD and the /sandbox/statement knobs: see sandbox/statement.py (kind
"fare").
Only the account, fare and statement routes fail under injected faults. Nothing personal is sent or logged.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import structlog
from litestar import Litestar, post
from litestar.datastructures import State
from litestar.params import JSONBody

from sandbox.frame import FAULTY, Provider, ProviderError, provider_app
from sandbox.statement import Statement, statement_routes

log = structlog.get_logger(__name__)

MAX_FARE_FEN = 100_000  # no single ride costs 1000 yuan; a larger fare is a bug on the caller's side
Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class LinkIn(msgspec.Struct, forbid_unknown_fields=True):
    account_ref: Reference


class LinkOut(msgspec.Struct):
    transit_account: str


class FareIn(msgspec.Struct, forbid_unknown_fields=True):
    transit_account: Reference
    fare_fen: Annotated[int, msgspec.Meta(gt=0, le=MAX_FARE_FEN)]
    ride_ref: Reference


class Charge(msgspec.Struct):
    txn_ref: str
    transit_account: str
    fare_fen: int
    charged_at: datetime


class FareOut(msgspec.Struct):
    txn_ref: str
    fare_fen: int
    charged_at: datetime
    replayed: bool


@post("/transit/accounts", status_code=200, opt=FAULTY, sync_to_thread=False)
def link(state: State, data: JSONBody[LinkIn]) -> LinkOut:
    accounts: dict[str, str] = state.accounts  # our account_ref -> transit account
    account = accounts.get(data.account_ref)
    if account is None:
        account = accounts[data.account_ref] = "TA" + secrets.token_hex(8).upper()
        state.known_accounts.add(account)
        log.info("transit.linked", transit_account=account)
    return LinkOut(transit_account=account)


@post("/transit/fares", status_code=200, opt=FAULTY, sync_to_thread=False)
def charge_fare(state: State, data: JSONBody[FareIn]) -> FareOut:
    charges: dict[str, Charge] = state.charges  # ride_ref -> the charge it made
    earlier = charges.get(data.ride_ref)
    if earlier is not None:
        if (earlier.transit_account, earlier.fare_fen) != (data.transit_account, data.fare_fen):
            raise ProviderError(
                409, "ride_ref_conflict", "this ride_ref was charged with another account or fare"
            )
        return FareOut(earlier.txn_ref, earlier.fare_fen, earlier.charged_at, replayed=True)
    if data.transit_account not in state.known_accounts:
        raise ProviderError(404, "account_not_found", "no transit account with this reference")
    charge = Charge("trn_" + secrets.token_hex(10), data.transit_account, data.fare_fen, datetime.now(UTC))
    charges[data.ride_ref] = charge
    statement: Statement = state.statement
    statement.record(charge.txn_ref, charge.fare_fen, charge.charged_at)
    log.info("transit.charged", txn_ref=charge.txn_ref, fare_fen=charge.fare_fen)
    return FareOut(charge.txn_ref, charge.fare_fen, charge.charged_at, replayed=False)


def create_app() -> Litestar:
    return provider_app(
        "transit",
        [link, charge_fare, *statement_routes("/transit")],
        state={"accounts": {}, "known_accounts": set(), "charges": {}, "statement": Statement("fare")},
    )


PROVIDER = Provider(
    name="transit",
    title="Transit operator",
    create_app=create_app,
    port_setting="sandbox_transit_port",
    url_setting="transit_operator_url",
)
