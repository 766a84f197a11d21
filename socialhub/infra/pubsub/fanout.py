"""The local fan-out every pub/sub implementation delivers through.

`Fanout` keeps channel -> listeners and gives each listener (each `Subscription`) its
own bounded inbox drained by its own task, so:

- a listener sees messages in publish order (one drainer per inbox at a time);
- a slow or stuck listener delays only itself, never other listeners or channels,
  and never the Redis reader that feeds the fan-out;
- a listener that raises is logged and keeps receiving.

Overflow policy, DROP OLDEST: when an inbox already holds `INBOX_LIMIT` messages the
oldest is discarded, logged on the first drop and every `DROP_LOG_EVERY` after, and
counted in `LocalSubscription.dropped`. Pub/sub is live and at-most-once by contract,
so a listener that fell that far behind wants the newest state (typing, presence,
the latest frames) more than a complete past. The drain task exists only while an
inbox has a backlog; an idle subscription costs no task.

`MemoryPubSub` is a `Fanout` alone (the process is the whole broker); `RedisPubSub`
feeds one from its subscriber connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from socialhub.infra.pubsub.base import Handler, Subscription

logger = logging.getLogger(__name__)

# Listeners normally hand each message on to a WebSocket session's own bounded queue
# at once, so a backlog here means a handler is stuck. 1000 absorbs a burst (a busy
# chat room for several seconds) while bounding a stuck listener to ~1000 payloads.
INBOX_LIMIT = 1000
# One warning per 1000 drops keeps a stuck listener from flooding the log.
DROP_LOG_EVERY = 1000


async def cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait for them, without swallowing our own cancellation."""
    tasks = [t for t in tasks if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


class LocalSubscription(Subscription):
    """One listener on one channel, with its bounded inbox (made when a message waits:
    an empty deque is ~600 bytes, and every socket's user channel has a listener)."""

    __slots__ = ("_closed", "_handler", "_inbox", "_limit", "_release", "_task", "channel", "dropped")

    def __init__(
        self,
        channel: str,
        handler: Handler,
        release: Callable[[LocalSubscription], Awaitable[None]],
        limit: int,
    ) -> None:
        self.channel = channel
        self.dropped = 0  # messages discarded by the overflow policy, for metrics
        self._handler = handler
        self._release = release
        self._limit = limit
        self._inbox: deque[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, payload: bytes) -> None:
        """Queue `payload` for the handler; never blocks the caller."""
        if self._closed:
            return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        elif len(inbox) >= self._limit:
            inbox.popleft()
            self.dropped += 1
            if (self.dropped - 1) % DROP_LOG_EVERY == 0:
                logger.warning(
                    "pub/sub listener on %r is %d messages behind; dropped the oldest (%d so far)",
                    self.channel,
                    self._limit,
                    self.dropped,
                )
        inbox.append(payload)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name=f"pubsub-deliver:{self.channel}")

    async def _drain(self) -> None:
        try:
            while self._inbox and not self._closed:
                payload = self._inbox.popleft()
                try:
                    await self._handler(self.channel, payload)
                except Exception:
                    logger.exception("pub/sub handler on %r failed; it keeps its subscription", self.channel)
        finally:
            self._task = None
            self._inbox = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox = None
        task = self._task
        await self._release(self)
        if task is not None:
            await cancel_and_wait([task])

    async def abort(self) -> None:
        """End without telling the owner (the owner is shutting down)."""
        self._closed = True
        self._inbox = None
        if self._task is not None:
            await cancel_and_wait([self._task])


class Fanout:
    """Channel -> local listeners; the part of every PubSub that is not the broker."""

    def __init__(
        self,
        on_change: Callable[[str], Awaitable[None]] | None = None,
        inbox_limit: int = INBOX_LIMIT,
    ) -> None:
        # Called after a channel gains its first or loses its last listener, so a
        # broker-backed owner can (un)subscribe the process exactly once per channel.
        self._on_change = on_change
        self._inbox_limit = inbox_limit
        self._channels: dict[str, list[LocalSubscription]] = {}

    def channels(self) -> set[str]:
        """Channels with at least one listener."""
        return set(self._channels)

    def has(self, channel: str) -> bool:
        return channel in self._channels

    async def add(self, channel: str, handler: Handler) -> LocalSubscription:
        sub = LocalSubscription(channel, handler, self._remove, self._inbox_limit)
        listeners = self._channels.setdefault(channel, [])
        listeners.append(sub)
        if len(listeners) == 1 and self._on_change is not None:
            await self._on_change(channel)
        return sub

    async def _remove(self, sub: LocalSubscription) -> None:
        listeners = self._channels.get(sub.channel)
        if listeners is None or sub not in listeners:
            return
        listeners.remove(sub)
        if not listeners:
            del self._channels[sub.channel]
            if self._on_change is not None:
                await self._on_change(sub.channel)

    def deliver(self, channel: str, payload: bytes) -> int:
        """Queue `payload` for every listener of `channel`; how many there were."""
        listeners = self._channels.get(channel, ())
        for sub in listeners:
            sub.push(payload)
        return len(listeners)

    async def close(self) -> None:
        subs = [sub for listeners in self._channels.values() for sub in listeners]
        self._channels.clear()
        await asyncio.gather(*(sub.abort() for sub in subs))
