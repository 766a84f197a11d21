"""Redis pub/sub: live fan-out between every instance sharing a Redis.

One dedicated connection per process carries every SUBSCRIBE; one reader task reads
it and hands each message to the local `Fanout` (fanout.py), whose per-listener
inboxes keep a slow handler from ever stalling the reader. A channel is subscribed
at the broker once, when its first local listener arrives, and unsubscribed when the
last one leaves. Channel names on the wire are `<prefix><channel>`.

The subscriber connection is a bare redis-py `Connection` rather than `PubSub`: with
no retries, a dropped link surfaces here instead of being silently re-established,
which is what lets us mark the process unhealthy, resubscribe on our own terms and
tell `on_reset` listeners that messages may have been missed.

Failure handling, in order: the reader sees the error (or a PING left unanswered
for `health_check_interval`, for a peer that vanished without closing), sets
`healthy` False, forgets what the broker knew, and reconnects with jittered
exponential backoff. Once every channel that still has listeners is confirmed
subscribed again, `healthy` is True and each `on_reset` callback runs once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from socialhub.errors import Unavailable
from socialhub.infra.pubsub.base import Handler, PubSub, ResetCallback, Subscription
from socialhub.infra.pubsub.fanout import INBOX_LIMIT, Fanout, cancel_and_wait
from socialhub.infra.redis_client import check_binary, client_from_url

logger = logging.getLogger(__name__)

# Backoff between reconnect attempts: the first comes quickly (a killed connection or
# a failover is usually back at once), then doubling, capped so that a restarted
# Redis is found again within a few seconds without every instance hammering it.
RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0
# Silence longer than this on the subscriber link triggers a PING, and as long again
# without any reply means the link is dead (a half-open TCP connection is otherwise
# only noticed when the kernel gives up, minutes later).
HEALTH_CHECK_INTERVAL = 5.0
# How long subscribe() waits for Redis to confirm a new channel before returning
# anyway; past that the reader's own health check decides whether the link is dead.
SUBSCRIBE_TIMEOUT = 5.0

_ERRORS = (RedisError, OSError)


class RedisPubSub(PubSub):
    """Pub/sub through Redis; every instance with the same `prefix` sees every message."""

    def __init__(
        self,
        redis: str | aioredis.Redis,
        prefix: str,
        *,
        inbox_limit: int = INBOX_LIMIT,
        reconnect_min: float = RECONNECT_MIN,
        reconnect_max: float = RECONNECT_MAX,
        health_check_interval: float = HEALTH_CHECK_INTERVAL,
    ) -> None:
        """`redis` is a URL (this object then owns and closes its client) or a shared client."""
        self._owns_client = isinstance(redis, str)
        self._client = client_from_url(redis) if isinstance(redis, str) else redis
        check_binary(self._client)
        self._prefix = prefix
        self._prefix_bytes = prefix.encode()
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._health_check_interval = health_check_interval
        self._fanout = Fanout(self._sync, inbox_limit)
        self._conn: AbstractConnection | None = None
        # Serialises writes on the subscriber link so SUBSCRIBE/UNSUBSCRIBE reach Redis
        # in the order the bookkeeping below assumes.
        self._send_lock = asyncio.Lock()
        # Channel -> the confirmation of the latest SUBSCRIBE sent for it: what the
        # broker has been told about this connection.
        self._broker: dict[str, asyncio.Future[bool]] = {}
        # Wire name -> SUBSCRIBEs not yet confirmed, oldest first; Redis confirms each
        # command in order, so each confirmation resolves the oldest.
        self._pending: dict[bytes, deque[asyncio.Future[bool]]] = {}
        self._healthy = False
        self._reset_due = False
        self._reset_callbacks: list[ResetCallback] = []
        self._reader: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    def on_reset(self, callback: ResetCallback) -> None:
        self._reset_callbacks.append(callback)

    async def start(self) -> None:
        """Connect now, so a wrong URL fails at start-up; later drops are repaired by the reader."""
        if self._closed:
            raise Unavailable("pub/sub is closed")
        if self._reader is not None:
            return
        try:
            conn = await self._connect()
        except _ERRORS as exc:
            raise Unavailable(f"Redis pub/sub unreachable: {exc}") from exc
        self._reader = asyncio.get_running_loop().create_task(self._run(conn), name="redis-pubsub-reader")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._healthy = False
        # The reader and reset callbacks stop before the listeners, so nothing is
        # delivered into a listener being torn down.
        tasks = [*self._side_tasks, *([self._reader] if self._reader is not None else [])]
        await cancel_and_wait(tasks)
        await self._fanout.close()
        conn, self._conn = self._conn, None
        self._forget_broker()
        if conn is not None:
            await conn.disconnect(nowait=True)
        if self._owns_client:
            await self._client.aclose()

    async def publish(self, channel: str, payload: bytes) -> None:
        if self._closed:
            raise Unavailable("pub/sub is closed")
        try:
            await self._client.publish(self._wire(channel), payload)
        except _ERRORS as exc:
            raise Unavailable(f"Redis pub/sub unavailable: {exc}") from exc

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        """Listen on `channel`; returns once Redis confirms it (or the link is down).

        While Redis is down the subscription is only recorded: it is made when the link
        is back, and `on_reset` callbacks run then.
        """
        if self._closed:
            raise Unavailable("pub/sub is closed")
        sub = await self._fanout.add(channel, handler)
        confirmed = self._broker.get(channel)
        if confirmed is not None and not confirmed.done():
            try:
                await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT)
            except TimeoutError:
                logger.warning("Redis did not confirm SUBSCRIBE %r within %ss", channel, SUBSCRIBE_TIMEOUT)
        return sub

    def _wire(self, channel: str) -> bytes:
        return self._prefix_bytes + channel.encode()

    def _new_connection(self) -> AbstractConnection:
        pool = self._client.connection_pool
        kwargs: dict[str, Any] = {
            **pool.connection_kwargs,
            "decode_responses": False,
            # Our reader does its own PINGs; redis-py's would read replies meant for it.
            "health_check_interval": 0,
            # No retries: a retry reconnects behind our back and hides the drop.
            "retry": Retry(NoBackoff(), 0, supported_errors=()),
            "retry_on_error": [],
            "retry_on_timeout": False,
            # This connection is not in the pool; keep the pool's handler off it.
            "maint_notifications_pool_handler": None,
        }
        return pool.connection_class(**kwargs)

    async def _connect(self) -> AbstractConnection:
        conn = self._new_connection()
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            self._conn = conn
            await self._sync()
        except BaseException:
            if self._conn is conn:
                self._conn = None
                self._forget_broker()
            await conn.disconnect(nowait=True)
            raise
        self._check_ready()
        return conn

    async def _sync(self, channel: str | None = None) -> None:
        """Make the broker's view of `channel` (default: every channel) match the listeners.

        Per channel on the hot path, so a process with 100k user channels does not
        pay O(channels) for each connection that comes or goes.
        """
        async with self._send_lock:
            conn = self._conn
            # A disconnected Connection would reconnect itself on send: leave that to the reader.
            if conn is None or not conn.is_connected:
                return
            names = self._fanout.channels() | self._broker.keys() if channel is None else {channel}
            subscribe = sorted(c for c in names if self._fanout.has(c) and c not in self._broker)
            unsubscribe = sorted(c for c in names if not self._fanout.has(c) and c in self._broker)
            # Book-keep before sending: the reader may see the confirmation before send returns.
            loop = asyncio.get_running_loop()
            for name in subscribe:
                future: asyncio.Future[bool] = loop.create_future()
                self._pending.setdefault(self._wire(name), deque()).append(future)
                self._broker[name] = future
            for name in unsubscribe:
                del self._broker[name]
            try:
                if subscribe:
                    await conn.send_command("SUBSCRIBE", *map(self._wire, subscribe), check_health=False)
                if unsubscribe:
                    await conn.send_command("UNSUBSCRIBE", *map(self._wire, unsubscribe), check_health=False)
            except _ERRORS as exc:
                # The link is broken; the reader will notice, reconnect and resubscribe all.
                logger.warning("Redis pub/sub: (un)subscribe not sent: %s", exc)

    async def _run(self, conn: AbstractConnection) -> None:
        """The reader: read until the link fails, then reconnect with backoff, forever."""
        loop = asyncio.get_running_loop()
        delay = self._reconnect_min
        while True:
            connected_at = loop.time()
            try:
                await self._read(conn)
            except _ERRORS as exc:
                logger.warning("Redis pub/sub connection lost (%s); reconnecting", exc)
            except Exception:
                # A bug here must not end delivery for the whole process: start afresh.
                logger.exception("Redis pub/sub reader failed; reconnecting")
            await self._lost(conn)
            # A link that stayed up a while earns a fast retry; one that keeps dying does not.
            if loop.time() - connected_at > self._reconnect_max:
                delay = self._reconnect_min
            while True:
                # Jitter spreads the instances out when a restarted Redis comes back.
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self._reconnect_max)
                try:
                    conn = await self._connect()
                    break
                except _ERRORS as exc:
                    logger.warning("Redis pub/sub reconnect failed (%s); next try within %.1fs", exc, delay)
                except Exception:
                    logger.exception("Redis pub/sub reconnect failed; next try within %.1fs", delay)

    async def _read(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        awaiting_pong = False
        while True:
            if not conn.is_connected:
                raise RedisConnectionError("subscriber connection closed")
            started = loop.time()
            reply = await conn.read_response(
                timeout=self._health_check_interval, disconnect_on_error=False, push_request=True
            )
            if reply is None:
                # None also comes from pushes the parser consumes itself (maintenance
                # notices): only a read that really waited out the interval is silence.
                if loop.time() - started < self._health_check_interval / 2:
                    continue
                if awaiting_pong:
                    raise RedisTimeoutError(f"no reply to PING within {self._health_check_interval}s")
                async with self._send_lock:
                    await conn.send_command("PING", check_health=False)
                awaiting_pong = True
                continue
            # Any reply proves the link alive, so PONG itself needs no handling.
            awaiting_pong = False
            if isinstance(reply, list) and len(reply) >= 3:
                kind = reply[0]
                if kind == b"message":
                    self._deliver(reply[1], reply[2])
                elif kind == b"subscribe":
                    self._confirm(reply[1])

    def _deliver(self, name: bytes, payload: bytes) -> None:
        if not name.startswith(self._prefix_bytes):
            return
        channel = name[len(self._prefix_bytes) :].decode(errors="replace")
        self._fanout.deliver(channel, payload)

    def _confirm(self, name: bytes) -> None:
        waiting = self._pending.get(name)
        if waiting:
            future = waiting.popleft()
            if not waiting:
                del self._pending[name]
            if not future.done():
                future.set_result(True)
        self._check_ready()

    def _check_ready(self) -> None:
        """Healthy once connected with every SUBSCRIBE confirmed; then fire on_reset if due."""
        if self._conn is None or self._healthy or self._pending or self._closed:
            return
        self._healthy = True
        if self._reset_due:
            self._reset_due = False
            logger.info("Redis pub/sub reconnected; %d channels resubscribed", len(self._broker))
            self._spawn(self._run_resets())

    async def _lost(self, conn: AbstractConnection) -> None:
        self._healthy = False
        self._reset_due = True
        self._conn = None
        self._forget_broker()
        await conn.disconnect(nowait=True)

    def _forget_broker(self) -> None:
        for waiting in self._pending.values():
            for future in waiting:
                if not future.done():
                    future.set_result(False)
        self._pending.clear()
        self._broker.clear()

    async def _run_resets(self) -> None:
        for callback in list(self._reset_callbacks):
            try:
                await callback()
            except Exception:
                logger.exception("pub/sub on_reset callback failed")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
