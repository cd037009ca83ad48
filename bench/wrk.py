"""wrk, the load generator: find it (or install it from Debian's packages), build its command line, read
its report."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

INSTALL_HINT = "install it with `sudo apt-get install -y wrk` (Debian/Ubuntu) and run the bench again"

# wrk prints times as "%.2f" plus one of these units (units.c: us, ms, s, m, h).
TIME_UNITS_MS: dict[str, float] = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"(\d+(?:\.\d+)?)(us|ms|s|m|h)"
_TIME_RE = re.compile(rf"^{_TIME}$")
_PERCENTILE_RE = re.compile(rf"^\s*(\d+(?:\.\d+)?)%\s+{_TIME}\s*$")
_RPS_RE = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)\s*$", re.MULTILINE)
_TOTAL_RE = re.compile(rf"^\s*(\d+) requests in {_TIME},", re.MULTILINE)
_SOCKET_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE)
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.MULTILINE)


class WrkError(Exception):
    """wrk is missing, failed, or printed something we cannot read."""


class WrkResult(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    duration_s: float
    requests_per_sec: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: int = 0

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def parse_time_ms(text: str) -> float:
    """'812.00us' -> 0.812, '3.20ms' -> 3.2, '1.05s' -> 1050.0 (milliseconds)."""
    match = _TIME_RE.match(text.strip())
    if match is None:
        raise WrkError(f"not a wrk time: {text!r}")
    return float(match.group(1)) * TIME_UNITS_MS[match.group(2)]


def parse_output(output: str) -> WrkResult:
    """Read a `wrk --latency` report: totals, Requests/sec, the latency distribution and the error lines."""
    rps = _RPS_RE.search(output)
    total = _TOTAL_RE.search(output)
    if rps is None or total is None:
        raise WrkError("wrk output has no 'Requests/sec' or 'requests in' line")
    percentiles: dict[float, float] = {}
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Latency Distribution")
    except StopIteration:
        raise WrkError("wrk output has no latency distribution (run wrk with --latency)") from None
    for line in lines[start + 1 :]:
        match = _PERCENTILE_RE.match(line)
        if match is None:
            break
        percentiles[float(match.group(1))] = float(match.group(2)) * TIME_UNITS_MS[match.group(3)]
    missing = [p for p in (50.0, 75.0, 90.0, 99.0) if p not in percentiles]
    if missing:
        raise WrkError(f"wrk latency distribution lacks {', '.join(f'{p:g}%' for p in missing)}")
    socket = _SOCKET_RE.search(output)
    non_2xx = _NON_2XX_RE.search(output)
    return WrkResult(
        requests=int(total.group(1)),
        duration_s=float(total.group(2)) * TIME_UNITS_MS[total.group(3)] / 1000.0,
        requests_per_sec=float(rps.group(1)),
        p50_ms=percentiles[50.0],
        p75_ms=percentiles[75.0],
        p90_ms=percentiles[90.0],
        p99_ms=percentiles[99.0],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket.groups()) if socket else 0,
    )


def require_loopback(url: str) -> None:
    """Load goes only to this machine: refuse any URL whose host is not a loopback address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise WrkError(f"refusing to send load to {host or url!r}: the bench only targets loopback addresses")


def command(
    wrk: str,
    url: str,
    *,
    threads: int,
    connections: int,
    duration_s: int,
    timeout_s: int,
    script: Path | None = None,
) -> list[str]:
    require_loopback(url)
    if threads < 1 or connections < threads:
        raise WrkError("wrk needs at least one thread and at least as many connections as threads")
    if duration_s < 1:
        raise WrkError("wrk needs a duration of at least 1 second")
    args = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={timeout_s}s",
        "--latency",
    ]
    if script is not None:
        args += ["-s", str(script)]
    return [*args, url]


def run(args: list[str], *, duration_s: int, env: dict[str, str] | None = None) -> str:
    """Run wrk to completion (bounded: its own duration plus a margin) and return its report."""
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=duration_s + 30, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {duration_s + 30}s") from None
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {(done.stderr or done.stdout).strip()[:500]}")
    return done.stdout


def version(wrk: str) -> str:
    """'wrk 4.1.0 [epoll]' (wrk -v prints it and exits 1)."""
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


def ensure(*, say: Callable[[str], None] = print) -> str:
    """The wrk binary: from PATH, else installed with apt-get when running as root, else a clear stop."""
    found = shutil.which("wrk")
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise WrkError(f"wrk is not installed: {INSTALL_HINT}")
    say("wrk is not installed: installing it with apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    try:
        if subprocess.run(install, env=env, timeout=600, check=False, capture_output=True).returncode != 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(
                ["apt-get", "update", "-q"], env=env, timeout=600, check=False, capture_output=True
            )
            subprocess.run(install, env=env, timeout=600, check=False, capture_output=True)
    except subprocess.TimeoutExpired:
        pass
    found = shutil.which("wrk")
    if not found:
        raise WrkError(f"wrk could not be installed with apt-get: {INSTALL_HINT}")
    return found
