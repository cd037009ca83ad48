"""Bulk import cost: `tongban health import risk-areas` on a 1M-row file against a bare psql `\\copy` of the
same file into the same table (same columns, indexes and generated prefix). The command does more than the
copy (checks every row, stages it, merges with ON CONFLICT, finds the travellers inside the windows and
enqueues their recomputes, records the import); the target is at most 2x the bare copy.

    python -m bench.import_copy [--rows 1000000] [--repeat 3]

Writes bench/results/import_copy.md. Uses TONGBAN_DATABASE_URL's server (its own database
tongban_bench_import, dropped afterwards), or an embedded PostgreSQL when no URL is set. The import touches
no Redis; the command is still given TONGBAN_REDIS_URL when set.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from core import migrate
from core.embedded import ensure_stores

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
DATABASE = "tongban_bench_import"
ACCOUNTS = 10_000
TRIPS = 100_000


@dataclass
class Run:
    method: str
    seconds: float
    rows_in_table: int


def region_codes() -> list[str]:
    """About 3,300 plausible GB/T 2260 codes: provinces, their prefectures and counties."""
    provinces = [11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51]
    codes = []
    for province in provinces:
        codes.append(f"{province}0000")
        for prefecture in range(1, 13):
            codes.append(f"{province}{prefecture:02d}00")
            codes += [f"{province}{prefecture:02d}{county:02d}" for county in range(1, 11)]
    return codes


def write_file(path: Path, rows: int) -> int:
    """Risk-area rows, unique per (code, level, start): each code and level gets a run of daily windows."""
    rnd = random.Random(2260)
    codes = region_codes()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    levels = ("high", "medium", "low")
    written = 0
    with path.open("w", newline="") as file:
        out = csv.writer(file)
        out.writerow(["region_code", "level", "valid_from", "valid_to"])
        day = 0
        while written < rows:
            for code in codes:
                for level in levels:
                    if written == rows:
                        break
                    begins = start + timedelta(days=day, hours=rnd.randrange(24))
                    ends = (
                        ""
                        if rnd.random() < 0.2
                        else (begins + timedelta(days=rnd.randint(1, 14))).isoformat()
                    )
                    out.writerow([code, level, begins.isoformat(), ends])
                    written += 1
            day += 1
    return path.stat().st_size


async def seed_travellers(url: str) -> None:
    """Accounts with recent trips in the same regions, so the import's search for travellers has work."""
    conn = await asyncpg.connect(url)
    try:
        accounts = [uuid.uuid4() for _ in range(ACCOUNTS)]
        await conn.copy_records_to_table(
            "accounts",
            records=[(a, os.urandom(60), os.urandom(32), "138****0000") for a in accounts],
            columns=["id", "phone_enc", "phone_bidx", "phone_masked"],
        )
        rnd = random.Random(7)
        codes = [c for c in region_codes() if not c.endswith("00")]
        now = datetime.now(UTC)
        await conn.copy_records_to_table(
            "health_trips",
            records=[
                (
                    uuid.uuid4(),
                    rnd.choice(accounts),
                    rnd.choice(codes),
                    now - timedelta(minutes=rnd.randrange(20 * 1440)),
                )
                for _ in range(TRIPS)
            ],
            columns=["id", "account_id", "region_code", "at"],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def reset(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE health_risk_areas, outbox, health_imports")
        await conn.execute("VACUUM ANALYZE health_risk_areas")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM health_risk_areas"))
    finally:
        await conn.close()


def run_command(url: str, file: Path) -> float:
    env = {
        **os.environ,
        "TONGBAN_DATABASE_URL": url,
        "TONGBAN_REDIS_URL": os.environ.get("TONGBAN_REDIS_URL") or "redis://127.0.0.1:6379/0",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "scripts.cli", "health", "import", "risk-areas", str(file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"import failed: {done.stdout}{done.stderr}")
    return seconds


def run_psql(url: str, file: Path) -> float:
    command = (
        "\\copy health_risk_areas (region_code, level, valid_from, valid_to) "
        f"FROM '{file}' WITH (FORMAT csv, HEADER true)"
    )
    started = time.perf_counter()
    subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-c", command], check=True, capture_output=True
    )
    return time.perf_counter() - started


async def bench(base_url: str, rows: int, repeat: int, work: Path) -> tuple[list[Run], int]:
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
        await seed_travellers(url)
        file = work / "risk_areas.csv"
        size = write_file(file, rows)
        runs: list[Run] = []
        for _ in range(repeat):
            # alternate, so both see the same state of caches and of the machine
            for method, runner in (("psql \\copy", run_psql), ("tongban health import", run_command)):
                await reset(url)
                seconds = runner(url, file)
                runs.append(Run(method, round(seconds, 2), await count(url)))
        return runs, size
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.close()


def report(runs: list[Run], rows: int, size: int) -> str:
    methods = ["psql \\copy", "tongban health import"]
    median = {m: statistics.median(r.seconds for r in runs if r.method == m) for m in methods}
    ratio = median["tongban health import"] / median["psql \\copy"]
    lines = [
        "# Bulk import: `tongban health import risk-areas` against a bare `psql \\copy`",
        "",
        f"{rows:,} risk-area rows ({size / 1e6:.1f} MB of CSV) into an empty `health_risk_areas` (its unique "
        f"key, prefix index and generated prefix column), with {ACCOUNTS:,} accounts and {TRIPS:,} recent trips "
        "in the database. Wall time of each process, median of the runs; both alternate on the same machine "
        f"({platform.machine()}, {os.cpu_count()} cores shared with other work).",
        "",
        "The command checks every row in Python (a bad one stops it with its line number), stages the rows "
        "with binary COPY, merges them with `INSERT ... SELECT ... ON CONFLICT`, finds the travellers inside "
        "the imported windows and enqueues their recompute jobs, all in one transaction, and records the "
        "import. `\\copy` only loads.",
        "",
        "| method | runs (s) | median (s) | rows/s |",
        "|---|---|---:|---:|",
    ]
    for method in methods:
        seconds = [r.seconds for r in runs if r.method == method]
        lines.append(
            f"| {method} | {', '.join(f'{s:.2f}' for s in seconds)} | {median[method]:.2f} | "
            f"{rows / median[method]:,.0f} |"
        )
    verdict = "meets" if ratio <= 2 else "misses"
    lines += ["", f"Ratio command ÷ `\\copy`: **{ratio:.2f}x** ({verdict} the target of at most 2x)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    embedded = ensure_stores(os.environ.get("TONGBAN_DATABASE_URL"), "unused", ".tongban/bench")
    try:
        assert embedded.database_url
        with tempfile.TemporaryDirectory() as work:
            runs, size = asyncio.run(bench(embedded.database_url, args.rows, args.repeat, Path(work)))
    finally:
        embedded.stop()
    for run in runs:
        if run.rows_in_table != args.rows:
            raise SystemExit(f"{run.method} left {run.rows_in_table} rows, expected {args.rows}")
    text = report(runs, args.rows, size)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "import_copy.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
