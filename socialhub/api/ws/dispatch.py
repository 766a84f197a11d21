"""Frame type -> service call. Each handler answers the frame (ack, joined, pong...)
or raises a SocialhubError, which the endpoint turns into an `error` frame."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec

from socialhub.api.ws.hub import Hub
from socialhub.api.ws.session import Session
from socialhub.domain.protocol import (
    MAX_PRESENCE_IDS,
    Ack,
    CallAnswer,
    CallCandidate,
    CallHangup,
    CallInvite,
    CallReject,
    Frame,
    JoinRoom,
    LeaveRoom,
    Ping,
    Pong,
    Read,
    SendMessage,
    SubscribePresence,
    Typing,
)
from socialhub.domain.users import Principal
from socialhub.errors import BadRequest, NotFound, invalid
from socialhub.ids import parse_id
from socialhub.services.calls import CallService
from socialhub.services.chat import ChatService
from socialhub.services.roomstream import RoomStream

_encoder = msgspec.json.Encoder()


def _id(value: str, what: str) -> int:
    parsed = parse_id(value)
    if parsed is None:
        raise NotFound(f"no such {what}")
    return parsed


class Dispatcher:
    def __init__(
        self,
        *,
        hub: Hub,
        rooms: RoomStream,
        chat: ChatService,
        presence_status: Callable[[list[int]], Awaitable[list[Any]]],
        calls: CallService,
    ) -> None:
        self.hub = hub
        self.rooms = rooms
        self.chat = chat
        self.presence_status = presence_status
        self.calls = calls

    async def dispatch(self, session: Session, frame: Frame) -> None:
        handler = self.HANDLERS.get(type(frame))
        if handler is None:
            raise BadRequest("this frame is only valid as the first frame")
        await handler(self, session, frame)

    @staticmethod
    def _principal(session: Session) -> Principal:
        return Principal(user_id=session.user_id, session_id=session.session_id)

    @staticmethod
    def _ack(session: Session, frame: Frame) -> None:
        if frame.ref is not None:
            session.send(_encoder.encode(Ack(ref=frame.ref)))

    async def join_room(self, session: Session, frame: JoinRoom) -> None:
        await self.rooms.join(session, _id(frame.room_id, "room"), frame.since_seq, frame.ref)

    async def leave_room(self, session: Session, frame: LeaveRoom) -> None:
        await self.rooms.leave(session, _id(frame.room_id, "room"))
        self._ack(session, frame)

    async def send_message(self, session: Session, frame: SendMessage) -> None:
        room_id = _id(frame.room_id, "room")
        message = await self.chat.send(self._principal(session), room_id, frame.body, frame.client_msg_id)
        session.send(_encoder.encode(Ack(ref=frame.ref, message=message)))

    async def typing(self, session: Session, frame: Typing) -> None:
        await self.chat.typing(self._principal(session), _id(frame.room_id, "room"), frame.state)
        self._ack(session, frame)

    async def read(self, session: Session, frame: Read) -> None:
        await self.chat.read(self._principal(session), _id(frame.room_id, "room"), frame.seq)
        self._ack(session, frame)

    async def subscribe_presence(self, session: Session, frame: SubscribePresence) -> None:
        ids = sorted({_id(u, "user") for u in frame.user_ids})
        if len(self.hub.watching(session).union(ids)) > MAX_PRESENCE_IDS:
            raise invalid("user_ids", f"a socket follows the presence of at most {MAX_PRESENCE_IDS} users")
        for user_id in ids:
            await self.hub.watch(session, user_id)
        # The snapshot is one frame per user, possibly thousands: it is paced like a room's
        # replay (at the client's reading speed, the send buffer under its high-water mark)
        # rather than poured into the bounded buffer, whose overflow means a client that
        # does not read.
        for view in await self.presence_status(ids):
            await session.send_paced(_encoder.encode(view))
        self._ack(session, frame)

    async def ping(self, session: Session, frame: Ping) -> None:
        session.send(_encoder.encode(Pong() if frame.ref is None else Pong(ref=frame.ref)))

    async def call_invite(self, session: Session, frame: CallInvite) -> None:
        callee = _id(frame.callee_id, "user")
        call = await self.calls.invite(self._principal(session), session.socket_id, callee, frame.media, frame.sdp)
        session.send(_encoder.encode(Ack(ref=frame.ref, call=call)))

    async def call_answer(self, session: Session, frame: CallAnswer) -> None:
        call_id = _id(frame.call_id, "call")
        call = await self.calls.answer(self._principal(session), session.socket_id, call_id, frame.sdp)
        session.send(_encoder.encode(Ack(ref=frame.ref, call=call)))

    async def call_candidate(self, session: Session, frame: CallCandidate) -> None:
        await self.calls.candidate(self._principal(session), _id(frame.call_id, "call"), frame.candidate)
        self._ack(session, frame)

    async def call_reject(self, session: Session, frame: CallReject) -> None:
        call = await self.calls.reject(self._principal(session), _id(frame.call_id, "call"))
        session.send(_encoder.encode(Ack(ref=frame.ref, call=call)))

    async def call_hangup(self, session: Session, frame: CallHangup) -> None:
        call = await self.calls.hangup(self._principal(session), _id(frame.call_id, "call"))
        session.send(_encoder.encode(Ack(ref=frame.ref, call=call)))

    # Every client frame but `authenticate` (the endpoint's, and only as the first frame).
    HANDLERS: ClassVar[dict[type[Frame], Callable[[Dispatcher, Session, Any], Awaitable[None]]]] = {
        JoinRoom: join_room,
        LeaveRoom: leave_room,
        SendMessage: send_message,
        Typing: typing,
        Read: read,
        SubscribePresence: subscribe_presence,
        Ping: ping,
        CallInvite: call_invite,
        CallAnswer: call_answer,
        CallCandidate: call_candidate,
        CallReject: call_reject,
        CallHangup: call_hangup,
    }
