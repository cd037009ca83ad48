"""The bench run: stores ready, then for each server and worker count start `tongban serve` with the bench
routes, warm up and measure every route with wrk against that one process, and score against hello."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec

from bench import wrk
from bench.report import BenchReport, LoadParams, Machine, RouteResult, ServerRun, score
from bench.routes import HELLO, BenchRoute, SetupContext
from core import migrate
from core.embedded import ensure_stores

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
DOCS_DIR = ROOT / "docs"
BENCH_DATABASE = "tongban_bench"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
WRK_TIMEOUT_S = 5


class BenchError(Exception):
    """The run cannot go on; the message says why and what to do."""


@dataclass
class BenchOptions:
    routes: list[BenchRoute]
    servers: list[str] = field(default_factory=lambda: ["granian"])
    workers: list[int] = field(default_factory=lambda: [1])
    duration_s: int = 10
    warmup_s: int = 3
    connections: int = 64
    threads: int = 1
    name: str = "latest"
    results_dir: Path = RESULTS_DIR
    docs_dir: Path | None = DOCS_DIR
    database_name: str = BENCH_DATABASE


Say = Callable[[str], None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


async def _recreate_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def prepare_database(server_url: str, name: str) -> str:
    """The bench's own database on the configured PostgreSQL, made afresh and migrated to head: every run
    starts from the same empty schema, whatever an earlier run or another branch left behind."""
    asyncio.run(_recreate_database(server_url, name))
    url = with_database(server_url, name)
    migrate.upgrade(url)
    return url


def machine_facts(wrk_version: str) -> Machine:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
        load_average: tuple[float, float, float] | None = (
            round(load[0], 2),
            round(load[1], 2),
            round(load[2], 2),
        )
    except OSError:
        load_average = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    kernel = ".".join(platform.release().split(".")[:2])  # major.minor: build tags say nothing useful
    return Machine(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cores=os.cpu_count() or 1,
        cpu=cpu,
        python=platform.python_version(),
        platform=f"{platform.system()} {kernel}",
        wrk=wrk_version,
        load_average=load_average,
        commit=commit,
    )


class ServerProcess:
    """`tongban serve` with the bench routes, in its own process group so that it and its workers stop together."""

    def __init__(self, server: str, workers: int, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.server, self.workers = server, workers
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "scripts.cli",
                    "serve",
                    "--host",
                    HOST,
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                    "--server",
                    server,
                ],
                cwd=ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.server} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(self.base_url + "/readyz", timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"/readyz answered {response.status_code}: {response.text[:300]}"
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise BenchError(
            f"{self.server} not ready after {timeout:.0f}s ({last}); server log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # workers left behind by a crashed supervisor
            os.killpg(self.proc.pid, signal.SIGKILL)


def server_version(server: str) -> str:
    try:
        return metadata.version(server)
    except metadata.PackageNotFoundError:
        return "?"


def server_env(database_url: str, redis_url: str, data_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        TONGBAN_BENCH_ROUTES="true",
        TONGBAN_DATABASE_URL=database_url,
        TONGBAN_REDIS_URL=redis_url,
        TONGBAN_DATA_DIR=data_dir,
        TONGBAN_HOST=HOST,
    )
    return env


async def _setup(
    route: BenchRoute, base_url: str, database_url: str, redis_url: str, env: Mapping[str, str]
) -> dict[str, str]:
    assert route.setup is not None
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
        ctx = SetupContext(
            base_url=base_url, client=client, database_url=database_url, redis_url=redis_url, server_env=env
        )
        return {str(k): str(v) for k, v in (await route.setup(ctx)).items()}


def check_route(base_url: str, route: BenchRoute) -> None:
    """A plain GET must answer 2xx before we load it: a 404 means the bench routes are not mounted."""
    if route.method.upper() != "GET" or route.setup is not None:
        return  # wrk's error counts catch these
    response = httpx.get(base_url + route.path, timeout=10.0)
    if not response.is_success:
        raise BenchError(
            f"{route.method} {route.path} answered {response.status_code}: {response.text[:200]}"
        )


def measure_route(
    route: BenchRoute,
    server: ServerProcess,
    options: BenchOptions,
    wrk_bin: str,
    stores: tuple[str, str],
    raw_dir: Path,
) -> RouteResult:
    env = {**os.environ, "BENCH_METHOD": route.method.upper()}
    if route.setup is not None:
        try:
            env.update(asyncio.run(_setup(route, server.base_url, *stores, server.env)))
        except Exception as exc:  # a hook is project code under test: report it as this route's failure
            raise BenchError(f"setup for route {route.name} failed: {type(exc).__name__}: {exc}") from exc
    check_route(server.base_url, route)
    url = server.base_url + route.path

    def load(duration_s: int) -> str:
        args = wrk.command(
            wrk_bin,
            url,
            threads=options.threads,
            connections=options.connections,
            duration_s=duration_s,
            timeout_s=WRK_TIMEOUT_S,
            script=route.script_path(),
        )
        return wrk.run(args, duration_s=duration_s, env=env)

    if options.warmup_s > 0:
        load(options.warmup_s)  # opens pool connections and fills caches; not counted
    output = load(options.duration_s)
    (raw_dir / f"{options.name}-{server.server}-w{server.workers}-{route.name}.txt").write_text(output)
    parsed = wrk.parse_output(output)
    return RouteResult(
        name=route.name,
        method=route.method.upper(),
        path=route.path,
        requests=parsed.requests,
        requests_per_sec=parsed.requests_per_sec,
        p50_ms=parsed.p50_ms,
        p75_ms=parsed.p75_ms,
        p90_ms=parsed.p90_ms,
        p99_ms=parsed.p99_ms,
        errors=parsed.errors,
        target_ratio=route.target_ratio,
    )


def run(
    options: BenchOptions, *, database_url: str | None, redis_url: str | None, data_dir: str, say: Say = print
) -> BenchReport:
    """The whole bench: configured stores (or embedded ones under data_dir/bench), every server x workers."""
    wrk_bin = wrk.ensure(say=say)
    bench_dir = str(Path(data_dir).resolve() / "bench")
    embedded = ensure_stores(database_url, redis_url, bench_dir) if not (database_url and redis_url) else None
    try:
        server_url = embedded.database_url if embedded else database_url
        redis = embedded.redis_url if embedded else redis_url
        assert server_url and redis
        say(f"bench database {options.database_name}: creating afresh and migrating")
        try:
            bench_db = prepare_database(server_url, options.database_name)
        except (OSError, asyncpg.PostgresError) as exc:
            raise BenchError(
                f"PostgreSQL: cannot prepare the bench database ({type(exc).__name__}: {exc})"
            ) from exc
        machine = machine_facts(wrk.version(wrk_bin))
        raw_dir = options.results_dir / "raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        env = server_env(bench_db, redis, bench_dir)
        runs = []
        for server_name in options.servers:
            for workers in options.workers:
                server = ServerProcess(
                    server_name, workers, env, raw_dir / f"{options.name}-server-{server_name}-w{workers}.log"
                )
                try:
                    server.wait_ready()
                    # hello runs before every route, and each route's ratio is taken against the hello
                    # right before it: the machine's speed drifts over a run (shared cores), and a ratio
                    # of two measurements minutes apart measures the drift. The hello row is their median.
                    results: list[RouteResult] = []
                    hellos: list[RouteResult] = []
                    stores = (bench_db, redis)
                    hello = next(route for route in options.routes if route.name == HELLO)
                    for route in options.routes:
                        paired = measure_route(hello, server, options, wrk_bin, stores, raw_dir)
                        hellos.append(paired)
                        if route is hello:
                            continue
                        result = measure_route(route, server, options, wrk_bin, stores, raw_dir)
                        result = msgspec.structs.replace(result, paired_hello=paired.requests_per_sec)
                        say(
                            f"{server_name} x{workers} {route.name:>12}: {result.requests_per_sec:>10,.0f} req/s"
                            f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                            f"  (hello before it {paired.requests_per_sec:,.0f})"
                        )
                        results.append(result)
                    middle = sorted(hellos, key=lambda sample: sample.requests_per_sec)[len(hellos) // 2]
                    results.insert(0, msgspec.structs.replace(middle, errors=max(h.errors for h in hellos)))
                    say(
                        f"{server_name} x{workers} {HELLO:>12}: {middle.requests_per_sec:>10,.0f} req/s (median)"
                    )
                finally:
                    server.stop()
                runs.append(
                    ServerRun(
                        server=server_name,
                        server_version=server_version(server_name),
                        workers=workers,
                        routes=score(results),
                    )
                )
    finally:
        if embedded is not None:
            embedded.stop()
    load = LoadParams(
        threads=options.threads,
        connections=options.connections,
        duration_s=options.duration_s,
        warmup_s=options.warmup_s,
        timeout_s=WRK_TIMEOUT_S,
    )
    return BenchReport(name=options.name, machine=machine, load=load, runs=runs)
