"""Bench results: ratios to hello-world, pass/fail against targets, the markdown table, JSON, the chart and
the copy into docs/."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import msgspec

from bench.routes import HELLO

MARK_START = "<!-- bench:{name}:start -->"
MARK_END = "<!-- bench:{name}:end -->"


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    date: str
    cores: int
    cpu: str
    python: str
    platform: str
    wrk: str
    load_average: tuple[float, float, float] | None = None
    commit: str | None = None


class LoadParams(msgspec.Struct, frozen=True, kw_only=True):
    threads: int
    connections: int
    duration_s: int
    warmup_s: int
    timeout_s: int


class RouteResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    method: str
    path: str
    requests: int
    requests_per_sec: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    errors: int = 0
    target_ratio: float | None = None
    # hello's req/s measured right before this route (the machine's speed drifts over a run): the ratio's
    # base when set; None for hello itself and for older results.
    paired_hello: float | None = None
    ratio: float | None = None
    passed: bool | None = None


class ServerRun(msgspec.Struct, frozen=True, kw_only=True):
    server: str
    server_version: str
    workers: int
    routes: list[RouteResult]


class BenchReport(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    machine: Machine
    load: LoadParams
    runs: list[ServerRun]


def verdict(ratio: float | None, target: float | None, errors: int) -> bool | None:
    """None when there is no target; otherwise pass only with no errors and the ratio at or above target."""
    if target is None:
        return None
    return errors == 0 and ratio is not None and ratio >= target


def score(routes: list[RouteResult]) -> list[RouteResult]:
    """Each route's req/s as a fraction of hello's from the same server run (of the hello measured right
    before it, when there is one), and its verdict."""
    hello = next((route for route in routes if route.name == HELLO), None)
    if hello is None:
        raise ValueError("a bench run needs the hello route: every ratio is taken against it")
    run_base = hello.requests_per_sec if hello.errors == 0 else 0.0
    scored = []
    for route in routes:
        base = route.paired_hello if route.paired_hello is not None and run_base > 0 else run_base
        ratio = route.requests_per_sec / base if base > 0 else None
        scored.append(
            msgspec.structs.replace(
                route, ratio=ratio, passed=verdict(ratio, route.target_ratio, route.errors)
            )
        )
    return scored


def failures(report: BenchReport) -> list[str]:
    """One line per route that missed its target (or had errors while having one)."""
    return [
        f"{run.server} x{run.workers} {route.name}: ratio "
        + (f"{route.ratio:.2f}" if route.ratio is not None else "n/a")
        + f" < target {route.target_ratio:.2f}"
        + (f" ({route.errors} errors)" if route.errors else "")
        for run in report.runs
        for route in run.routes
        if route.passed is False and route.target_ratio is not None
    ]


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _result(passed: bool | None) -> str:
    return "—" if passed is None else ("pass" if passed else "**FAIL**")


def facts_line(report: BenchReport) -> str:
    machine, load = report.machine, report.load
    parts = [
        machine.date,
        f"{machine.cores} cores ({machine.cpu})",
        f"Python {machine.python}",
        machine.platform,
        f"{machine.wrk}: {load.threads} thread{'s' if load.threads != 1 else ''}, {load.connections} connections,"
        f" {load.duration_s} s per route after {load.warmup_s} s warm-up",
    ]
    if machine.load_average is not None:
        parts.append("load average at start " + " / ".join(f"{x:.2f}" for x in machine.load_average))
    if machine.commit:
        parts.append(f"commit {machine.commit}")
    return " · ".join(parts)


def render_table(report: BenchReport) -> str:
    lines = [
        "| server | workers | route | request | req/s | p50 ms | p99 ms | ratio to hello | target | result | errors |",
        "|---|--:|---|---|--:|--:|--:|--:|--:|---|--:|",
    ]
    for run in report.runs:
        for route in run.routes:
            cells = [
                f"{run.server} {run.server_version}",
                str(run.workers),
                route.name,
                f"`{route.method} {route.path}`",
                _count(route.requests_per_sec),
                _ms(route.p50_ms),
                _ms(route.p99_ms),
                f"{route.ratio:.2f}" if route.ratio is not None else "n/a",
                f"≥ {route.target_ratio:.2f}" if route.target_ratio is not None else "—",
                _result(route.passed),
                str(route.errors),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(report: BenchReport) -> str:
    return f"Run `{report.name}`: {facts_line(report)}\n\n{render_table(report)}\n"


def encode_json(report: BenchReport) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"


def decode_json(data: bytes) -> BenchReport:
    return msgspec.json.decode(data, type=BenchReport)


def render_chart(report: BenchReport, path: Path) -> None:
    """Req/s per route (ratio to hello on each bar) and p50/p99 latency, one colour per server run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(route.name for run in report.runs for route in run.routes))
    labels = [f"{run.server} x{run.workers}" for run in report.runs]
    width = 0.8 / max(1, len(report.runs))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(7.0, 1.6 * len(names) * max(1, len(labels)) ** 0.5), 7.5)
    )
    for index, (run, label) in enumerate(zip(report.runs, labels, strict=True)):
        by_name = {route.name: route for route in run.routes}
        xs = [i + (index - (len(report.runs) - 1) / 2) * width for i in range(len(names))]
        rps = [by_name[n].requests_per_sec if n in by_name else 0.0 for n in names]
        bars = top.bar(xs, rps, width, label=label)
        for bar, name in zip(bars, names, strict=True):
            route = by_name.get(name)
            if route is not None and route.ratio is not None:
                mark = "" if route.passed is None else (" ✓" if route.passed else " ✗")
                top.annotate(
                    f"{route.ratio:.2f}{mark}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        p99 = [by_name[n].p99_ms if n in by_name else 0.0 for n in names]
        p50 = [by_name[n].p50_ms if n in by_name else 0.0 for n in names]
        color = bars.patches[0].get_facecolor() if bars.patches else None
        bottom.bar(xs, p99, width, color=color, alpha=0.45, label=f"{label} p99")
        bottom.bar(xs, p50, width * 0.5, color=color, label=f"{label} p50")
    for axis in (top, bottom):
        axis.set_xticks(range(len(names)), names)
        axis.grid(axis="y", alpha=0.3)
    top.set_ylabel("requests / s")
    top.set_title("Throughput (label: ratio to hello in the same run)")
    top.legend(fontsize=8)
    top.margins(y=0.15)
    bottom.set_ylabel("latency ms")
    bottom.set_title("Latency: p50 (narrow) and p99 (wide)")
    bottom.legend(fontsize=7, ncol=2)
    fig.suptitle(f"tongban bench `{report.name}` · {report.machine.date}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def splice(document: str, name: str, block: str) -> str | None:
    """The document with `block` between the run's markers, or None when the markers are not there."""
    start, end = MARK_START.format(name=name), MARK_END.format(name=name)
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document) is None:
        return None
    return pattern.sub(lambda _match: f"{start}\n{block.strip()}\n{end}", document, count=1)


def write(report: BenchReport, results_dir: Path, docs_dir: Path | None) -> list[Path]:
    """bench/results/<name>.{md,json,png}; with docs_dir, the table into docs/benchmarks.md between the
    run's markers and the chart to docs/img/bench-<name>.png. Returns the files written."""
    results_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    written = []
    for suffix, data in ((".md", markdown.encode()), (".json", encode_json(report))):
        target = results_dir / f"{report.name}{suffix}"
        target.write_bytes(data)
        written.append(target)
    chart = results_dir / f"{report.name}.png"
    render_chart(report, chart)
    written.append(chart)
    if docs_dir is not None:
        doc = docs_dir / "benchmarks.md"
        spliced = splice(doc.read_text(), report.name, markdown) if doc.exists() else None
        if spliced is not None:
            doc.write_text(spliced)
            written.append(doc)
            image = docs_dir / "img" / f"bench-{report.name}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(chart, image)
            written.append(image)
    return written
