"""A TCP forwarder the tests can cut and restore, to take PostgreSQL or Redis "down" for one server
process without touching the real store the rest of the suite uses."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit


class OutageProxy:
    def __init__(self, target_host: str, target_port: int, unix_socket: str | None = None) -> None:
        self.target = (target_host, target_port)
        self.unix_socket = unix_socket
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            if self.unix_socket:
                up_r, up_w = await asyncio.open_unix_connection(self.unix_socket)
            else:
                up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, up_w))
        await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w))
        self._writers.difference_update((client_w, up_w))

    async def _up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def up(self) -> OutageProxy:
        self._call(self._up())
        return self

    def down(self) -> None:
        self._call(self._down())

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def proxy_for(url: str) -> OutageProxy:
    """A started proxy in front of the server a postgresql:// or redis:// URL points at (TCP or, for the
    embedded PostgreSQL, its Unix socket)."""
    parts = urlsplit(url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    if socket_dir and socket_dir.startswith("/"):
        return OutageProxy("", 0, unix_socket=f"{socket_dir}/.s.PGSQL.{parts.port or 5432}").up()
    default_port = 6379 if parts.scheme.startswith("redis") else 5432
    return OutageProxy(parts.hostname or "127.0.0.1", parts.port or default_port).up()


def through_proxy(url: str, proxy: OutageProxy) -> str:
    """The same URL, pointed at the proxy's loopback port."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0] + "@" if len(netloc) == 2 else ""
    query = "&".join(f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k != "host")
    return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{proxy.port}", query=query))
