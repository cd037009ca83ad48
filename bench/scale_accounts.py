"""Scale check for accounts: lookups by phone and by ID-number blind index must stay as fast at 1M accounts
as at 10k. Rows are loaded with COPY (what an import of a province's accounts would do); each lookup is the
exact query the login and the real-name paths run, through the same unique indexes.

    python -m bench.scale_accounts [--rows 1000000] [--probes 2000]

Writes bench/results/accounts_scale.md and .json. Uses TONGBAN_DATABASE_URL's server (its own database
tongban_scale, dropped afterwards), or an embedded PostgreSQL when no URL is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg

from core import migrate
from core.embedded import ensure_stores

RESULTS = Path(__file__).resolve().parent / "results"
DATABASE = "tongban_scale"
BATCH = 50_000


@dataclass
class Measure:
    rows: int
    lookup: str
    probes: int
    mean_us: float
    p50_us: float
    p99_us: float


def _rows(count: int) -> list[tuple[uuid.UUID, bytes, bytes, str, bytes | None, int]]:
    rows = []
    for _ in range(count):
        # Ciphertext is opaque bytes to PostgreSQL: random bytes of the real size stand in for it.
        has_id = os.urandom(1)[0] < 200
        rows.append(
            (
                uuid.uuid4(),
                os.urandom(60),
                os.urandom(32),
                "138****0000",
                os.urandom(32) if has_id else None,
                2 if has_id else 1,
            )
        )
    return rows


async def _load(conn: asyncpg.Connection, count: int) -> float:
    started = time.perf_counter()
    done = 0
    while done < count:
        n = min(BATCH, count - done)
        await conn.copy_records_to_table(
            "accounts",
            records=_rows(n),
            columns=["id", "phone_enc", "phone_bidx", "phone_masked", "id_number_bidx", "level"],
        )
        done += n
    return time.perf_counter() - started


async def _probe(conn: asyncpg.Connection, rows: int, column: str, probes: int) -> Measure:
    keys = [
        r[0]
        for r in await conn.fetch(
            f"SELECT {column} FROM accounts TABLESAMPLE SYSTEM (50) WHERE {column} IS NOT NULL LIMIT $1",  # noqa: S608
            probes,
        )
    ]
    statement = await conn.prepare(f"SELECT id, status, level FROM accounts WHERE {column} = $1")  # noqa: S608
    for key in keys[:100]:  # warm the cache and the plan
        await statement.fetchrow(key)
    timings = []
    for key in keys:
        started = time.perf_counter_ns()
        assert await statement.fetchrow(key) is not None
        timings.append((time.perf_counter_ns() - started) / 1000)
    timings.sort()
    return Measure(
        rows=rows,
        lookup=column,
        probes=len(timings),
        mean_us=round(statistics.fmean(timings), 1),
        p50_us=round(timings[len(timings) // 2], 1),
        p99_us=round(timings[int(len(timings) * 0.99) - 1], 1),
    )


async def run(base_url: str, total: int, probes: int) -> tuple[list[Measure], float]:
    admin = await asyncpg.connect(base_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    url = (
        base_url.rsplit("/", 1)[0]
        + "/"
        + DATABASE
        + (("?" + base_url.split("?", 1)[1]) if "?" in base_url else "")
    )
    try:
        migrate.upgrade(url)
        conn = await asyncpg.connect(url)
        try:
            measures: list[Measure] = []
            await _load(conn, 10_000)
            await conn.execute("ANALYZE accounts")
            for column in ("phone_bidx", "id_number_bidx"):
                measures.append(await _probe(conn, 10_000, column, probes))
            load_seconds = await _load(conn, total - 10_000)
            await conn.execute("ANALYZE accounts")
            for column in ("phone_bidx", "id_number_bidx"):
                measures.append(await _probe(conn, total, column, probes))
            return measures, load_seconds
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.close()


def report(measures: list[Measure], total: int, load_seconds: float) -> str:
    lines = [
        "# Accounts at scale: lookup by blind index",
        "",
        f"{total:,} accounts loaded with COPY in {load_seconds:.1f} s "
        f"({(total - 10_000) / load_seconds:,.0f} rows/s). Each lookup is the login / real-name query through its "
        "unique index, timed from the client (one connection, prepared statement, loopback).",
        "",
        "| accounts | lookup | probes | mean µs | p50 µs | p99 µs |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {m.rows:,} | {m.lookup} | {m.probes} | {m.mean_us} | {m.p50_us} | {m.p99_us} |" for m in measures
    ]
    small = {m.lookup: m for m in measures if m.rows == 10_000}
    large = {m.lookup: m for m in measures if m.rows == total}
    lines += ["", "| lookup | p50 at 1M ÷ p50 at 10k |", "|---|---:|"]
    lines += [f"| {k} | {large[k].p50_us / small[k].p50_us:.2f} |" for k in small]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=2000)
    args = parser.parse_args()
    embedded = ensure_stores(os.environ.get("TONGBAN_DATABASE_URL"), "unused", ".tongban/bench")
    try:
        assert embedded.database_url
        measures, load_seconds = asyncio.run(run(embedded.database_url, args.rows, args.probes))
    finally:
        embedded.stop()
    text = report(measures, args.rows, load_seconds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "accounts_scale.md").write_text(text)
    (RESULTS / "accounts_scale.json").write_text(
        json.dumps(
            {"rows": args.rows, "load_seconds": load_seconds, "measures": [asdict(m) for m in measures]},
            indent=2,
        )
    )
    print(text)


if __name__ == "__main__":
    main()
