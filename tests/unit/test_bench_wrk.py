"""Reading wrk's report, its time units, the loopback-only guard, finding wrk, and the request Lua script."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import wrk
from bench.routes import LUA_DIR, BenchRoute

SAMPLE = """\
Running 10s test @ http://127.0.0.1:8000/v1/bench/db
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    21.40ms   12.96ms   1.02s    88.12%
    Req/Sec     3.01k   402.11     3.72k    71.00%
  Latency Distribution
     50%  812.00us
     75%   24.41ms
     90%    1.20s
     99%    1.05m
  29987 requests in 10.01s, 4.98MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 17
Requests/sec:   2995.70
Transfer/sec:    509.42KB
"""


def wrk_format_time_us(n: float) -> str:
    """wrk's own formatter (units.c: format_time_us / format_units), to produce what wrk would print."""
    scale, base, units = 1000.0, "us", ["ms", "s"]
    if n >= 1_000_000.0:
        n /= 1_000_000.0
        scale, base, units = 60.0, "s", ["m", "h"]
    unit, i = base, 0
    while i + 1 < len(units) and n >= scale * 0.85:
        n /= scale
        unit = units[i]
        i += 1
    return f"{n:.2f}{unit}"


def report_with(latencies: dict[int, str], rps: str = "1234.50") -> str:
    lines = ["Running 1s test @ http://127.0.0.1:1/", "  Latency Distribution"]
    lines += [f"{p:>6}%{text:>10}" for p, text in latencies.items()]
    lines += [
        "  1234 requests in 1.00s, 1.00MB read",
        f"Requests/sec: {rps:>10}",
        "Transfer/sec:      1.00MB",
    ]
    return "\n".join(lines) + "\n"


def test_a_full_report_is_read_with_each_unit_and_every_error_counted() -> None:
    result = wrk.parse_output(SAMPLE)
    assert result.requests == 29987
    assert result.duration_s == pytest.approx(10.01)
    assert result.requests_per_sec == pytest.approx(2995.70)
    assert result.p50_ms == pytest.approx(0.812)
    assert result.p75_ms == pytest.approx(24.41)
    assert result.p90_ms == pytest.approx(1200.0)
    assert result.p99_ms == pytest.approx(63_000.0)
    assert (result.socket_errors, result.non_2xx, result.errors) == (10, 17, 27)


def test_a_clean_report_has_no_errors() -> None:
    clean = "\n".join(line for line in SAMPLE.splitlines() if "errors" not in line and "Non-2xx" not in line)
    assert wrk.parse_output(clean).errors == 0


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0.00us", 0.0),
        ("812.00us", 0.812),
        ("3.20ms", 3.2),
        ("1.05s", 1050.0),
        ("2.50m", 150_000.0),
        ("1.00h", 3_600_000.0),
    ],
)
def test_each_time_unit_becomes_milliseconds(text: str, ms: float) -> None:
    assert wrk.parse_time_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "12", "3.2 ms", "1.0ns", "abc", "-1.00ms"])
def test_what_is_not_a_wrk_time_is_refused(text: str) -> None:
    with pytest.raises(wrk.WrkError):
        wrk.parse_time_ms(text)


@given(st.integers(min_value=0, max_value=10_000_000_000))
def test_any_time_wrk_prints_reads_back_within_its_rounding(n_us: int) -> None:
    printed = wrk_format_time_us(n_us)
    unit_ms = wrk.TIME_UNITS_MS[printed.lstrip("0123456789.")]
    assert abs(wrk.parse_time_ms(printed) - n_us / 1000) <= 0.005 * unit_ms + 1e-9


@given(
    st.lists(st.integers(min_value=0, max_value=5_000_000_000), min_size=4, max_size=4),
    st.floats(min_value=0, max_value=10_000_000, allow_nan=False),
)
def test_the_latency_distribution_fills_the_right_percentiles(values_us: list[int], rps: float) -> None:
    values_us = sorted(values_us)
    printed = dict(zip((50, 75, 90, 99), (wrk_format_time_us(v) for v in values_us), strict=True))
    result = wrk.parse_output(report_with(printed, rps=f"{rps:.2f}"))
    got = (result.p50_ms, result.p75_ms, result.p90_ms, result.p99_ms)
    assert got == tuple(wrk.parse_time_ms(text) for text in printed.values())
    assert result.requests_per_sec == pytest.approx(float(f"{rps:.2f}"))


def test_a_report_without_the_latency_distribution_is_refused() -> None:
    without = SAMPLE.replace("  Latency Distribution\n", "")
    with pytest.raises(wrk.WrkError, match="--latency"):
        wrk.parse_output(without)


def test_a_report_missing_a_percentile_is_refused() -> None:
    with pytest.raises(wrk.WrkError, match="99%"):
        wrk.parse_output(report_with({50: "1.00ms", 75: "2.00ms", 90: "3.00ms"}))


def test_a_report_without_requests_per_second_is_refused() -> None:
    with pytest.raises(wrk.WrkError, match="Requests/sec"):
        wrk.parse_output(SAMPLE.replace("Requests/sec:   2995.70", ""))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/", "http://127.0.0.9:1/x", "http://localhost:80/", "http://[::1]:8000/"]
)
def test_loopback_targets_are_allowed(url: str) -> None:
    args = wrk.command("wrk", url, threads=1, connections=8, duration_s=2, timeout_s=5)
    assert args[-1] == url and "--latency" in args and "-d2s" in args


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8000/",
        "http://192.168.1.2/",
        "http://203.0.113.7/",
        "http://example.com/",
        "http://0.0.0.0/",
    ],
)
def test_anything_but_loopback_is_refused(url: str) -> None:
    with pytest.raises(wrk.WrkError, match="loopback"):
        wrk.command("wrk", url, threads=1, connections=8, duration_s=2, timeout_s=5)


def test_fewer_connections_than_threads_is_refused() -> None:
    with pytest.raises(wrk.WrkError):
        wrk.command("wrk", "http://127.0.0.1:1/", threads=4, connections=2, duration_s=2, timeout_s=5)


def test_without_wrk_and_without_root_the_message_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(wrk.WrkError, match="apt-get install -y wrk"):
        wrk.ensure(say=lambda _line: None)


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None, str | None, bytes]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append(
            (
                self.command,
                self.headers.get("Authorization"),
                self.headers.get("Content-Type"),
                self.rfile.read(length),
            )
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/x"
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (tongban bench installs it)")
def test_the_request_script_sends_method_body_and_token_from_the_environment(recorder: str) -> None:
    route = BenchRoute("x", "POST", "/v1/x")
    assert route.script_path() == LUA_DIR / "request.lua"
    binary = shutil.which("wrk")
    assert binary is not None
    args = wrk.command(
        binary, recorder, threads=1, connections=1, duration_s=1, timeout_s=2, script=route.script_path()
    )
    env = {"BENCH_METHOD": "POST", "BENCH_BODY": '{"a": 1}', "BENCH_TOKEN": "t0k"}
    result = wrk.parse_output(wrk.run(args, duration_s=1, env=env))
    assert result.requests > 0 and result.non_2xx == 0
    assert _Recorder.seen[0] == ("POST", "Bearer t0k", "application/json", b'{"a": 1}')
