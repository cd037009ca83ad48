"""Ride upload cost: 100k rides uploaded by bus validators through `POST /v1/terminals/rides` to a running
`tongban serve`, against a bare binary COPY of the same rows into the same table (same indexes).

The upload does more than the copy: every request is HMAC-signed and its nonce checked in Redis, the JSON is
decoded and every ride checked, the rows go through a temporary table (binary COPY) and are merged with
`INSERT ... ON CONFLICT DO NOTHING` (a ride uploaded again is stored once), each (code id, counter) is looked
up for a use on another validator, and the new rides' fare job is written to the outbox, all in one
transaction per upload. Target: at most 2x the bare COPY. Validators upload in batches of
TONGBAN_ONECODE_RIDES_BATCH_MAX (5000) rides, several of them at once (VALIDATORS), as a fleet coming back
to the depot would.

    python -m bench.rides_copy [--rides 100000] [--repeat 3] [--validators 4]

Writes bench/results/rides_copy.md. Uses TONGBAN_DATABASE_URL's and TONGBAN_REDIS_URL's servers (its own
database tongban_bench_rides, dropped afterwards), or embedded ones when no URL is set. No worker runs: the
fares are not charged, only enqueued.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import asyncpg
import httpx
import msgspec

from bench.runner import ServerProcess, server_env, with_database
from core import migrate
from core.embedded import ensure_stores

RESULTS = Path(__file__).resolve().parent / "results"
DATABASE = "tongban_bench_rides"
RIDES_PATH = "/v1/terminals/rides"
BATCH = 5000
CODES = 5000  # distinct authorisations the rides come from (a day of one city's riders, scaled down)
COLUMNS = ["terminal_id", "ride_id", "code_id", "counter", "generated_at", "ridden_at", "fare_fen"]


@dataclass
class Run:
    method: str
    seconds: float
    rows_in_table: int


class Ride(msgspec.Struct):
    ride_id: str
    code_id: str
    counter: int
    generated_at: datetime
    ridden_at: datetime
    fare_fen: int


def make_rides(count: int, validators: int) -> list[list[Ride]]:
    """`count` rides spread over `validators`, each (code id, counter) used once."""
    code_ids = [secrets.token_bytes(16).hex() for _ in range(CODES)]
    start = datetime.now(UTC) - timedelta(hours=6)
    fleets: list[list[Ride]] = [[] for _ in range(validators)]
    for n in range(count):
        ridden = start + timedelta(milliseconds=200 * n)
        fleets[n % validators].append(
            Ride(
                ride_id=f"r{n:08d}",
                code_id=code_ids[n % CODES],
                counter=n // CODES + 1,
                generated_at=ridden - timedelta(seconds=20),
                ridden_at=ridden,
                fare_fen=200,
            )
        )
    return fleets


async def register_validators(url: str, env: dict[str, str], count: int) -> list[tuple[UUID, str]]:
    from core.settings import load_settings
    from onecode import terminals

    settings = load_settings(env)
    conn = await asyncpg.connect(url)
    try:
        made = [
            await terminals.register(conn, settings, kind="validator", name=f"bench bus {n}", owner="bench")
            for n in range(count)
        ]
    finally:
        await conn.close()
    return [(m.terminal.id, m.secret) for m in made]


async def reset(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE onecode_rides, outbox")
        await conn.execute("VACUUM ANALYZE onecode_rides")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def count_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM onecode_rides"))
    finally:
        await conn.close()


async def run_copy(url: str, fleets: list[list[Ride]], validators: list[tuple[UUID, str]]) -> float:
    records = [
        (
            terminal_id,
            ride.ride_id,
            bytes.fromhex(ride.code_id),
            ride.counter,
            ride.generated_at,
            ride.ridden_at,
            ride.fare_fen,
        )
        for (terminal_id, _), fleet in zip(validators, fleets, strict=True)
        for ride in fleet
    ]
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await conn.copy_records_to_table("onecode_rides", records=records, columns=COLUMNS)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def run_upload(base_url: str, fleets: list[list[Ride]], validators: list[tuple[UUID, str]]) -> float:
    from onecode.terminal_auth import signed_headers

    encoder = msgspec.json.Encoder()
    bodies = [
        [encoder.encode({"rides": fleet[i : i + BATCH]}) for i in range(0, len(fleet), BATCH)]
        for fleet in fleets
    ]

    async def validator(client: httpx.AsyncClient, ident: UUID, secret: str, batches: list[bytes]) -> None:
        for body in batches:
            headers = signed_headers(ident, secret, "POST", RIDES_PATH, body)
            answer = await client.post(
                RIDES_PATH, content=body, headers={**headers, "Content-Type": "application/json"}
            )
            answer.raise_for_status()

    async with httpx.AsyncClient(base_url=base_url, timeout=120.0) as client:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                validator(client, ident, secret, batches)
                for (ident, secret), batches in zip(validators, bodies, strict=True)
            )
        )
        return time.perf_counter() - started


async def prepare(base_url: str) -> str:
    admin = await asyncpg.connect(base_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    url = with_database(base_url, DATABASE)
    migrate.upgrade(url)
    return url


async def drop(base_url: str) -> None:
    admin = await asyncpg.connect(base_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    finally:
        await admin.close()


def bench(base_url: str, redis_url: str, rides: int, repeat: int, validators: int, work: Path) -> list[Run]:
    url = asyncio.run(prepare(base_url))
    env = server_env(url, redis_url, str(work))
    server = ServerProcess("granian", 1, env, work / "server.log")
    try:
        server.wait_ready()
        terminals = asyncio.run(register_validators(url, env, validators))
        fleets = make_rides(rides, validators)
        runs: list[Run] = []
        for _ in range(repeat):
            # alternate, so both see the same state of caches and of the machine
            asyncio.run(reset(url))
            seconds = asyncio.run(run_copy(url, fleets, terminals))
            runs.append(Run("bare COPY", round(seconds, 2), asyncio.run(count_rows(url))))
            asyncio.run(reset(url))
            seconds = asyncio.run(run_upload(server.base_url, fleets, terminals))
            runs.append(Run("POST /v1/terminals/rides", round(seconds, 2), asyncio.run(count_rows(url))))
        return runs
    finally:
        server.stop()
        asyncio.run(drop(base_url))


def report(runs: list[Run], rides: int, validators: int) -> str:
    methods = ["bare COPY", "POST /v1/terminals/rides"]
    median = {m: statistics.median(r.seconds for r in runs if r.method == m) for m in methods}
    ratio = median["POST /v1/terminals/rides"] / median["bare COPY"]
    lines = [
        "# Ride upload: `POST /v1/terminals/rides` against a bare COPY",
        "",
        f"{rides:,} rides into an empty `onecode_rides` (primary key, the unique (terminal, ride id) and the "
        f"(code id, counter) index). The upload: {validators} validators at once, each sending its rides in "
        f"signed batches of {BATCH:,} to one `tongban serve` process (granian, 1 worker); wall time from the "
        "first request to the last answer. The bare COPY: one binary COPY of the same rows from a client. "
        f"Median of the runs; both alternate on the same machine ({platform.machine()}, {os.cpu_count()} "
        "cores shared with other work).",
        "",
        "Per upload the server checks the signature and nonce (Redis), decodes and checks every ride, stages "
        "the rows with binary COPY, merges them with `INSERT ... ON CONFLICT DO NOTHING`, looks each "
        "(code id, counter) up for a use on another validator, and writes the fare job to the outbox, in one "
        "transaction.",
        "",
        "| method | runs (s) | median (s) | rides/s |",
        "|---|---|---:|---:|",
    ]
    for method in methods:
        seconds = [r.seconds for r in runs if r.method == method]
        lines.append(
            f"| {method} | {', '.join(f'{s:.2f}' for s in seconds)} | {median[method]:.2f} | "
            f"{rides / median[method]:,.0f} |"
        )
    verdict = "meets" if ratio <= 2 else "misses"
    lines += ["", f"Ratio upload ÷ COPY: **{ratio:.2f}x** ({verdict} the target of at most 2x)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rides", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--validators", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        embedded = ensure_stores(
            os.environ.get("TONGBAN_DATABASE_URL"),
            os.environ.get("TONGBAN_REDIS_URL"),
            str(Path(work) / "stores"),
        )
        try:
            assert embedded.database_url and embedded.redis_url
            runs = bench(
                embedded.database_url,
                embedded.redis_url,
                args.rides,
                args.repeat,
                args.validators,
                Path(work),
            )
        finally:
            embedded.stop()
    for run in runs:
        if run.rows_in_table != args.rides:
            raise SystemExit(f"{run.method} left {run.rows_in_table} rows, expected {args.rides}")
    text = report(runs, args.rides, args.validators)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rides_copy.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
