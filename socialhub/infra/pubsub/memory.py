"""The in-process pub/sub: the process is the whole broker, so publishing is handing
the payload to the local fan-out (`fanout.Fanout`, with its bounded inboxes and
drop-oldest overflow policy)."""

from __future__ import annotations

from socialhub.errors import Unavailable
from socialhub.infra.pubsub.base import Handler, PubSub, ResetCallback, Subscription
from socialhub.infra.pubsub.fanout import INBOX_LIMIT, Fanout


class MemoryPubSub(PubSub):
    """Pub/sub inside one process: the process is the whole broker, so it is never down."""

    def __init__(self, *, inbox_limit: int = INBOX_LIMIT) -> None:
        self._fanout = Fanout(inbox_limit=inbox_limit)
        self._closed = False

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._closed = True
        await self._fanout.close()

    async def publish(self, channel: str, payload: bytes) -> None:
        if self._closed:
            raise Unavailable("pub/sub is closed")
        self._fanout.deliver(channel, payload)

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        if self._closed:
            raise Unavailable("pub/sub is closed")
        return await self._fanout.add(channel, handler)

    def on_reset(self, callback: ResetCallback) -> None:
        # Nothing between publisher and listener can drop out, so there is never a reset.
        return None

    @property
    def healthy(self) -> bool:
        return not self._closed
