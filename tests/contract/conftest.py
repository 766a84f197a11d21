"""Fixtures for the contract suites: every implementation of a port, behind one fixture.

Redis is real and never optional: $SOCIALHUB_TEST_REDIS_URL (default the local server)
must answer or the fixture fails. Each test gets a random key prefix (and client
names derived from it), so parallel runs and other suites sharing the server never
see each other's keys, channels or connections.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from socialhub.infra.kv.base import Counters, RateLimiter, Timelines, Values
from socialhub.infra.kv.memory import MemoryCounters, MemoryRateLimiter, MemoryTimelines, MemoryValues
from socialhub.infra.kv.redis import RedisCounters, RedisRateLimiter, RedisTimelines, RedisValues
from socialhub.infra.pubsub.base import PubSub
from socialhub.infra.pubsub.memory import MemoryPubSub
from socialhub.infra.pubsub.redis import RedisPubSub
from socialhub.infra.redis_client import client_from_url

REDIS_URL = os.environ.get("SOCIALHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
async def redis_url() -> str:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({exc}); start redis-server or set SOCIALHUB_TEST_REDIS_URL"
        )
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
def key_prefix() -> str:
    return f"shtest:{secrets.token_hex(6)}:"


async def _drop_keys(client: aioredis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)


@pytest.fixture
async def redis_admin(redis_url: str, key_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client for the test to inspect Redis with; drops the test's keys after."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await _drop_keys(client, key_prefix)
    await client.aclose()


class KeyValueEnv:
    """The four key-value ports of one kind, as app.py builds them: in process, or all
    over one Redis client and one prefix (so a test can hold them against each other)."""

    def __init__(self, kind: str, client: aioredis.Redis | None, prefix: str) -> None:
        self.kind = kind
        self.limiter: RateLimiter
        self.values: Values
        self.timelines: Timelines
        self.counters: Counters
        if client is None:
            self.limiter, self.values = MemoryRateLimiter(), MemoryValues()
            self.timelines, self.counters = MemoryTimelines(), MemoryCounters()
        else:
            self.limiter, self.values = RedisRateLimiter(client, prefix), RedisValues(client, prefix)
            self.timelines, self.counters = RedisTimelines(client, prefix), RedisCounters(client, prefix)


@pytest.fixture(params=["memory", "redis"])
async def kv_env(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> AsyncIterator[KeyValueEnv]:
    if request.param == "memory":
        yield KeyValueEnv("memory", None, key_prefix)
        return
    client = client_from_url(redis_url)
    yield KeyValueEnv("redis", client, key_prefix)
    await _drop_keys(client, key_prefix)
    await client.aclose()


@pytest.fixture
def limiter(kv_env: KeyValueEnv) -> RateLimiter:
    return kv_env.limiter


@pytest.fixture
def values(kv_env: KeyValueEnv) -> Values:
    return kv_env.values


@pytest.fixture
def timelines(kv_env: KeyValueEnv) -> Timelines:
    return kv_env.timelines


@pytest.fixture
def counters(kv_env: KeyValueEnv) -> Counters:
    return kv_env.counters


class PubSubEnv:
    """Builds started PubSub instances of one kind and inspects the broker behind them."""

    def __init__(self, kind: str, redis_url: str, prefix: str) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.prefix = prefix
        self._admin = aioredis.Redis.from_url(redis_url)
        self._instances: list[PubSub] = []
        self._clients: list[aioredis.Redis] = []

    def client_name(self, name: str) -> str:
        return f"{self.prefix.replace(':', '-')}{name}"

    async def new(self, name: str = "a", **options: int | float) -> PubSub:
        """A started instance; for Redis, its connections carry `client_name(name)`."""
        pubsub: PubSub
        if self.kind == "memory":
            inbox_limit = int(options.get("inbox_limit", 1000))
            pubsub = MemoryPubSub(inbox_limit=inbox_limit)
        else:
            client = aioredis.Redis.from_url(self.redis_url, client_name=self.client_name(name))
            self._clients.append(client)
            pubsub = RedisPubSub(client, self.prefix, **options)  # type: ignore[arg-type]
        await pubsub.start()
        self._instances.append(pubsub)
        return pubsub

    async def broker_subscriptions(self, channel: str) -> int | None:
        """How many connections Redis has subscribed to `channel` (None: no broker)."""
        if self.kind == "memory":
            return None
        counts = await self._admin.pubsub_numsub(self.prefix + channel)
        return int(counts[0][1])

    async def kill_subscriber(self, name: str = "a") -> int:
        """Cut instance `name`'s subscriber link from the server side; how many were cut."""
        wanted = self.client_name(name)
        killed = 0
        for entry in await self._admin.client_list(_type="pubsub"):
            if entry.get("name") == wanted:
                killed += await self._admin.client_kill_filter(_id=entry["id"], _type="pubsub")
        return killed

    async def aclose(self) -> None:
        for pubsub in self._instances:
            await pubsub.close()
        for client in self._clients:
            await client.aclose()
        await self._admin.aclose()


@pytest.fixture(params=["memory", "redis"])
async def pubsub_env(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> AsyncIterator[PubSubEnv]:
    env = PubSubEnv(request.param, redis_url, key_prefix)
    yield env
    await env.aclose()


@pytest.fixture
async def redis_env(redis_url: str, key_prefix: str) -> AsyncIterator[PubSubEnv]:
    env = PubSubEnv("redis", redis_url, key_prefix)
    yield env
    await env.aclose()


class TcpProxy:
    """A TCP relay in front of Redis that a test can cut or freeze, then restore.

    `cut` refuses new connections and resets open ones (Redis down); `freeze` keeps
    connections open but stops relaying bytes (a peer vanished without closing).
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(list(self._handlers))

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            self._handlers.discard(task)
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.difference_update({writer, up_writer})
            self._handlers.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A proxy to the test Redis, and the URL that goes through it."""
    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    url = urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
    yield proxy, url
    proxy.thaw()
    await proxy.cut()


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 3.0) -> None:
    """Wait until `check()` is true, polling; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.01)
