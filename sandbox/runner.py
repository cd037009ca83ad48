"""Run simulated providers as HTTP servers on loopback, all in one process and one event loop.

Each provider gets its own uvicorn.Server on its own port. Sockets are bound before anything starts, so a
taken port fails at once with its name; SIGTERM/SIGINT stop every server gracefully and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import uvicorn

from sandbox.frame import Provider


@dataclass(frozen=True)
class Running:
    provider: Provider
    url: str


class PortUnavailable(Exception):
    def __init__(self, provider: Provider, host: str, port: int, reason: str) -> None:
        super().__init__(f"{provider.name}: cannot listen on {host}:{port} ({reason})")
        self.provider = provider


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The runner handles signals once for all servers; uvicorn's own handler would stop only one.
        yield


def _bind(provider: Provider, host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0 as socket.create_server does: asyncio turns on TCP_NODELAY only for
    # connections whose socket says TCP, and without it every answer waited ~40 ms (Nagle meets delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise PortUnavailable(provider, host, port, exc.strerror or str(exc)) from None
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    providers: Sequence[tuple[Provider, int]],
    host: str,
    on_ready: Callable[[list[Running]], None] | None = None,
) -> None:
    """Serve each (provider, port) until SIGTERM/SIGINT; port 0 picks a free one (see `on_ready`)."""
    sockets: list[socket.socket] = []
    try:
        for provider, port in providers:
            sockets.append(_bind(provider, host, port))
    except PortUnavailable:
        for sock in sockets:
            sock.close()
        raise

    servers = [
        _Server(
            uvicorn.Config(
                provider.create_app(),
                log_config=None,
                access_log=False,  # the query string can hold a phone number
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=5,
            )
        )
        for provider, _ in providers
    ]
    loop = asyncio.get_running_loop()
    signalled = False

    def on_signal() -> None:
        nonlocal signalled
        signalled = True
        stop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    tasks = [
        asyncio.create_task(server.serve(sockets=[sock]), name=f"sandbox-{provider.name}")
        for server, sock, (provider, _) in zip(servers, sockets, providers, strict=True)
    ]
    try:
        # uvicorn tells "started" only through a flag, so poll it briefly.
        while not all(server.started for server in servers) and not any(task.done() for task in tasks):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if all(server.started for server in servers) and on_ready is not None:
            on_ready(
                [
                    Running(provider, _url(host, sock))
                    for (provider, _), sock in zip(providers, sockets, strict=True)
                ]
            )
        # One server ending (it failed, or a signal came) ends them all.
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()
        await asyncio.gather(*tasks)
        if not signalled:
            names = ", ".join(task.get_name().removeprefix("sandbox-") for task in done)
            raise RuntimeError(f"sandbox provider stopped unexpectedly: {names}")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for sock in sockets:
            sock.close()


def run(
    providers: Sequence[tuple[Provider, int]],
    host: str,
    on_ready: Callable[[list[Running]], None] | None = None,
) -> None:
    asyncio.run(serve(providers, host, on_ready))
