"""The local registry of sockets, and their link to the pub/sub channels.

Which sockets of which user are here, and which users' presence each follows. This
process subscribes to a channel once, however many of its sockets want it: `user:<id>`
while a user has a socket here (notifications, call signaling), `presence:<id>` while a
socket here follows that user. Each message is fanned out as the same bytes to the
local sockets (framed once: api/ws/session.py `framed`), each within its bounded send
buffer (a slow socket never stalls the others).
Rooms have their own rules (replay, seq order, gaps): the room stream
(services/roomstream.py) keeps them; the hub tells it when a socket goes.

If the broker connection was lost, streams may have gaps that this process cannot see:
every socket is closed with 1012 and resumes with `since_seq`.

That happens when the broker is back (`on_broker_reset`), and also while it stays
down: after BROKER_GRACE of an unhealthy broker (`watch_broker`) every socket is closed
with 1012 and new ones are refused (503 at the upgrade) until it is back, so no client
believes it is live while other instances' frames cannot reach it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
from prometheus_client import Gauge

from socialhub.api.ws.session import Session
from socialhub.domain.live import UserEvent, presence_channel, user_channel
from socialhub.domain.protocol import CLOSE_RESTART, CLOSE_UNAUTHENTICATED
from socialhub.errors import SocialhubError
from socialhub.infra.pubsub.base import PubSub, Subscription
from socialhub.services.roomstream import RoomStream

logger = logging.getLogger(__name__)

# How long the broker may be unhealthy before the sockets are told (closed with 1012).
# A dropped link or a restarted Redis is back within a reconnect or two (the pub/sub
# reader retries at once, then with backoff capped at 5 s), and the sockets are then
# closed anyway by `on_broker_reset` so they resume: closing sooner would only turn a
# blip into a reconnect storm. Longer than this, a client would sit on a socket that
# silently misses other instances' messages, which is what must never happen.
BROKER_GRACE = 10.0
# How often the watcher looks at the broker's health: the close comes within
# BROKER_GRACE + this.
BROKER_POLL = 0.5

SOCKETS = Gauge("socialhub_ws_sockets", "Open, authenticated WebSockets in this process")

_user_event = msgspec.json.Decoder(UserEvent)


class PresenceTracker(Protocol):
    async def connected(self, user_id: int) -> None: ...
    async def disconnected(self, user_id: int) -> None: ...


class _Channel:
    """One pub/sub subscription shared by the local sockets that want it."""

    __slots__ = ("lock", "sessions", "subscription")

    def __init__(self) -> None:
        self.sessions: set[Session] = set()
        self.subscription: Subscription | None = None
        self.lock = asyncio.Lock()


class Hub:
    def __init__(
        self, *, pubsub: PubSub, rooms: RoomStream, presence: PresenceTracker, broker_grace: float = BROKER_GRACE
    ) -> None:
        self.pubsub = pubsub
        self.rooms = rooms
        self.presence = presence
        self.users: dict[int, set[Session]] = {}
        self._watching: dict[Session, set[int]] = {}  # users whose presence each socket follows
        self._channels: dict[str, _Channel] = {}
        self.closing = False
        # True from BROKER_GRACE into a broker outage until the broker is back: sockets
        # are refused (the endpoint answers the upgrade 503).
        self.broker_down = False
        self._broker_grace = broker_grace

    # -- sockets ----------------------------------------------------------------------

    @property
    def count(self) -> int:
        return sum(len(s) for s in self.users.values())

    async def add(self, session: Session) -> None:
        SOCKETS.inc()
        self.users.setdefault(session.user_id, set()).add(session)
        await self._attach(user_channel(session.user_id), session, self._on_user)
        try:
            await self.presence.connected(session.user_id)
        except SocialhubError:
            logger.warning("presence unavailable for user %s", session.user_id)

    async def remove(self, session: Session) -> None:
        await self.rooms.leave_all(session)
        for user_id in self._watching.pop(session, set()):
            await self._detach(presence_channel(user_id), session)
        await self._detach(user_channel(session.user_id), session)
        SOCKETS.dec()
        mine = self.users.get(session.user_id)
        if mine is not None:
            mine.discard(session)
            if not mine:
                del self.users[session.user_id]
        try:
            await self.presence.disconnected(session.user_id)
        except SocialhubError:
            logger.warning("presence unavailable for user %s", session.user_id)

    # -- users and presence -----------------------------------------------------------------

    async def _on_user(self, channel_name: str, payload: bytes) -> None:
        channel = self._channels.get(channel_name)
        if channel is None:
            return
        try:
            event = _user_event.decode(payload)
        except msgspec.DecodeError:
            logger.warning("malformed user event ignored on %s", channel_name)
            return
        data = bytes(event.frame)
        for session in list(channel.sessions):
            if event.only_socket and session.socket_id != event.only_socket:
                continue
            if event.exclude_socket and session.socket_id == event.exclude_socket:
                continue
            session.send(data)

    async def _on_presence(self, channel_name: str, payload: bytes) -> None:
        channel = self._channels.get(channel_name)
        if channel is not None:
            for session in list(channel.sessions):
                session.send(payload)

    def watching(self, session: Session) -> frozenset[int]:
        """The users whose presence `session` follows."""
        return frozenset(self._watching.get(session, ()))

    async def watch(self, session: Session, user_id: int) -> None:
        """`session` follows `user_id`'s presence from now on."""
        watching = self._watching.setdefault(session, set())
        if user_id not in watching:
            watching.add(user_id)
            await self._attach(presence_channel(user_id), session, self._on_presence)

    # -- channels -----------------------------------------------------------------------------

    async def _attach(self, name: str, session: Session, handler: Callable[[str, bytes], Awaitable[None]]) -> _Channel:
        channel = self._channels.setdefault(name, _Channel())
        async with channel.lock:
            channel.sessions.add(session)
            if channel.subscription is None:
                channel.subscription = await self.pubsub.subscribe(name, handler)
        return channel

    async def _detach(self, name: str, session: Session) -> None:
        channel = self._channels.get(name)
        if channel is None:
            return
        async with channel.lock:
            channel.sessions.discard(session)
            if not channel.sessions and channel.subscription is not None:
                subscription, channel.subscription = channel.subscription, None
                if self._channels.get(name) is channel:
                    del self._channels[name]
                await subscription.close()

    # -- whole-process events ------------------------------------------------------------------

    async def on_revoked(self, user_id: int, session_ids: list[int]) -> None:
        """Logout, refresh replay, password reset: that session's sockets close, everywhere."""
        ended = set(session_ids)
        for session in list(self.users.get(user_id, ())):
            if session.session_id in ended:
                session.close(CLOSE_UNAUTHENTICATED, "session ended")

    async def on_broker_reset(self) -> None:
        """The broker connection was lost: any stream may have a gap. Close every socket
        so clients reconnect and resume with since_seq (never a silent stop)."""
        logger.warning("pub/sub connection was reset; closing %d sockets so they resume", self.count)
        self.rooms.reset()
        self.close_all(CLOSE_RESTART, "stream interrupted: reconnect and resume")
        self._broker_back()

    async def watch_broker(self, stop: asyncio.Event) -> None:
        """A worker: once the broker has been unhealthy for BROKER_GRACE, close every
        socket with 1012 and refuse new ones until it is healthy again."""
        loop = asyncio.get_running_loop()
        unhealthy_since: float | None = None
        while not stop.is_set():
            if self.pubsub.healthy:
                unhealthy_since = None
                self._broker_back()
            elif unhealthy_since is None:
                unhealthy_since = loop.time()
            elif not self.broker_down and loop.time() - unhealthy_since >= self._broker_grace:
                self.broker_down = True
                logger.warning(
                    "pub/sub broker down for %.0fs: closing %d sockets with 1012, refusing new ones until it is back",
                    self._broker_grace, self.count,
                )  # fmt: skip
                self.close_all(CLOSE_RESTART, "lost the broker connection: reconnect and resume")
            try:
                await asyncio.wait_for(stop.wait(), BROKER_POLL)
            except TimeoutError:
                pass

    def _broker_back(self) -> None:
        if self.broker_down:
            self.broker_down = False
            logger.warning("pub/sub broker back: accepting sockets again")

    def close_all(self, code: int, reason: str) -> None:
        for sessions in list(self.users.values()):
            for session in list(sessions):
                session.close(code, reason)

    async def close_spread(self, code: int, reason: str, window: float) -> None:
        """Close every socket with `code`, evenly spread over `window` seconds (the drain
        of a stopping instance: its clients reconnect elsewhere a few at a time, not in one
        burst). New sockets are turned away from the start (`closing`)."""
        self.closing = True
        sessions = [s for mine in list(self.users.values()) for s in mine]
        loop = asyncio.get_running_loop()
        start, n = loop.time(), len(sessions)
        for i, session in enumerate(sessions):
            delay = start + window * i / n - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            session.close(code, reason)

    async def shutdown(self) -> None:
        """Server stopping: 1012 tells clients to reconnect (elsewhere) and resume."""
        self.closing = True
        self.close_all(CLOSE_RESTART, "server restarting")
        for _ in range(50):
            if not self.users:
                break
            await asyncio.sleep(0.1)
