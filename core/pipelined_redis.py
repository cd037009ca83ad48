"""One pipelined Redis connection per process for hot paths, beside redis-py's pool.

Every command issued during one event-loop tick goes out in a single write, and the replies come back in
order on the same connection (Redis answers a connection's commands in the order sent): a group commit for
Redis calls. redis-py spends well over 100 µs of Python on each call (pool checkout, a timer per call,
stream reads); this spends about 15, because it packs with hiredis, parses with hiredis straight from
data_received, and keeps one timer for the whole connection (docs/benchmarks.md, "Redis on a hot path").

Errors are redis-py's, so core.redis.OUTAGE_ERRORS and guarded() treat both clients alike:
- ConnectionError when Redis cannot be reached or the connection drops: every call in flight fails and the
  next call connects again (one attempt at a time, shared by the callers that wait for it);
- TimeoutError when the oldest call in flight has waited longer than the client's socket timeout: the
  connection is dropped with every call on it, since the replies still owed would arrive out of step;
- ResponseError for an error reply: that call's only.

Meant for short commands (GET, SET, small scripts): one slow command holds up every call queued behind it.
The client for a redis-py client (same server, database, credentials, timeouts and TLS) comes from
`pipelined(redis)`; `close_pipelined(redis)` closes it with the stores (core.stores.close_stores).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float


class LuaScript:
    """A Lua script called by its SHA1 (EVALSHA), sent whole (EVAL) when the server does not have it yet."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 (Redis names scripts by SHA1)


class _Connection(asyncio.Protocol):
    """One connection: calls queue their packed commands and a future each; replies resolve them in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.failed: Exception | None = None
        self.writes = 0
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._outgoing: list[bytes] = []
        self._flush_due = False
        self._watchdog: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        try:
            # hiredis answers False while a reply is incomplete; no Redis reply decodes to False.
            while (reply := self._reader.gets()) is not False:
                future = pending.popleft()[0]
                if future.done():  # its caller was cancelled
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):  # garbage, or a reply nobody asked for
            self.fail(lambda: RedisConnectionError("Redis protocol error on the pipelined connection"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(lambda: RedisConnectionError("the connection to Redis was lost"))

    # --- calls ---

    def call(self, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        if self.failed is not None:
            future.set_exception(RedisConnectionError("the connection to Redis was lost"))
            return future
        self._pending.append((future, self.loop.time()))
        # hiredis's stub types the tuple as one element; it takes any number.
        self._outgoing.append(hiredis.pack_command(args))  # type: ignore[arg-type]
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self.loop.call_later(self._timeout, self._check_overdue)
        return future

    def _flush(self) -> None:
        self._flush_due = False
        if not self._outgoing or self._transport is None or self.failed is not None:
            return
        data = self._outgoing[0] if len(self._outgoing) == 1 else b"".join(self._outgoing)
        self._outgoing.clear()
        self._transport.write(data)
        self.writes += 1

    def _check_overdue(self) -> None:
        """The one timer of the connection: drop it when its oldest call has waited too long."""
        self._watchdog = None
        if not self._pending or self.failed is not None:
            return
        started = self._pending[0][1]
        if self.loop.time() - started >= self._timeout:
            timeout = self._timeout
            self.fail(lambda: RedisTimeoutError(f"Redis did not answer within {timeout} s"))
        else:
            self._watchdog = self.loop.call_at(started + self._timeout, self._check_overdue)

    def fail(self, error: Callable[[], Exception]) -> None:
        """End the connection: every call in flight gets its own copy of the error."""
        if self.failed is None:
            self.failed = error()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outgoing.clear()
        pending, self._pending = self._pending, deque()
        for future, _ in pending:
            if not future.done():
                future.set_exception(error())
        if self._transport is not None:
            transport, self._transport = self._transport, None
            with contextlib.suppress(RuntimeError):  # its event loop is closed already
                transport.abort()


class PipelinedRedis:
    """The pipelined connection to one Redis database, opened on first use and again after a failure."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 1.0,
        connect_timeout: float = 1.0,
        ssl_context: Any = None,
    ) -> None:
        self._host, self._port, self._path, self._db = host, port, path, db
        self._username, self._password = username, password
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._ssl = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: _Connection | None = None
        self._opening: asyncio.Task[_Connection] | None = None

    @classmethod
    def like(cls, redis: aioredis.Redis) -> PipelinedRedis:
        """Connected as `redis` (a redis-py client) is: server, database, credentials, timeouts, TLS."""
        pool = redis.connection_pool
        kwargs = dict(pool.connection_kwargs)
        unix = issubclass(pool.connection_class, UnixDomainSocketConnection)
        tls = issubclass(pool.connection_class, SSLConnection)
        timeout = float(kwargs.get("socket_timeout") or 5.0)
        return cls(
            host=kwargs.get("host", "127.0.0.1"),
            port=int(kwargs.get("port", 6379)),
            path=kwargs.get("path") if unix else None,
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            timeout=timeout,
            connect_timeout=float(kwargs.get("socket_connect_timeout") or timeout),
            # redis-py's own context, from the URL's ssl_* options
            ssl_context=SSLConnection(**kwargs).ssl_context.get() if tls else None,
        )

    @property
    def writes(self) -> int:
        """Writes on the current connection (each carries every command of one loop tick)."""
        return self._connection.writes if self._connection is not None else 0

    async def execute(self, *args: Arg) -> Any:
        """One command, e.g. execute("SET", key, value, "EX", 60); the reply as hiredis decodes it (bytes)."""
        loop = asyncio.get_running_loop()
        connection = self._connection
        if connection is None or connection.failed is not None or connection.loop is not loop:
            connection = await self._connect(loop)
        return await connection.call(args)

    async def run_script(self, script: LuaScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """EVALSHA, or EVAL when the server does not know the script yet (after a restart or SCRIPT FLUSH)."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def aclose(self) -> None:
        self._drop()
        self._loop = None
        await asyncio.sleep(0)  # lets the aborted transport finish closing on this loop

    # --- connecting ---

    def _drop(self) -> None:
        if self._opening is not None:
            with contextlib.suppress(RuntimeError):
                self._opening.cancel()
            self._opening = None
        if self._connection is not None:
            self._connection.fail(lambda: RedisConnectionError("the pipelined Redis client was closed"))
            self._connection = None

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        if self._loop is not loop:  # first use, or a new event loop (a CLI command, a test): start afresh
            self._drop()
            self._loop = loop
        opening = self._opening
        if opening is None:  # one attempt at a time: the callers that arrive meanwhile wait for it
            opening = self._opening = loop.create_task(self._open(loop))
            opening.add_done_callback(self._opened)
        return await asyncio.shield(opening)

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        if self._opening is task:
            self._opening = None
        if not task.cancelled() and task.exception() is None:
            self._connection = task.result()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        def protocol() -> _Connection:
            return _Connection(loop, self._timeout)

        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path is not None:
                    _, connection = await loop.create_unix_connection(protocol, self._path)
                else:
                    _, connection = await loop.create_connection(
                        protocol,
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                    )
                greeting = []
                if self._password is not None:
                    credentials = (self._username, self._password) if self._username else (self._password,)
                    greeting.append(("AUTH", connection.call(("AUTH", *credentials))))
                if self._db:
                    greeting.append(("SELECT", connection.call(("SELECT", self._db))))
                for command, reply in greeting:
                    try:
                        await reply
                    except ResponseError as exc:
                        if command == "AUTH":
                            raise AuthenticationError("Redis refused the credentials") from None
                        raise RedisConnectionError(f"Redis refused {command}: {exc}") from None
        except TimeoutError:
            self._abandon(connection)
            raise RedisTimeoutError(f"no connection to Redis within {self._connect_timeout} s") from None
        except (AuthenticationError, RedisConnectionError):
            self._abandon(connection)
            raise
        except OSError as exc:
            self._abandon(connection)
            raise RedisConnectionError(f"cannot connect to Redis ({type(exc).__name__})") from None
        return connection

    @staticmethod
    def _abandon(connection: _Connection | None) -> None:
        if connection is not None:
            connection.fail(lambda: RedisConnectionError("the connection to Redis was abandoned"))


_CLIENTS: weakref.WeakKeyDictionary[aioredis.Redis, PipelinedRedis] = weakref.WeakKeyDictionary()


def pipelined(redis: aioredis.Redis) -> PipelinedRedis:
    """The pipelined client beside this redis-py client (one per client, so per process and its copies of
    Stores)."""
    client = _CLIENTS.get(redis)
    if client is None:
        client = _CLIENTS[redis] = PipelinedRedis.like(redis)
    return client


async def close_pipelined(redis: aioredis.Redis) -> None:
    client = _CLIENTS.pop(redis, None)
    if client is not None:
        await client.aclose()
