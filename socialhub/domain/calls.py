"""Calls (SPEC, Objects); their signaling frames are in domain/protocol.py."""

from __future__ import annotations

from datetime import datetime

import msgspec
from msgspec import UNSET, UnsetType

from socialhub.domain.time import rfc3339, rfc3339_or_unset
from socialhub.domain.users import UserSummary

RINGING, ACTIVE, ENDED = "ringing", "active", "ended"
# Reasons a call ends (SPEC: call_ended reasons); "disconnected" is noted when a party
# vanished, and clients get "hangup" for it.
BUSY, MISSED, ANSWERED_ELSEWHERE, REJECTED, HANGUP, DISCONNECTED = (
    "busy",
    "missed",
    "answered_elsewhere",
    "rejected",
    "hangup",
    "disconnected",
)


class CallRecord(msgspec.Struct, frozen=True):
    id: int
    room_id: int | None
    caller: UserSummary
    callee: UserSummary
    media: str
    state: str
    end_reason: str | None
    caller_socket_id: int
    callee_socket_id: int | None
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None

    @property
    def caller_id(self) -> int:
        return int(self.caller.id)

    @property
    def callee_id(self) -> int:
        return int(self.callee.id)


class Call(msgspec.Struct, frozen=True):
    id: str
    caller: UserSummary
    callee: UserSummary
    media: str
    state: str
    started_at: str
    room_id: str | UnsetType = UNSET
    end_reason: str | UnsetType = UNSET
    answered_at: str | UnsetType = UNSET
    ended_at: str | UnsetType = UNSET

    @classmethod
    def of(cls, c: CallRecord) -> Call:
        return cls(
            id=str(c.id),
            caller=c.caller,
            callee=c.callee,
            media=c.media,
            state=c.state,
            started_at=rfc3339(c.started_at),
            room_id=str(c.room_id) if c.room_id is not None else UNSET,
            end_reason=c.end_reason if c.end_reason is not None else UNSET,
            answered_at=rfc3339_or_unset(c.answered_at),
            ended_at=rfc3339_or_unset(c.ended_at),
        )
