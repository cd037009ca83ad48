"""Online resolve: a hospital counter, a shop POS or an online bus validator sends the code it scanned and the
scene; the server verifies it, refuses a replay, and routes it.

- Verifying is validator.verify (the validators' own function) against this process's Bundle: the issuer
  keys and the revoked code ids, rebuilt at most every onecode_bundle_seconds (BUNDLES). The same bundle,
  as JSON, is what `GET /v1/terminals/bundle` serves to offline validators.
- A replay is refused atomically across processes: the first resolve of a (code id, counter) sets a Redis
  key (SET NX, on the process's pipelined connection: core.pipelined_redis) that lives until the code
  would be refused as stale anyway. A resolve that fails because a provider or a store is down gives its
  key back, so the terminal can try the same code again.
- transit (an online validator): the code is a ride, recorded with its fare job before the answer (a group
  commit shared by the resolves in flight: rides.RideWriter); the fare is charged later through the outbox
  (onecode.jobs), exactly as an uploaded ride's.
  medical (a hospital counter): the medical-insurance platform's ec.query answer, in its shape (ecToken,
  masked name and ID number, insurance region).
  payment (a POS): the acquirer authorises the amount with the idempotency key "<terminal id>:<order id>"; an
  approval is posted to the ledger in the same transaction as the resolve's record. The same order sent
  again gets the first answer (nothing is charged twice).
- Every refusal is a 200 answer with result "refused" (a verify() reason, or "not_linked") and a decline
  is result "declined" with the provider's reason ("over_limit", ...); a provider down is a fast 503
  `provider_unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import asyncpg
import msgspec

from core import db
from core import redis as redis_mod
from core.errors import Forbidden, InvalidInput, ProviderUnavailable, StoreUnavailable
from core.pipelined_redis import pipelined
from core.stores import Stores
from onecode import authorisations, codec, emv, ledger, repository, rides
from onecode.providers import EcVoucher, ProviderRejected, medical_insurance, payment_acquirer
from onecode.terminal_auth import TerminalPrincipal
from onecode.validator import DEFAULT_MAX_AGE, DEFAULT_SKEW, Bundle, verify

Scene = Literal["transit", "medical", "payment"]
Result = Literal["approved", "declined", "refused"]
# A scanned code is about 410 characters; a body much longer is refused (413) before it is read whole.
MAX_BODY_BYTES: Final = 4 * 1024
MAX_AMOUNT_FEN: Final = 10**9  # ten million yuan: far above any till
ORDER_ID = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# A resolve's replay key lives until its code would be refused as stale anyway.
REPLAY_SECONDS: Final = DEFAULT_MAX_AGE + 2 * DEFAULT_SKEW + 1
_SCENE_BITS: Final = codec.SCENE_NAMES


class ResolveRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The scanned text: "TBO1:...", or for a payment its EMVCo CPM form "hQVDUFYw..." (docs/onecode-format.md).
    code: Annotated[str, msgspec.Meta(max_length=1024)]
    scene: Scene
    # transit: the fare; payment: the amount to charge (both required there); medical: none.
    amount_fen: Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT_FEN)] | None = None
    # payment: the till's order number (required; with the terminal id, the idempotency key).
    # transit: the ride id (default: code id and counter).
    order_id: ORDER_ID | None = None


class ResolveAnswer(msgspec.Struct, kw_only=True, omit_defaults=True):
    result: Result
    # "ok"; a verify() reason (docs/onecode-format.md); "not_linked"; or the provider's decline reason.
    reason: str
    scene: Scene
    code_id: str | None = None  # 32 hex digits, once the code parsed
    counter: int | None = None
    amount_fen: int | None = None
    voucher: EcVoucher | None = None  # medical: the ec.query data (ecToken, userName, idNo, insuOrg, ...)
    provider_ref: str | None = None  # payment: the acquirer's reference
    ride_id: str | None = None  # transit: the ride recorded


_ANSWER_ENCODER: Final = msgspec.json.Encoder()


def encode_answer(answer: ResolveAnswer) -> bytes:
    """The answer as the JSON body of POST /v1/terminals/resolve."""
    return _ANSWER_ENCODER.encode(answer)


# --- the bundle ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _BundleState:
    pool: asyncpg.Pool  # held so that id(pool) is not reused while this state lives
    bundle: Bundle | None = None
    document: bytes = b""
    built_at: float = float("-inf")  # when the build of the current one started (monotonic)
    lock: asyncio.Lock | None = None


class BundleCache:
    """The process's Bundle (issuer keys and revoked code ids) and its JSON, built by one coroutine at a time.

    Online resolves verify with one at most onecode_bundle_seconds old (`current`; medical and payment look
    the authorisation up live as well); a terminal downloading the bundle gets one built after its request
    arrived (`fresh`), so every revocation committed before the download is in it. While PostgreSQL is away
    the last one is kept."""

    def __init__(self) -> None:
        self._states: dict[int, _BundleState] = {}

    def _state(self, stores: Stores) -> _BundleState:
        state = self._states.get(id(stores.pool))
        if state is None or state.pool is not stores.pool:
            state = self._states[id(stores.pool)] = _BundleState(pool=stores.pool, lock=asyncio.Lock())
        return state

    def forget(self, stores: Stores) -> None:
        """The next use rebuilds (a revocation made by this process shows at once)."""
        self._state(stores).built_at = float("-inf")

    async def current(self, stores: Stores) -> tuple[Bundle, bytes]:
        """A bundle at most onecode_bundle_seconds old."""
        state = self._state(stores)
        oldest = time.monotonic() - stores.settings.onecode_bundle_seconds
        if state.bundle is not None and state.built_at >= oldest:
            return state.bundle, state.document
        return await self._build(stores, state, oldest)

    async def fresh(self, stores: Stores) -> tuple[Bundle, bytes]:
        """A bundle whose build started after this call: concurrent downloads share one build."""
        state = self._state(stores)
        return await self._build(stores, state, time.monotonic())

    async def _build(self, stores: Stores, state: _BundleState, oldest: float) -> tuple[Bundle, bytes]:
        assert state.lock is not None
        async with state.lock:
            if state.bundle is not None and state.built_at >= oldest:
                return state.bundle, state.document  # built while this caller waited
            started = time.monotonic()
            try:
                bundle = await build_bundle(stores)
            except StoreUnavailable:
                if state.bundle is None:
                    raise
                # Keep verifying with the last one; `current` tries the database again in a second.
                state.built_at = time.monotonic() - stores.settings.onecode_bundle_seconds + 1.0
                return state.bundle, state.document
            document = bundle.to_json()
            old = state.bundle
            if (
                old is not None
                and old.issuer_keys.keys() == bundle.issuer_keys.keys()
                and old.revoked == bundle.revoked
            ):
                bundle = old  # unchanged: keep the one whose verified authorisations are remembered
            state.bundle, state.document, state.built_at = bundle, document, started
            return bundle, document


BUNDLES = BundleCache()


async def build_bundle(stores: Stores) -> Bundle:
    """The issuer's published keys and the revoked code ids a validator could still accept."""
    return await authorisations.bundle(stores)


# --- replays ---------------------------------------------------------------------------------------------


def replay_key(code_id: bytes, counter: int) -> str:
    return redis_mod.key("onecode:seen", code_id.hex(), str(counter))


async def first_resolve(stores: Stores, code_id: bytes, counter: int) -> bool:
    """True for the first resolve of (code id, counter) in any process; False for a replay."""
    async with redis_mod.guarded(stores.settings):
        fresh = await pipelined(stores.redis).execute(
            "SET", replay_key(code_id, counter), b"1", "NX", "EX", REPLAY_SECONDS
        )
    return fresh is not None


async def give_back(stores: Stores, code_id: bytes, counter: int) -> None:
    """A resolve that could not finish (a provider down) frees its code for the terminal's next try."""
    with contextlib.suppress(*redis_mod.OUTAGE_ERRORS):  # else the key expires by itself
        await pipelined(stores.redis).execute("DEL", replay_key(code_id, counter))


# --- resolve ---------------------------------------------------------------------------------------------


# The scenes each kind of terminal may resolve: a bus validator rides, a hospital counter reads the
# e-voucher and takes payments, a shop POS takes payments.
SCENES_OF_KIND: Final[dict[str, frozenset[str]]] = {
    "validator": frozenset({"transit"}),
    "counter": frozenset({"medical", "payment"}),
    "pos": frozenset({"payment"}),
}


def _check_request(terminal: TerminalPrincipal, request: ResolveRequest) -> None:
    if request.scene not in SCENES_OF_KIND[terminal.kind]:
        raise Forbidden(
            f"a {terminal.kind} terminal does not resolve {request.scene}", code="scene_not_allowed"
        )
    if request.scene in ("transit", "payment") and request.amount_fen is None:
        raise InvalidInput(f"amount_fen: required for {request.scene}", field="amount_fen")
    if request.scene == "payment" and request.amount_fen == 0:
        raise InvalidInput("amount_fen: a payment is at least 1 fen", field="amount_fen")
    if request.scene == "payment" and request.order_id is None:
        raise InvalidInput("order_id: required for a payment (the idempotency key)", field="order_id")
    if request.scene == "medical" and request.amount_fen is not None:
        raise InvalidInput("amount_fen: not for medical", field="amount_fen")


def _answer(request: ResolveRequest, result: Result, reason: str, code: codec.Code | None) -> ResolveAnswer:
    return ResolveAnswer(
        result=result,
        reason=reason,
        scene=request.scene,
        code_id=code.code_id.hex() if code is not None else None,
        counter=code.counter if code is not None else None,
    )


async def _record(
    stores: Stores,
    terminal: TerminalPrincipal,
    answer: ResolveAnswer,
    *,
    idempotency_key: str | None = None,
) -> None:
    async with db.connection(stores.pool, stores.settings) as conn:
        await repository.insert_resolve(
            conn,
            terminal_id=terminal.id,
            scene=answer.scene,
            code_id=bytes.fromhex(answer.code_id) if answer.code_id else None,
            counter=answer.counter,
            amount_fen=answer.amount_fen,
            result=answer.result,
            reason=answer.reason,
            provider_ref=answer.provider_ref,
            idempotency_key=idempotency_key,
        )


def payment_key(terminal: TerminalPrincipal, order_id: str) -> str:
    return f"{terminal.id}:{order_id}"


async def resolve(stores: Stores, terminal: TerminalPrincipal, request: ResolveRequest) -> ResolveAnswer:
    """Verify, refuse a replay, route by scene (see the module doc)."""
    _check_request(terminal, request)
    if request.scene == "payment":
        assert request.order_id is not None
        earlier = await _earlier_payment(stores, payment_key(terminal, request.order_id))
        if earlier is not None:
            return earlier
    code_text = request.code
    if code_text.startswith(emv.CPM_TEXT_PREFIX):
        # A standard POS scanned the EMVCo CPM form: the same code inside, its token number checked.
        if request.scene != "payment":
            raise InvalidInput("code: an EMVCo CPM payload only pays", field="code")
        try:
            code_text, _ = emv.onecode_from_cpm(code_text)
        except emv.CpmError:
            answer = _answer(request, "refused", "bad_cpm", None)
            await _record(stores, terminal, answer)
            return answer
    bundle, _ = await BUNDLES.current(stores)
    verdict = verify(
        code_text,
        bundle,
        time.time(),
        scene=_SCENE_BITS[request.scene],
        fare_fen=request.amount_fen if request.scene == "transit" else None,
    )
    code = verdict.code
    if not verdict.valid or code is None:
        answer = _answer(request, "refused", verdict.reason, code)
        if request.scene != "transit":
            await _record(stores, terminal, answer)
        return answer
    if not await first_resolve(stores, code.code_id, code.counter):
        answer = _answer(request, "refused", "replay", code)
        if request.scene != "transit":
            await _record(stores, terminal, answer)
        return answer
    try:
        if request.scene == "transit":
            return await _transit(stores, terminal, request, code)
        if request.scene == "medical":
            return await _medical(stores, terminal, request, code)
        return await _payment(stores, terminal, request, code)
    except (ProviderUnavailable, StoreUnavailable):
        await give_back(stores, code.code_id, code.counter)
        raise


async def _transit(
    stores: Stores, terminal: TerminalPrincipal, request: ResolveRequest, code: codec.Code
) -> ResolveAnswer:
    assert request.amount_fen is not None
    ride_id = request.order_id or f"{code.code_id.hex()}:{code.counter}"
    # A ride id this terminal recorded before is the same ride sent again: approved, stored once.
    await rides.record_online_ride(stores, terminal, code, ride_id=ride_id, fare_fen=request.amount_fen)
    answer = _answer(request, "approved", "ok", code)
    answer.amount_fen, answer.ride_id = request.amount_fen, ride_id
    return answer


async def _refusal(stores: Stores, code: codec.Code) -> str:
    """Why a verified code's handle maps to nothing now: revoked (e.g. a lost phone, later than the
    bundle), expired, or the scene was unlinked."""
    async with db.connection(stores.pool, stores.settings) as conn:
        record = await authorisations.by_code_id(conn, code.code_id)
    if record is not None and record.status == "revoked":
        return "revoked"
    if record is not None and not record.live():
        return "expired"
    return "not_linked"


async def _medical(
    stores: Stores, terminal: TerminalPrincipal, request: ResolveRequest, code: codec.Code
) -> ResolveAnswer:
    vault = await stores.vault()
    async with db.transaction(stores.pool, stores.settings) as conn:
        # Decrypting the insured-person reference writes a PII access-log row naming the terminal.
        target = await authorisations.handle_target(
            conn, code.authorisation.medical_handle, "medical", vault=vault, actor=f"terminal:{terminal.id}"
        )
    if target is None or terminal.org_code is None:
        answer = _answer(
            request, "refused", await _refusal(stores, code) if target is None else "no_org_code", code
        )
    else:
        try:
            voucher = await medical_insurance(stores.settings).ec_query(
                target.provider_ref, terminal.org_code
            )
        except ProviderRejected as exc:
            answer = _answer(request, "declined", exc.reason, code)
        else:
            answer = _answer(request, "approved", "ok", code)
            answer.voucher = voucher
    await _record(stores, terminal, answer)
    return answer


async def _payment(
    stores: Stores, terminal: TerminalPrincipal, request: ResolveRequest, code: codec.Code
) -> ResolveAnswer:
    assert request.amount_fen is not None and request.order_id is not None
    amount, key = request.amount_fen, payment_key(terminal, request.order_id)
    async with db.connection(stores.pool, stores.settings) as conn:
        target = await authorisations.handle_target(conn, code.authorisation.payment_handle, "payment")
    if target is None:
        answer = _answer(request, "refused", await _refusal(stores, code), code)
        answer.amount_fen = amount
        await _record(stores, terminal, answer)
        return answer
    try:
        # Idempotent at the acquirer too: a retry after an outage never charges twice.
        result = await payment_acquirer(stores.settings).authorise(
            target.provider_ref, amount, key, merchant=str(terminal.id)
        )
    except ProviderRejected as exc:
        answer = _answer(request, "declined", exc.reason, code)
        answer.amount_fen = amount
        await _record(stores, terminal, answer, idempotency_key=key)
        return answer
    answer = _answer(request, "approved" if result.approved else "declined", result.reason or "ok", code)
    answer.amount_fen, answer.provider_ref = amount, result.provider_ref
    async with db.transaction(stores.pool, stores.settings) as conn:
        first = await repository.insert_resolve(
            conn,
            terminal_id=terminal.id,
            scene="payment",
            code_id=code.code_id,
            counter=code.counter,
            amount_fen=amount,
            result=answer.result,
            reason=answer.reason,
            provider_ref=result.provider_ref,
            idempotency_key=key,
        )
        if first and result.approved:
            await ledger.post(
                conn,
                reference=result.provider_ref,
                kind=ledger.PAYMENT,
                entries=ledger.payment_entries(target.account_id, str(terminal.id), amount),
                occurred_at=result.authorised_at,
            )
    if not first:  # the same order, resolved meanwhile by a concurrent request: its answer stands
        earlier = await _earlier_payment(stores, key)
        if earlier is not None:
            return earlier
    return answer


async def _earlier_payment(stores: Stores, idempotency_key: str) -> ResolveAnswer | None:
    async with db.connection(stores.pool, stores.settings) as conn:
        row = await repository.resolve_by_idempotency_key(conn, idempotency_key)
    if row is None:
        return None
    return ResolveAnswer(
        result=row["result"],
        reason=row["reason"],
        scene=row["scene"],
        code_id=bytes(row["code_id"]).hex() if row["code_id"] is not None else None,
        counter=row["counter"],
        amount_fen=row["amount_fen"],
        provider_ref=row["provider_ref"],
    )
