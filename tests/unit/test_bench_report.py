"""Ratios to hello-world, verdicts against targets, the markdown table, the files and the docs splice."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import report
from bench.report import BenchReport, LoadParams, Machine, RouteResult, ServerRun

MACHINE = Machine(
    date="2025-01-02 03:04 UTC",
    cores=2,
    cpu="Test CPU",
    python="3.11.9",
    platform="Linux 6.1",
    wrk="wrk 4.1.0 [epoll]",
    load_average=(0.5, 0.25, 0.125),
    commit="abc1234",
)
LOAD = LoadParams(threads=1, connections=64, duration_s=10, warmup_s=3, timeout_s=5)


def row(
    name: str, rps: float, *, target: float | None = None, errors: int = 0, p50: float = 1.0
) -> RouteResult:
    return RouteResult(
        name=name,
        method="GET",
        path=f"/v1/bench/{name}",
        requests=int(rps * 10),
        requests_per_sec=rps,
        p50_ms=p50,
        p75_ms=p50 * 1.5,
        p90_ms=p50 * 2,
        p99_ms=p50 * 4,
        errors=errors,
        target_ratio=target,
    )


def bench(*routes: RouteResult, server: str = "granian", workers: int = 1) -> BenchReport:
    run = ServerRun(server=server, server_version="2.8.7", workers=workers, routes=report.score(list(routes)))
    return BenchReport(name="latest", machine=MACHINE, load=LOAD, runs=[run])


@pytest.mark.parametrize(
    ("ratio", "target", "errors", "expected"),
    [
        (0.2, None, 0, None),
        (0.2, None, 5, None),
        (0.6, 0.5, 0, True),
        (0.5, 0.5, 0, True),
        (0.49, 0.5, 0, False),
        (0.9, 0.5, 1, False),
        (None, 0.5, 0, False),
    ],
)
def test_verdict(ratio: float | None, target: float | None, errors: int, expected: bool | None) -> None:
    assert report.verdict(ratio, target, errors) is expected


def test_ratios_are_taken_against_hello_from_the_same_run() -> None:
    scored = report.score([row("hello", 8000), row("db", 2000, target=0.2), row("redis", 3000, target=0.5)])
    by_name = {r.name: r for r in scored}
    assert by_name["hello"].ratio == 1.0 and by_name["hello"].passed is None
    assert by_name["db"].ratio == pytest.approx(0.25) and by_name["db"].passed is True
    assert by_name["redis"].ratio == pytest.approx(0.375) and by_name["redis"].passed is False


def test_a_route_is_scored_against_the_hello_measured_right_before_it() -> None:
    paired = msgspec.structs.replace(row("scan", 1800, target=0.35), paired_hello=5000)
    scored = report.score([row("hello", 5400), paired, row("db", 1350)])
    assert [route.ratio for route in scored] == [1.0, 0.36, 0.25]
    assert scored[1].passed is True  # against the run's hello (5400) it would be 0.33: a fail


@given(
    st.floats(min_value=1, max_value=1e6, allow_nan=False),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.floats(min_value=0.01, max_value=1.5, allow_nan=False),
)
def test_a_route_passes_exactly_when_its_rate_reaches_target_times_hello(
    hello: float, rps: float, target: float
) -> None:
    scored = report.score([row("hello", hello), row("path", rps, target=target)])[1]
    assert scored.ratio == pytest.approx(rps / hello)
    assert scored.passed is (rps / hello >= target)


def test_a_run_without_hello_cannot_be_scored() -> None:
    with pytest.raises(ValueError, match="hello"):
        report.score([row("db", 100)])


def test_hello_with_errors_gives_no_ratio_and_fails_every_target() -> None:
    scored = report.score([row("hello", 9000, errors=3), row("db", 100, target=0.1), row("redis", 100)])
    assert [r.ratio for r in scored] == [None, None, None]
    assert [r.passed for r in scored] == [None, False, None]


def test_the_table_shows_numbers_ratio_target_and_result() -> None:
    result = bench(
        row("hello", 12345.6, p50=3.456), row("db", 6172.8, target=0.4), row("redis", 1234.5, target=0.5)
    )
    lines = report.render_table(result).splitlines()
    assert lines[0].startswith("| server | workers | route |") and "ratio to hello" in lines[0]
    assert (
        lines[2]
        == "| granian 2.8.7 | 1 | hello | `GET /v1/bench/hello` | 12,346 | 3.46 | 13.82 | 1.00 | — | — | 0 |"
    )
    assert lines[3].endswith("| 6,173 | 1.00 | 4.00 | 0.50 | ≥ 0.40 | pass | 0 |")
    assert lines[4].endswith("| 1,234 | 1.00 | 4.00 | 0.10 | ≥ 0.50 | **FAIL** | 0 |")
    assert report.failures(result) == ["granian x1 redis: ratio 0.10 < target 0.50"]


def test_the_markdown_names_the_machine_and_the_load() -> None:
    text = report.render_markdown(bench(row("hello", 100)))
    for fact in (
        "2 cores (Test CPU)",
        "Python 3.11.9",
        "wrk 4.1.0 [epoll]: 1 thread, 64 connections",
        "10 s per route after 3 s warm-up",
        "load average at start 0.50 / 0.25 / 0.12",
        "commit abc1234",
    ):
        assert fact in text


def test_errors_and_missing_ratios_show_in_the_table() -> None:
    result = bench(row("hello", 100, errors=2), row("db", 50, target=0.3))
    lines = report.render_table(result).splitlines()
    assert lines[2].endswith("| n/a | — | — | 2 |")
    assert lines[3].endswith("| n/a | ≥ 0.30 | **FAIL** | 0 |")
    assert report.failures(result) == ["granian x1 db: ratio n/a < target 0.30"]


def test_splice_replaces_only_between_its_own_markers() -> None:
    doc = (
        "intro\n<!-- bench:latest:start -->\nold\n<!-- bench:latest:end -->\nmiddle\n"
        "<!-- bench:servers:start -->\nkeep\n<!-- bench:servers:end -->\n"
    )
    once = report.splice(doc, "latest", "| new |\n")
    assert once == doc.replace("\nold\n", "\n| new |\n")
    assert report.splice(once, "latest", "| new |") == once
    assert report.splice(doc, "other", "x") is None


def test_write_makes_results_and_updates_the_docs(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmarks.md").write_text(
        "# B\n<!-- bench:latest:start -->\n<!-- bench:latest:end -->\n![c](img/bench-latest.png)\n"
    )
    result = bench(row("hello", 9000), row("db", 4000, target=0.3))
    written = report.write(result, tmp_path / "results", docs)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    assert names == [
        "docs/benchmarks.md",
        "docs/img/bench-latest.png",
        "results/latest.json",
        "results/latest.md",
        "results/latest.png",
    ]
    assert (tmp_path / "results/latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (docs / "img/bench-latest.png").read_bytes() == (tmp_path / "results/latest.png").read_bytes()
    assert report.decode_json((tmp_path / "results/latest.json").read_bytes()) == result
    assert report.render_table(result) in (docs / "benchmarks.md").read_text()
    assert (docs / "benchmarks.md").read_text().endswith("![c](img/bench-latest.png)\n")


def test_write_leaves_docs_alone_without_markers(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmarks.md").write_text("# no markers\n")
    result = BenchReport(name="servers", machine=MACHINE, load=LOAD, runs=bench(row("hello", 1)).runs)
    written = report.write(result, tmp_path / "results", docs)
    assert all(p.parent.name == "results" for p in written)
    assert (docs / "benchmarks.md").read_text() == "# no markers\n"
