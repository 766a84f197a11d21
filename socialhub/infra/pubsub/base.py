"""The pub/sub port: live, at-most-once fan-out between instances.

Two implementations: `memory.MemoryPubSub` (one process) and `redis.RedisPubSub`
(every instance). Both are real and pass the same contract tests
(tests/contract/test_pubsub.py).

Durable things never rely on this port alone (the outbox and PostgreSQL are the
truth); it carries what is live: session revocations, chat frames, typing,
presence, notifications. A process subscribes to a channel at most once, however
many local listeners it has; listeners are multiplexed here.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

Handler = Callable[[str, bytes], Awaitable[None]]
"""Called with (channel, payload) for each message, in publish order per channel."""

ResetCallback = Callable[[], Awaitable[None]]
"""Called after the connection to the broker was lost and is back: messages may have been missed."""


class Subscription(abc.ABC):
    """One local listener on one channel."""

    __slots__ = ()

    channel: str

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering to this listener; the last one out unsubscribes the process."""


class PubSub(abc.ABC):
    """Publish bytes to named channels; deliver to every subscriber on every instance."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and start delivering."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and disconnect; subscriptions end."""

    @abc.abstractmethod
    async def publish(self, channel: str, payload: bytes) -> None:
        """Send `payload` to `channel`. Raises socialhub.errors.Unavailable when the broker is down."""

    @abc.abstractmethod
    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        """Start delivering `channel` to `handler` until the subscription is closed."""

    @abc.abstractmethod
    def on_reset(self, callback: ResetCallback) -> None:
        """Register `callback` for when delivery resumes after a broker outage."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """False while the broker is unreachable (for /readyz)."""
