"""core.pipelined_redis against the real Redis: replies in order, one write per loop tick, scripts, the
database and credentials of the redis-py client it is made like, and outages: Redis gone (ConnectionError,
then recovery), Redis silent (TimeoutError after the socket timeout), cancelled callers."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import redis as redis_mod
from core.pipelined_redis import LuaScript, PipelinedRedis, close_pipelined, pipelined
from core.settings import Settings
from core.stores import Stores
from tests.support.proxy import proxy_for, through_proxy


def key(*rest: str) -> str:
    return redis_mod.key("pipetest", secrets.token_hex(4), *rest)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[PipelinedRedis]:
    """A pipelined client of its own (made like the test's redis-py client), closed after the test."""
    assert settings.redis_url
    made_like = redis_mod.create_client(settings, settings.redis_url)
    own = PipelinedRedis.like(made_like)
    yield own
    await own.aclose()
    await made_like.aclose()


async def test_replies_come_back_to_their_callers(client: PipelinedRedis, stores: Stores) -> None:
    name = key("a")
    assert await client.execute("SET", name, "值", "EX", 60) == b"OK"
    assert await client.execute("GET", name) == "值".encode()
    assert await client.execute("GET", key("missing")) is None
    assert await client.execute("MGET", name, key("missing")) == ["值".encode(), None]
    # An error reply fails that call only; the connection goes on.
    with pytest.raises(ResponseError):
        await client.execute("INCR", name)
    assert await client.execute("INCRBY", key("n"), 5) == 5
    # Written in the test's Redis database, where redis-py reads it.
    assert await stores.redis.get(name) == "值".encode()


async def test_one_write_carries_every_command_of_a_tick(client: PipelinedRedis) -> None:
    counter = key("counter")
    await client.execute("PING")
    before = client.writes
    values = await asyncio.gather(*(client.execute("INCR", counter) for _ in range(500)))
    assert sorted(values) == list(range(1, 501))
    assert values == sorted(values)  # in the order sent
    assert client.writes - before == 1
    await client.execute("DEL", counter)


async def test_a_script_is_sent_whole_when_the_server_does_not_know_it(client: PipelinedRedis) -> None:
    # A source no server has seen: the first call gets NOSCRIPT, sends EVAL, and later calls use EVALSHA.
    script = LuaScript(f"-- {secrets.token_hex(8)}\nreturn {{KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}}")
    name = key("script")
    assert await client.run_script(script, [name], ["x"]) == [name.encode(), b"x", 1]
    assert await client.run_script(script, [name], [7]) == [name.encode(), b"7", 2]
    assert await client.execute("SCRIPT", "EXISTS", script.sha) == [1]
    with pytest.raises(ResponseError):  # a script's own error is not NOSCRIPT: it reaches the caller
        await client.run_script(LuaScript("return redis.call('NOSUCHCOMMAND')"), [], [])


async def test_a_cancelled_caller_does_not_shift_the_replies(client: PipelinedRedis) -> None:
    names = [key(str(n)) for n in range(3)]
    for n, name in enumerate(names):
        await client.execute("SET", name, f"v{n}", "EX", 60)
    first, second, third = (asyncio.ensure_future(client.execute("GET", name)) for name in names)
    await asyncio.sleep(0)  # all three are written
    second.cancel()
    assert (await first, await third) == (b"v0", b"v2")
    assert await client.execute("GET", names[1]) == b"v1"


async def test_redis_gone_fails_calls_then_the_next_call_reconnects(settings: Settings) -> None:
    assert settings.redis_url
    proxy = proxy_for(settings.redis_url)
    made_like = aioredis.Redis.from_url(
        through_proxy(settings.redis_url, proxy), socket_timeout=1.0, socket_connect_timeout=1.0
    )
    client = PipelinedRedis.like(made_like)
    try:
        name = key("outage")
        assert await client.execute("SET", name, "1", "EX", 60) == b"OK"
        in_flight = asyncio.ensure_future(client.execute("BLPOP", key("never"), 0))
        await asyncio.sleep(0.05)
        proxy.down()
        with pytest.raises(RedisConnectionError):
            await in_flight
        for _ in range(3):  # refused at once, each call, with an error redis_mod.guarded turns into a 503
            with pytest.raises(redis_mod.OUTAGE_ERRORS):
                await asyncio.wait_for(client.execute("GET", name), 2)
        proxy.up()
        assert await client.execute("GET", name) == b"1"
    finally:
        await client.aclose()
        await made_like.aclose()
        proxy.close()


async def test_a_silent_redis_times_out_every_call_on_the_connection() -> None:
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # reads nothing back, answers nothing

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PipelinedRedis(host="127.0.0.1", port=port, timeout=0.2, connect_timeout=0.5)
    try:
        started = asyncio.get_running_loop().time()
        calls = [asyncio.ensure_future(client.execute("GET", "k")) for _ in range(3)]
        await asyncio.sleep(0.1)
        calls.append(asyncio.ensure_future(client.execute("GET", "k")))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(outcome, RedisTimeoutError) for outcome in outcomes), outcomes
        assert 0.2 <= asyncio.get_running_loop().time() - started < 1.0
    finally:
        await client.aclose()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_nothing_listening_is_a_connection_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = PipelinedRedis(host="127.0.0.1", port=port)
    try:
        results = await asyncio.gather(*(client.execute("PING") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(result, RedisConnectionError) for result in results), results
    finally:
        await client.aclose()


async def test_credentials_and_database_of_the_url(settings: Settings, stores: Stores) -> None:
    assert settings.redis_url
    user, password = f"tb-pipetest-{secrets.token_hex(4)}", secrets.token_hex(16)
    await stores.redis.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["pipetest:*"], commands=["+@all"]
    )
    base = settings.redis_url.split("://", 1)[1]
    try:
        good = aioredis.Redis.from_url(f"redis://{user}:{password}@{base}")
        bad = aioredis.Redis.from_url(f"redis://{user}:wrong@{base}")
        with_user, wrong = PipelinedRedis.like(good), PipelinedRedis.like(bad)
        try:
            name = key("acl")
            assert await with_user.execute("SET", name, "yes", "EX", 60) == b"OK"
            assert await stores.redis.get(name) == b"yes"  # same database index as the URL's
            with pytest.raises(ResponseError):  # the user's key pattern holds
                await with_user.execute("GET", "elsewhere")
            with pytest.raises(AuthenticationError):
                await wrong.execute("PING")
        finally:
            await with_user.aclose()
            await wrong.aclose()
            await good.aclose()
            await bad.aclose()
    finally:
        await stores.redis.acl_deluser(user)


async def test_a_unix_socket_url(settings: Settings) -> None:
    """unix:// as redis-py reads it, here through a forwarder to the TCP Redis of the test."""
    assert settings.redis_url
    host, _, rest = settings.redis_url.split("://", 1)[1].rpartition("@")[2].partition(":")
    port, _, db = rest.partition("/")

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "redis.sock")
        server = await asyncio.start_unix_server(forward, path)
        made_like = aioredis.Redis.from_url(f"unix://{path}?db={db or 0}")
        client = PipelinedRedis.like(made_like)
        try:
            assert await client.execute("PING") == b"PONG"
            assert await client.execute("CLIENT", "INFO") is not None
        finally:
            await client.aclose()
            await made_like.aclose()
            server.close()
            await server.wait_closed()


def test_made_like_the_redis_py_client() -> None:
    tcp = PipelinedRedis.like(
        aioredis.Redis.from_url(
            "redis://u:p@cache.example:6380/5", socket_timeout=0.7, socket_connect_timeout=0.3
        )
    )
    assert (tcp._host, tcp._port, tcp._db, tcp._username, tcp._password) == (
        "cache.example",
        6380,
        5,
        "u",
        "p",
    )
    assert (tcp._timeout, tcp._connect_timeout, tcp._path, tcp._ssl) == (0.7, 0.3, None, None)
    unix = PipelinedRedis.like(aioredis.Redis.from_url("unix:///run/redis.sock?db=2"))
    assert (unix._path, unix._db) == ("/run/redis.sock", 2)
    tls = PipelinedRedis.like(aioredis.Redis.from_url("rediss://cache.example:6380/0"))
    assert tls._ssl is not None and tls._ssl.verify_mode.name == "CERT_REQUIRED"


async def test_one_client_per_redis_py_client_closed_with_the_stores(settings: Settings) -> None:
    assert settings.redis_url
    made_like = redis_mod.create_client(settings, settings.redis_url)
    client = pipelined(made_like)
    assert pipelined(made_like) is client
    assert await client.execute("PING") == b"PONG"
    in_flight = asyncio.ensure_future(client.execute("BLPOP", key("never"), 0))
    await asyncio.sleep(0.05)
    await close_pipelined(made_like)
    with pytest.raises(RedisConnectionError):
        await in_flight
    assert pipelined(made_like) is not client  # a new one, connected on first use
    await close_pipelined(made_like)
    await made_like.aclose()
