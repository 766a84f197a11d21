"""The local registry of sockets, and their link to the pub/sub channels.

This process subscribes to a channel once, however many of its sockets want it:
`user:<id>` while a user has a socket here (notifications, call signaling),
`room:<id>` while a socket here has joined the room, `presence:<id>` while a socket
here follows that user. Each message is fanned out as the same bytes to the local
sockets, through their bounded queues (a slow socket never stalls the others).

Rooms are gap-free: messages carry their seq; a message that arrives ahead of one
still in flight triggers a read of the missing ones from PostgreSQL, and a late one
already delivered is dropped. A socket joining with `since_seq` gets its replay and
then the live stream with nothing lost or doubled (live frames are held while the
replay runs). If the broker connection was lost, streams may have gaps that this
process cannot see: every socket is closed with 1012 and resumes with `since_seq`.

That happens when the broker is back (`on_broker_reset`), and also while it stays
down: after BROKER_GRACE of an unhealthy broker (`watch_broker`) every socket is closed
with 1012 and new ones are refused (503 at the upgrade) until it is back, so no client
believes it is live while other instances' frames cannot reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
from prometheus_client import Gauge

from socialhub.api.ws.session import Session
from socialhub.domain.chat import Message
from socialhub.domain.live import RoomEvent, UserEvent, presence_channel, room_channel, user_channel
from socialhub.domain.protocol import CLOSE_RESTART, CLOSE_UNAUTHENTICATED, Joined, NewMessageFrame
from socialhub.errors import SocialhubError
from socialhub.infra.pubsub.base import PubSub, Subscription
from socialhub.services.chat import ChatService

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

_encoder = msgspec.json.Encoder()
_room_event = msgspec.json.Decoder(RoomEvent)
_user_event = msgspec.json.Decoder(UserEvent)


class PresenceTracker(Protocol):
    async def connected(self, user_id: int) -> None: ...
    async def disconnected(self, user_id: int) -> None: ...
    async def joined(self, room_id: int, user_id: int) -> None: ...
    async def left(self, room_id: int, user_id: int) -> None: ...


class _Channel:
    """One pub/sub subscription shared by the local sockets that want it."""

    def __init__(self) -> None:
        self.sessions: set[Session] = set()
        self.subscription: Subscription | None = None
        self.lock = asyncio.Lock()
        self.last_seq = 0  # rooms: the highest seq relayed from this channel
        self.lapses: dict[str, asyncio.TimerHandle] = {}  # rooms: states that end by themselves


class Hub:
    def __init__(
        self, *, pubsub: PubSub, chat: ChatService, presence: PresenceTracker, broker_grace: float = BROKER_GRACE
    ) -> None:
        self.pubsub = pubsub
        self.chat = chat
        self.presence = presence
        self.users: dict[int, set[Session]] = {}
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
        for room_id in list(session.rooms) + list(session.joining):
            await self.leave(session, room_id)
        for user_id in list(session.watching):
            await self._detach(presence_channel(user_id), session)
        session.watching.clear()
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

    # -- rooms --------------------------------------------------------------------------

    async def join(self, session: Session, room_id: int, since_seq: int | None, ref: str | None) -> None:
        """Subscribe, then read where the room is, then replay, then release the held
        live frames: a message committed at any moment is sent exactly once."""
        if room_id in session.rooms or room_id in session.joining:
            session.send(_encoder.encode(Joined(room_id=str(room_id), last_seq=session.rooms.get(room_id, 0))))
            return
        session.joining[room_id] = []
        counted = False
        try:
            channel = await self._attach(room_channel(room_id), session, self._on_room)
            # Counted as present before anything is sent, so a message from now on does
            # not also notify this member.
            try:
                await self.presence.joined(room_id, session.user_id)
                counted = True
            except SocialhubError:
                logger.warning("presence unavailable for room %s", room_id)
            last_seq = await self.chat.last_seq(room_id)
            if not channel.last_seq:
                channel.last_seq = last_seq
            frame = Joined(room_id=str(room_id), last_seq=last_seq)
            if ref is not None:
                frame = Joined(room_id=str(room_id), last_seq=last_seq, ref=ref)
            session.send(_encoder.encode(frame))
            sent = last_seq
            if since_seq is not None and since_seq < last_seq:
                for record in await self.chat.replay(room_id, since_seq):
                    await session.send_paced(_encoder.encode(NewMessageFrame(Message.of(record))))
                    sent = max(sent, record.seq)
            # The held frames are paced too; those arriving meanwhile are held in turn, and
            # the last (empty) batch is taken with no await before the stream goes live.
            held = session.joining.get(room_id, [])
            while held:
                session.joining[room_id] = []
                for seq, data in held:
                    if seq == 0 or seq > sent:
                        await session.send_paced(data)
                        sent = max(sent, seq)
                held = session.joining.get(room_id, [])
            session.joining.pop(room_id, None)
            session.rooms[room_id] = sent
        except BaseException:
            session.joining.pop(room_id, None)
            await self._detach(room_channel(room_id), session)
            if counted:
                with contextlib.suppress(SocialhubError):
                    await self.presence.left(room_id, session.user_id)
            raise

    async def leave(self, session: Session, room_id: int) -> None:
        was_in = session.rooms.pop(room_id, None) is not None
        session.joining.pop(room_id, None)
        await self._detach(room_channel(room_id), session)
        if was_in:
            try:
                await self.presence.left(room_id, session.user_id)
            except SocialhubError:
                logger.warning("presence unavailable for room %s", room_id)

    async def _on_room(self, channel_name: str, payload: bytes) -> None:
        channel = self._channels.get(channel_name)
        if channel is None:
            return
        try:
            event = _room_event.decode(payload)
        except msgspec.DecodeError:
            logger.warning("malformed room event ignored on %s", channel_name)
            return
        room_id = int(channel_name.split(":", 1)[1])
        if event.lapse_key:
            pending = channel.lapses.pop(event.lapse_key, None)
            if pending is not None:
                pending.cancel()
            if event.lapse:
                channel.lapses[event.lapse_key] = asyncio.get_running_loop().call_later(
                    event.lapse_after,
                    self._lapse,
                    channel,
                    room_id,
                    event.lapse_key,
                    bytes(event.lapse),
                    event.exclude_user,
                )
        frames: list[tuple[int, bytes]] = []
        if event.seq:
            if event.seq <= channel.last_seq:
                # Possibly late (already filled from the database), but a socket still
                # joining decides for itself below.
                frames.append((event.seq, bytes(event.frame)))
            else:
                if event.seq > channel.last_seq + 1:
                    frames += await self._fill(room_id, channel.last_seq, event.seq)
                frames.append((event.seq, bytes(event.frame)))
                channel.last_seq = event.seq
        else:
            frames.append((0, bytes(event.frame)))
        self._deliver(channel, room_id, frames, event.exclude_user)

    def _deliver(self, channel: _Channel, room_id: int, frames: list[tuple[int, bytes]], exclude_user: int) -> None:
        for session in list(channel.sessions):
            if exclude_user and session.user_id == exclude_user:
                continue
            held = session.joining.get(room_id)
            for seq, data in frames:
                if held is not None:
                    held.append((seq, data))
                elif seq == 0:
                    session.send(data)
                elif seq > session.rooms.get(room_id, 0):
                    session.send(data)
                    session.rooms[room_id] = seq

    def _lapse(self, channel: _Channel, room_id: int, key: str, data: bytes, exclude_user: int) -> None:
        """A state no later event replaced ends here (its sender may be gone)."""
        channel.lapses.pop(key, None)
        self._deliver(channel, room_id, [(0, data)], exclude_user)

    async def _fill(self, room_id: int, after: int, upto: int) -> list[tuple[int, bytes]]:
        """The messages between `after` and `upto` (exclusive) from PostgreSQL."""
        try:
            records = await self.chat.replay(room_id, after)
        except Exception:
            logger.exception("could not fill a gap in room %s", room_id)
            return []
        return [(r.seq, _encoder.encode(NewMessageFrame(Message.of(r)))) for r in records if r.seq < upto]

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

    async def watch(self, session: Session, user_id: int) -> None:
        if user_id not in session.watching:
            session.watching.add(user_id)
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
                for pending in channel.lapses.values():
                    pending.cancel()
                channel.lapses.clear()
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
        for channel in self._channels.values():
            channel.last_seq = 0
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

    async def shutdown(self) -> None:
        """Server stopping: 1012 tells clients to reconnect (elsewhere) and resume."""
        self.closing = True
        self.close_all(CLOSE_RESTART, "server restarting")
        for _ in range(50):
            if not self.users:
                break
            await asyncio.sleep(0.1)
