"""The whole harness, briefly: real stores, a real `tongban serve`, real wrk, results and docs written."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from bench import report, runner
from bench.routes import ROUTES, BenchRoute, SetupContext, select_routes

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk not installed (tongban bench installs it)"
)


async def _drop(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run_bench(
    tmp_path: Path, base_database_url: str, routes: list[BenchRoute], docs: Path | None
) -> report.BenchReport:
    name = f"tb_{os.environ['TONGBAN_TEST_RUN']}_bench"
    options = runner.BenchOptions(
        routes=routes,
        duration_s=1,
        warmup_s=0,
        connections=8,
        name="smoke",
        results_dir=tmp_path / "results",
        docs_dir=docs,
        database_name=name,
    )
    try:
        return runner.run(
            options,
            database_url=base_database_url,
            redis_url=os.environ["TONGBAN_REDIS_URL"],
            data_dir=str(tmp_path / "data"),
            say=lambda _line: None,
        )
    finally:
        asyncio.run(_drop(base_database_url, name))


@pytest.mark.e2e
@pytest.mark.timeout(180)
@needs_wrk
def test_a_short_bench_measures_every_route_against_hello(tmp_path: Path, base_database_url: str) -> None:
    seen: list[tuple[int, str]] = []

    async def hook(ctx: SetupContext) -> dict[str, str]:
        database = urlsplit(ctx.database_url).path.lstrip("/")  # also right for socket URLs (?host=/dir)
        seen.append(((await ctx.client.get("/readyz")).status_code, database))
        return {"BENCH_TOKEN": "not-checked-by-hello"}

    hooked = BenchRoute("hooked", "GET", "/v1/bench/hello", setup=hook)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmarks.md").write_text("<!-- bench:smoke:start -->\n<!-- bench:smoke:end -->\n")
    result = run_bench(tmp_path, base_database_url, [*select_routes(None), hooked], docs)
    [run] = result.runs
    assert (run.server, run.workers) == ("granian", 1)
    assert [r.name for r in run.routes] == [*(r.name for r in ROUTES), "hooked"]
    assert seen == [(200, f"tb_{os.environ['TONGBAN_TEST_RUN']}_bench")]
    for route in run.routes:
        assert route.requests > 0 and route.errors == 0, route
        assert route.p50_ms <= route.p99_ms
    assert run.routes[0].ratio == 1.0
    assert all(r.ratio is not None and r.ratio > 0 for r in run.routes)
    assert result.machine.cores == os.cpu_count() and result.load.connections == 8
    written = report.write(result, tmp_path / "results", docs)
    assert report.render_table(result) in (docs / "benchmarks.md").read_text()
    assert {p.name for p in written} >= {"smoke.md", "smoke.json", "smoke.png", "bench-smoke.png"}
    assert (tmp_path / "results/raw/smoke-granian-w1-db.txt").read_text().startswith("Running 1s test")


@pytest.mark.e2e
@pytest.mark.timeout(120)
@needs_wrk
def test_a_failing_setup_hook_stops_the_run_naming_the_route(tmp_path: Path, base_database_url: str) -> None:
    async def hook(_ctx: SetupContext) -> dict[str, str]:
        raise RuntimeError("no bench citizen")

    routes = [*select_routes(["hello"]), BenchRoute("broken", "POST", "/v1/bench/nothing", setup=hook)]
    with pytest.raises(
        runner.BenchError, match="setup for route broken failed: RuntimeError: no bench citizen"
    ):
        run_bench(tmp_path, base_database_url, routes, None)
