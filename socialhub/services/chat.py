"""Chat: rooms, messages with a gap-free seq, read receipts, typing.

PostgreSQL is the truth; live frames go to the room stream after the statement
commits (services/roomstream.py: this instance's sockets at once, the others' through
the room's pub/sub channel). A socket that may have missed something resumes with
`since_seq`. The `message` notifications of the members with no socket in the room are
made after the ack, off the sender's path (see `send`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Set as AbstractSet
from typing import Protocol

from socialhub.domain.chat import Message, MessageRecord, Room
from socialhub.domain.live import RoomEvent, room_event
from socialhub.domain.notifications import ManyNotifier, NewNotification
from socialhub.domain.pages import Page, PageRequest, page_of
from socialhub.domain.protocol import TYPING_EXPIRES_SECONDS, NewMessageFrame, ReadFrame, TypingFrame
from socialhub.domain.users import Principal
from socialhub.errors import Forbidden, NotFound, SocialhubError, ValidationFailed
from socialhub.services.members import RoomMembers
from socialhub.services.roomstream import RoomStream
from socialhub.storage.chat import ChatStore
from socialhub.storage.users import UserStore
from socialhub.supervisor import Spawn

logger = logging.getLogger(__name__)

# Enough for the 1,000-member fan-out benchmark and for real groups; Matrix rooms are
# bigger, but they are not a chat of friends.
MAX_ROOM_MEMBERS = 5000
# The typer's instance sends that `typing false`; if it is gone, every other instance
# tells its own sockets this much later.
TYPING_LAPSE_GRACE = 2.0


class JoinedUsers(Protocol):
    """Who has a socket joined to a room (services/roomjoins.RoomJoins)."""

    def joined_here(self, room_id: int) -> AbstractSet[int]:
        """Users with a socket joined to the room on this instance (no I/O)."""
        ...

    async def joined_users(self, room_id: int) -> set[int]:
        """Users with a socket joined to the room on any live instance."""
        ...


class ChatService:
    def __init__(
        self,
        *,
        store: ChatStore,
        users: UserStore,
        members: RoomMembers,
        rooms: RoomStream,
        notify: ManyNotifier,
        joins: JoinedUsers,
        spawn: Spawn,
    ) -> None:
        self.store = store
        self.users = users
        self.members = members
        self.stream = rooms
        self.notify = notify
        self.joins = joins
        self.spawn = spawn
        self._typing: dict[tuple[int, int], asyncio.TimerHandle] = {}

    # -- rooms ---------------------------------------------------------------------------

    async def create_room(self, viewer: Principal, member_ids: list[int], name: str | None) -> tuple[Room, bool]:
        """(room, created). One other member and no name: a direct room, unique per pair."""
        others = sorted({m for m in member_ids if m != viewer.user_id})
        if not others:
            raise ValidationFailed("a room needs at least one other member", fields={"members": "no other member"})
        if len(others) + 1 > MAX_ROOM_MEMBERS:
            raise ValidationFailed(
                f"at most {MAX_ROOM_MEMBERS} members", fields={"members": f"at most {MAX_ROOM_MEMBERS}"}
            )
        found = await self.users.get_existing_user_ids(others)
        if len(found) != len(others):
            raise NotFound("no such user among the members")
        direct = len(others) == 1 and not name
        key = f"{min(viewer.user_id, others[0])}:{max(viewer.user_id, others[0])}" if direct else None
        inserted = await self.store.insert_room(
            kind="direct" if direct else "group",
            name=name,
            creator=viewer.user_id,
            members=[viewer.user_id, *others],
            direct_key=key,
        )
        room = await self.store.get_room(inserted.id, viewer.user_id)
        assert room is not None
        return Room.of(room), inserted.created

    async def rooms(self, viewer: Principal, page: PageRequest) -> Page[Room]:
        records = await self.store.get_rooms(viewer.user_id, page.before, page.limit)
        return page_of([Room.of(r) for r in records], [r.id for r in records], page.limit)

    async def check_member(self, viewer_id: int, room_id: int) -> None:
        """Forbidden for a non-member (NotFound when the room does not exist)."""
        await self.members.check(viewer_id, room_id)

    async def history(self, viewer: Principal, room_id: int, page: PageRequest) -> Page[Message]:
        await self.check_member(viewer.user_id, room_id)
        records = await self.store.get_history(room_id, page.before, page.limit)
        return page_of([Message.of(r) for r in records], [r.id for r in records], page.limit)

    # -- live ----------------------------------------------------------------------------

    async def send(self, viewer: Principal, room_id: int, body: str, client_msg_id: str) -> Message:
        """Store once per client_msg_id and relay it to the room; the first time, also
        notify the members with no socket in the room.

        One statement to PostgreSQL (it checks membership, assigns seq and stores), then
        the relay; the notifications are made in the background, after the ack. They are
        as durable as before, when they were made before the ack: a crash after the
        commit loses them either way, since a resend finds the message stored and
        notifies no one."""
        result = await self.store.insert_message(room_id, viewer.user_id, body, client_msg_id)
        if result is None:
            await self.check_member(viewer.user_id, room_id)  # raises NotFound or Forbidden
            raise Forbidden("only the room's members may do that")
        record = result.message
        message = Message.of(record)
        # A resend is relayed too: the first try may have committed and died (SIGKILL,
        # a lost Redis) before relaying, and the ack it never got is why it is resent.
        # Sockets drop a seq they already have, so a relayed duplicate is harmless.
        await self._publish(room_id, room_event(NewMessageFrame(message), seq=record.seq))
        if result.created:
            self.spawn("message notifications", self._notify_absent(record))
        return message

    async def _notify_absent(self, record: MessageRecord) -> None:
        sender = int(record.sender.id)
        try:
            members = await self.members.ids(record.room_id)
            # Everyone in the room here (a conversation on one instance): nothing to ask.
            others = members - {sender} - self.joins.joined_here(record.room_id)
            if others:
                others -= await self.joins.joined_users(record.room_id)
        except SocialhubError:
            logger.warning("could not tell who is in room %s; no message notifications", record.room_id)
            return
        absent = [NewNotification(user_id, "message", sender, room_id=record.room_id) for user_id in others]
        if absent:
            try:
                await self.notify(absent)
            except SocialhubError:
                logger.warning("could not store the message notifications of room %s", record.room_id)

    async def typing(self, viewer: Principal, room_id: int, state: bool) -> None:
        """Relay to the others; a `true` not renewed within TYPING_EXPIRES_SECONDS turns `false`."""
        await self.check_member(viewer.user_id, room_id)
        key = (room_id, viewer.user_id)
        timer = self._typing.pop(key, None)
        if timer is not None:
            timer.cancel()
        if state:
            loop = asyncio.get_running_loop()
            self._typing[key] = loop.call_later(TYPING_EXPIRES_SECONDS, self._typing_expired, room_id, viewer.user_id)
        await self._publish_typing(room_id, viewer.user_id, state)

    def _typing_expired(self, room_id: int, user_id: int) -> None:
        self._typing.pop((room_id, user_id), None)
        # Only worth sending while the process serves: not waited for at shutdown.
        self.spawn("typing lapse", self._publish_typing(room_id, user_id, False), wait=False)

    async def _publish_typing(self, room_id: int, user_id: int, state: bool) -> None:
        frame = TypingFrame(room_id=str(room_id), user_id=str(user_id), state=state)
        ends = TypingFrame(room_id=str(room_id), user_id=str(user_id), state=False) if state else None
        await self._publish(
            room_id,
            room_event(
                frame,
                exclude_user=user_id,
                lapse_key=f"typing:{user_id}",
                lapse_after=TYPING_EXPIRES_SECONDS + TYPING_LAPSE_GRACE,
                lapse=ends,
            ),
        )

    def stop(self) -> None:
        for timer in self._typing.values():
            timer.cancel()
        self._typing.clear()

    async def read(self, viewer: Principal, room_id: int, seq: int) -> None:
        position = await self.store.update_read(room_id, viewer.user_id, seq)
        if position is None:
            await self.check_member(viewer.user_id, room_id)
            raise Forbidden("only the room's members may do that")
        frame = ReadFrame(room_id=str(room_id), user_id=str(viewer.user_id), seq=position)
        await self._publish(room_id, room_event(frame, exclude_user=viewer.user_id))

    async def _publish(self, room_id: int, event: RoomEvent) -> None:
        try:
            await self.stream.publish(room_id, event)
        except SocialhubError:
            # Stored is what counts: sockets that missed it resume with since_seq.
            logger.warning("could not relay a frame to room %s", room_id)
