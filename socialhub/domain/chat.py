"""Rooms and messages (SPEC, Objects)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from msgspec import UNSET, UnsetType

from socialhub.domain.time import rfc3339
from socialhub.domain.users import NAME_MAX_LENGTH, UserSummary

# A room's name may be as long as a person's (our choice).
ROOM_NAME_MAX_LENGTH = NAME_MAX_LENGTH


class MessageRecord(msgspec.Struct, frozen=True):
    id: int
    room_id: int
    seq: int
    sender: UserSummary
    body: str
    client_msg_id: str
    created_at: datetime


class Message(msgspec.Struct, frozen=True):
    id: str
    room_id: str
    seq: int
    sender: UserSummary
    body: str
    client_msg_id: str
    created_at: str

    @classmethod
    def of(cls, m: MessageRecord) -> Message:
        return cls(
            id=str(m.id),
            room_id=str(m.room_id),
            seq=m.seq,
            sender=m.sender,
            body=m.body,
            client_msg_id=m.client_msg_id,
            created_at=rfc3339(m.created_at),
        )


class RoomRecord(msgspec.Struct, frozen=True):
    id: int
    kind: str
    name: str | None
    members: list[UserSummary]
    created_at: datetime
    last_seq: int
    last_read_seq: int
    last_message: MessageRecord | None


class Room(msgspec.Struct, frozen=True):
    id: str
    kind: str
    name: str | None
    members: list[UserSummary]
    created_at: str
    unread_count: int
    last_seq: int
    last_message: Message | UnsetType = UNSET

    @classmethod
    def of(cls, r: RoomRecord) -> Room:
        return cls(
            id=str(r.id),
            kind=r.kind,
            name=r.name,
            members=r.members,
            created_at=rfc3339(r.created_at),
            unread_count=max(0, r.last_seq - r.last_read_seq),
            last_seq=r.last_seq,
            last_message=Message.of(r.last_message) if r.last_message else UNSET,
        )
