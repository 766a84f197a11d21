"""The room stream: how a room's frames reach the sockets of this process that joined it.

A socket joins with `since_seq`: it gets `joined {room_id, last_seq}`, then every
message after `since_seq` (the replay, from PostgreSQL), then the live stream, with
nothing lost or doubled. The rules:

- Subscribe first, then read where the room is, then replay: a message committed at
  any moment is either in the replay or arrives live.
- Live frames that arrive while the replay runs are held back, and released after it.
- Messages carry their seq, and each socket is sent a seq once (a late duplicate, a
  resend relayed again, a frame already in the replay are dropped).
- A message that arrives ahead of one still in flight (its seq jumps past the highest
  this process relayed from the room) first fills the gap from PostgreSQL.
- States that end by themselves (`typing true`) end here too when their sender is gone.

This process subscribes to `room:<id>` once, however many of its sockets joined, and
fans each frame out as the same bytes through the sockets' bounded queues (`Sink`), so a
slow socket never stalls the others. If the broker connection was lost, streams may
have gaps this process cannot see: `reset` forgets where the rooms were, and the hub
closes every socket so they resume with `since_seq`.

What this process publishes (`publish`) reaches its own sockets at once, by the same
rules, without the round trip through the broker: the event carries this process's
`origin`, and the copy the broker hands back is dropped. (Two sends committed in one
order may resume in the other: the later seq then fills the gap from PostgreSQL, and
the earlier one, arriving late, is sent to no socket twice.)

A socket whose user is no longer a member (`RoomMembers.changed`) is taken out of the
room's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Protocol

import msgspec

from socialhub.domain.chat import Message, MessageRecord
from socialhub.domain.live import RoomEvent, room_channel
from socialhub.domain.protocol import Joined, NewMessageFrame
from socialhub.errors import SocialhubError
from socialhub.infra.pubsub.base import PubSub, Subscription
from socialhub.services.members import RoomMembers
from socialhub.storage.chat import ChatStore

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
_room_event = msgspec.json.Decoder(RoomEvent)

REPLAY_BATCH = 500


class Sink(Protocol):
    """Where one socket's frames go: a bounded queue that never makes the sender wait
    (`send`: overflow disconnects the socket), or waits for the reader (`send_paced`,
    for a replay, which may be longer than the queue)."""

    @property
    def user_id(self) -> int: ...

    def send(self, data: bytes) -> None: ...

    async def send_paced(self, data: bytes) -> None: ...


class JoinCounter(Protocol):
    """Who has a socket in which room, across instances (for the `message` notification:
    members with a socket in the room are not notified)."""

    async def joined(self, room_id: int, user_id: int) -> None: ...

    async def left(self, room_id: int, user_id: int) -> None: ...


class _Member:
    """One sink in one room: the highest seq sent to it, and, while its replay runs, the
    live frames held back (None once it is live)."""

    __slots__ = ("held", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.held: list[tuple[int, bytes]] | None = []


class _Room:
    """A room with sinks here: one shared subscription to its channel."""

    def __init__(self) -> None:
        self.members: dict[Sink, _Member] = {}
        self.subscription: Subscription | None = None
        self.lock = asyncio.Lock()
        self.last_seq = 0  # the highest seq relayed from the channel
        self.lapses: dict[str, asyncio.TimerHandle] = {}  # states that end by themselves


class RoomStream:
    def __init__(self, *, pubsub: PubSub, store: ChatStore, members: RoomMembers, joins: JoinCounter) -> None:
        self._pubsub = pubsub
        self._store = store
        self._members = members
        self._joins = joins
        self._rooms: dict[int, _Room] = {}
        self._joined: dict[Sink, set[int]] = {}  # sink -> its rooms (joined or joining)
        # Tells this process's own events from the others' when the broker hands them back.
        self._origin = secrets.randbits(62) + 1
        members.add_listener(self._members_changed)

    def rooms_of(self, sink: Sink) -> frozenset[int]:
        """The rooms `sink` joined or is joining."""
        return frozenset(self._joined.get(sink, ()))

    async def join(self, sink: Sink, room_id: int, since_seq: int | None, ref: str | None = None) -> None:
        """Start the room's stream on `sink` (members only: Forbidden, or NotFound for no
        such room): `joined`, then the messages after `since_seq`, then live ones; a
        message committed at any moment is sent exactly once. Joining again answers
        `joined` with what was sent so far and changes nothing."""
        await self._members.check(sink.user_id, room_id)
        if room_id in self._joined.get(sink, ()):
            room = self._rooms.get(room_id)
            known = room.members.get(sink) if room is not None else None
            last = known.sent if known is not None and known.held is None else 0
            again = Joined(room_id=str(room_id), last_seq=last)
            if ref is not None:  # the direct reply echoes the frame's ref, as the first one does
                again = Joined(room_id=str(room_id), last_seq=last, ref=ref)
            sink.send(_encoder.encode(again))
            return
        member = _Member()
        self._joined.setdefault(sink, set()).add(room_id)
        counted = False
        try:
            room = await self._attach(room_id, sink, member)
            # Counted as present before anything is sent, so a message from now on does
            # not also notify this member.
            try:
                await self._joins.joined(room_id, sink.user_id)
                counted = True
            except SocialhubError:
                logger.warning("presence unavailable for room %s", room_id)
            last_seq = await self._store.get_last_seq(room_id)
            if not room.last_seq:
                room.last_seq = last_seq
            frame = Joined(room_id=str(room_id), last_seq=last_seq)
            if ref is not None:
                frame = Joined(room_id=str(room_id), last_seq=last_seq, ref=ref)
            sink.send(_encoder.encode(frame))
            sent = last_seq
            if since_seq is not None and since_seq < last_seq:
                for record in await self.replay(room_id, since_seq):
                    await sink.send_paced(_encoder.encode(NewMessageFrame(Message.of(record))))
                    sent = max(sent, record.seq)
            # The held frames are paced too; those arriving meanwhile are held in turn, and
            # the last (empty) batch is taken with no await before the stream goes live.
            while member.held:
                held, member.held = member.held, []
                for seq, data in held:
                    if seq == 0 or seq > sent:
                        await sink.send_paced(data)
                        sent = max(sent, seq)
            member.held = None
            member.sent = sent
        except BaseException:
            await self._detach(room_id, sink)
            if counted:
                with contextlib.suppress(SocialhubError):
                    await self._joins.left(room_id, sink.user_id)
            raise

    async def leave(self, sink: Sink, room_id: int) -> None:
        """Stop the room's stream on `sink` (nothing when it had not joined)."""
        room = self._rooms.get(room_id)
        member = room.members.get(sink) if room is not None else None
        was_in = member is not None and member.held is None
        await self._detach(room_id, sink)
        if was_in:
            try:
                await self._joins.left(room_id, sink.user_id)
            except SocialhubError:
                logger.warning("presence unavailable for room %s", room_id)

    async def leave_all(self, sink: Sink) -> None:
        """The socket closed: leave every room it joined."""
        for room_id in self.rooms_of(sink):
            await self.leave(sink, room_id)

    def reset(self) -> None:
        """The broker connection was lost: what was relayed says nothing of what was
        missed. (The sockets are closed, and resume with `since_seq`.)"""
        for room in self._rooms.values():
            room.last_seq = 0

    async def replay(self, room_id: int, since_seq: int) -> list[MessageRecord]:
        """Everything after since_seq, in order (all of it, in batches)."""
        out: list[MessageRecord] = []
        while True:
            batch = await self._store.get_messages_after(room_id, since_seq, REPLAY_BATCH)
            out += batch
            if len(batch) < REPLAY_BATCH:
                return out
            since_seq = batch[-1].seq

    async def publish(self, room_id: int, event: RoomEvent) -> None:
        """`event` to every socket joined to the room: this process's at once, the other
        instances' through the broker. Raises SocialhubError when the broker is down (this
        process's sockets have it by then)."""
        event = msgspec.structs.replace(event, origin=self._origin)
        sending = self._pubsub.publish(room_channel(room_id), _encoder.encode(event))
        room = self._rooms.get(room_id)
        if room is None:
            await sending
            return
        # The broker's copy is started first: it is sent before the sockets woken here
        # write theirs (a thousand of them take milliseconds), so other instances do
        # not wait for this one's.
        task = asyncio.get_running_loop().create_task(sending)
        try:
            await self._relay(room_id, room, event)
        finally:
            await task

    # -- the channel ----------------------------------------------------------------------

    async def _on_event(self, channel: str, payload: bytes) -> None:
        room_id = int(channel.split(":", 1)[1])
        room = self._rooms.get(room_id)
        if room is None:
            return
        try:
            event = _room_event.decode(payload)
        except msgspec.DecodeError:
            logger.warning("malformed room event ignored on %s", channel)
            return
        if event.origin == self._origin:
            return  # delivered here when it was published
        await self._relay(room_id, room, event)

    async def _relay(self, room_id: int, room: _Room, event: RoomEvent) -> None:
        if event.lapse_key:
            pending = room.lapses.pop(event.lapse_key, None)
            if pending is not None:
                pending.cancel()
            if event.lapse:
                room.lapses[event.lapse_key] = asyncio.get_running_loop().call_later(
                    event.lapse_after, self._lapse, room, event.lapse_key, bytes(event.lapse), event.exclude_user
                )
        frames: list[tuple[int, bytes]] = []
        if event.seq:
            if event.seq <= room.last_seq:
                # Possibly late (already filled from the database), but a sink still
                # joining decides for itself below.
                frames.append((event.seq, bytes(event.frame)))
            else:
                if event.seq > room.last_seq + 1:
                    frames += await self._fill(room_id, room.last_seq, event.seq)
                frames.append((event.seq, bytes(event.frame)))
                # Another relay may have gone further while the fill ran.
                room.last_seq = max(room.last_seq, event.seq)
        else:
            frames.append((0, bytes(event.frame)))
        self._deliver(room, frames, event.exclude_user)

    @staticmethod
    def _deliver(room: _Room, frames: list[tuple[int, bytes]], exclude_user: int) -> None:
        """Each frame to each sink (seq 0: not a message, always sent), held back while
        the sink's replay runs, and each seq once."""
        for sink, member in list(room.members.items()):
            if exclude_user and sink.user_id == exclude_user:
                continue
            for seq, data in frames:
                if member.held is not None:
                    member.held.append((seq, data))
                elif seq == 0:
                    sink.send(data)
                elif seq > member.sent:
                    sink.send(data)
                    member.sent = seq

    def _lapse(self, room: _Room, key: str, data: bytes, exclude_user: int) -> None:
        """A state no later event replaced ends here (its sender may be gone)."""
        room.lapses.pop(key, None)
        self._deliver(room, [(0, data)], exclude_user)

    async def _fill(self, room_id: int, after: int, upto: int) -> list[tuple[int, bytes]]:
        """The messages between `after` and `upto` (exclusive) from PostgreSQL."""
        try:
            records = await self.replay(room_id, after)
        except Exception:
            logger.exception("could not fill a gap in room %s", room_id)
            return []
        return [(r.seq, _encoder.encode(NewMessageFrame(Message.of(r)))) for r in records if r.seq < upto]

    async def _members_changed(self, room_id: int) -> None:
        """Whoever is no longer a member stops getting the room's stream."""
        room = self._rooms.get(room_id)
        if room is None:
            return
        members = await self._members.ids(room_id)
        for sink in list(room.members):
            if sink.user_id not in members:
                await self.leave(sink, room_id)

    async def _attach(self, room_id: int, sink: Sink, member: _Member) -> _Room:
        room = self._rooms.setdefault(room_id, _Room())
        async with room.lock:
            room.members[sink] = member
            if room.subscription is None:
                room.subscription = await self._pubsub.subscribe(room_channel(room_id), self._on_event)
        return room

    async def _detach(self, room_id: int, sink: Sink) -> None:
        rooms = self._joined.get(sink)
        if rooms is not None:
            rooms.discard(room_id)
            if not rooms:
                del self._joined[sink]
        room = self._rooms.get(room_id)
        if room is None:
            return
        async with room.lock:
            room.members.pop(sink, None)
            if not room.members and room.subscription is not None:
                subscription, room.subscription = room.subscription, None
                for pending in room.lapses.values():
                    pending.cancel()
                room.lapses.clear()
                if self._rooms.get(room_id) is room:
                    del self._rooms[room_id]
                await subscription.close()
