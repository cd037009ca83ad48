"""`tongban bench`: load every hot path with wrk against a real server and compare it with hello-world."""

from __future__ import annotations

import typer

from scripts.common import console, fail, load_settings

app = typer.Typer(help="Load benchmarks (wrk) of the hot paths against hello-world, same run.")

SERVERS = ("granian", "uvicorn")


def parse_workers(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"--workers: expected a number or a comma list such as 1,2, got {text!r}", 2)
    if not counts or any(count < 1 or count > 64 for count in counts):
        fail(f"--workers: each count must be between 1 and 64, got {text!r}", 2)
    return list(dict.fromkeys(counts))


def parse_servers(text: str) -> list[str]:
    if text == "both":
        return list(SERVERS)
    if text not in SERVERS:
        fail(f"--server: expected granian, uvicorn or both, got {text!r}", 2)
    return [text]


@app.callback(invoke_without_command=True)
def bench(
    workers: str | None = typer.Option(
        None, help="worker processes; a comma list (1,2) runs each count (default: TONGBAN_WORKERS)"
    ),
    duration: int = typer.Option(10, min=1, max=600, help="seconds measured per route"),
    warmup: int = typer.Option(3, min=0, max=120, help="seconds of load per route before measuring"),
    connections: int = typer.Option(64, min=1, max=10_000, help="wrk open connections"),
    threads: int = typer.Option(1, min=1, max=64, help="wrk threads"),
    server: str | None = typer.Option(None, help="granian, uvicorn or both (default: TONGBAN_SERVER)"),
    routes: str | None = typer.Option(
        None, help="comma list of route names (hello is always run); default all"
    ),
    name: str = typer.Option(
        "latest", help="results name: bench/results/NAME.{md,json,png} and docs markers"
    ),
    docs: bool = typer.Option(True, help="copy the table and chart into docs/"),
) -> None:
    """Start `tongban serve` with the bench routes, load each route with wrk, report req/s, p50, p99 and
    the ratio to hello-world; write bench/results/NAME.{md,json,png} and update docs/benchmarks.md."""
    from bench import report as bench_report
    from bench import runner
    from bench.routes import select_routes
    from bench.wrk import WrkError

    settings = load_settings()
    if threads > connections:
        fail("--connections must be at least --threads", 2)
    if not name.replace("-", "").replace("_", "").isalnum():
        fail(f"--name: letters, digits, '-' and '_' only, got {name!r}", 2)
    try:
        chosen = select_routes(routes.split(",") if routes else None)
    except ValueError as exc:
        fail(f"--routes: {exc}", 2)
    options = runner.BenchOptions(
        routes=chosen,
        servers=parse_servers(server or settings.server),
        workers=parse_workers(workers or str(settings.workers)),
        duration_s=duration,
        warmup_s=warmup,
        connections=connections,
        threads=threads,
        name=name,
        docs_dir=runner.DOCS_DIR if docs else None,
    )
    try:
        result = runner.run(
            options,
            database_url=settings.database_url,
            redis_url=settings.redis_url,
            data_dir=settings.data_dir,
            say=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
        )
    except (WrkError, runner.BenchError) as exc:
        fail(str(exc))
    for path in bench_report.write(result, options.results_dir, options.docs_dir):
        console.print(f"wrote {path.relative_to(runner.ROOT)}", highlight=False)
    console.print(bench_report.render_table(result), markup=False, highlight=False, soft_wrap=True)
    missed = bench_report.failures(result)
    if missed:
        fail("below target: " + "; ".join(missed))
