"""Bench setup for the one-code terminals' online resolve (`tongban bench --routes terminal-resolve`).

The scene measured is transit at an online bus validator: verify the code (issuer and device ES256
signatures), refuse a replay in Redis, record the ride and enqueue its fare through the outbox. It is the
scene a bench can repeat honestly: it calls no outside provider while answering (the fare is charged
later by the worker), so the number is ours, not the sandbox's. Medical and payment add one provider call
each (ec.query, an authorisation), which in production is the provider's latency, not our CPU.

Every request carries a code nobody resolved yet (one authorisation, distinct counters) and a fresh nonce,
signed beforehand: a replayed code or nonce would measure the refusal instead.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from bench.routes import SetupContext

RESOLVE_PATH = "/v1/terminals/resolve"
# Enough for a warm-up and a 15 s run at well over the target rate.
RESOLVE_REQUESTS = 100_000
RIDE_FARE_FEN = 200
# The codes are generated this far ahead of the setup (verify accepts up to 30 s ahead) and the requests
# signed for this moment: both stay acceptable for about 100 s of setup, warm-up and load.
CODES_AHEAD_S = 29
SIGNED_AHEAD_S = 60


def _signed_requests(
    authorisation: bytes, device_key: object, terminal_id: str, secret: str, count: int, t0: int
) -> tuple[int, list[str]]:
    """(timestamp, lines of 'nonce TAB signature TAB body'), counters 1..count."""
    from onecode import codec
    from onecode.terminal_auth import new_nonce, sign

    timestamp = t0 + SIGNED_AHEAD_S
    generated_at = t0 + CODES_AHEAD_S
    encoder = msgspec.json.Encoder()
    lines = []
    for counter in range(1, count + 1):
        text = codec.pack(codec.append_dynamic(authorisation, device_key, generated_at, counter))  # type: ignore[arg-type]
        body = encoder.encode({"code": text, "scene": "transit", "amount_fen": RIDE_FARE_FEN})
        nonce = new_nonce()
        signature = sign(secret, "POST", RESOLVE_PATH, body, timestamp, nonce)
        lines.append(f"{nonce}\t{signature}\t{body.decode()}")
    return timestamp, lines


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    # The script's resume point (where the previous wrk run stopped): new requests start from the top.
    Path(f"{path}.next").unlink(missing_ok=True)


async def terminal_resolve(ctx: SetupContext) -> Mapping[str, str]:
    """A validator terminal, a citizen with transit linked and an authorisation, and RESOLVE_REQUESTS signed
    resolves of distinct codes, written to a file lua/terminal_resolve.lua walks through. The transit link
    is stored as the operator's answer would be (no transit operator runs during a bench)."""
    from auth.service import issue_login_code
    from auth.tokens import authenticate
    from core import ids
    from core.db import connection, transaction
    from core.settings import load_settings
    from core.stores import close_stores, open_stores
    from onecode import authorisations, devices, repository, terminals
    from onecode.client import decode_authorisation, generate_device_key, public_key_b64

    stores = await open_stores(load_settings(dict(ctx.server_env)))
    try:
        phone = "1380013" + f"{secrets.randbelow(10**4):04d}"
        challenge_id, code = await issue_login_code(stores, phone)
        login = await ctx.client.post(
            "/v1/auth/login",
            json={"phone": phone, "code": code, "challenge_id": challenge_id, "device": {"id": "bench"}},
        )
        login.raise_for_status()
        account_id = (await authenticate(stores, login.json()["access_token"])).account_id
        key = generate_device_key()
        device, _ = await devices.register(stores, account_id, public_key_b64(key))
        async with transaction(stores.pool, stores.settings) as conn:
            await repository.insert_link(
                conn,
                link_id=ids.new_id(),
                account_id=account_id,
                kind="transit",
                provider_ref="bench-transit-" + secrets.token_hex(6),
                provider_ref_enc=None,
                ref_masked="****",
            )
        issued = await authorisations.issue(stores, account_id, device.id)
        async with connection(stores.pool, stores.settings) as conn:
            made = await terminals.register(
                conn, stores.settings, kind="validator", name="bench validator", owner="bench"
            )
    finally:
        await close_stores(stores)
    terminal_id = str(made.terminal.id)
    timestamp, lines = await asyncio.to_thread(
        _signed_requests,
        decode_authorisation(issued.authorisation),
        key,
        terminal_id,
        made.secret,
        RESOLVE_REQUESTS + 1,
        int(time.time()),
    )
    # One request through the server first, as the load will send it: it must be approved.
    nonce, signature, body = lines.pop(0).split("\t", 2)
    headers = {
        "Content-Type": "application/json",
        "X-Terminal-Id": terminal_id,
        "X-Timestamp": str(timestamp),
        "X-Nonce": nonce,
        "X-Signature": signature,
    }
    answer = await ctx.client.post(RESOLVE_PATH, content=body, headers=headers)
    answer.raise_for_status()
    if answer.json()["result"] != "approved":
        raise RuntimeError(f"the bench code is not approved: {answer.json()['reason']}")
    requests_file = Path(ctx.server_env.get("TONGBAN_DATA_DIR", ".")) / "bench-terminal-resolve.txt"
    await asyncio.to_thread(_write, requests_file, lines)
    return {
        "BENCH_REQUESTS_FILE": str(requests_file),
        "BENCH_TERMINAL_ID": terminal_id,
        "BENCH_TIMESTAMP": str(timestamp),
        "BENCH_PATH": RESOLVE_PATH,
    }
