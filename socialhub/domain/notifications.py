"""Notifications (SPEC, Objects)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import msgspec
from msgspec import UNSET, UnsetType

from socialhub.domain.time import rfc3339
from socialhub.domain.users import UserSummary

TYPES = ("post", "comment", "like", "follow", "message", "missed_call")


class NewNotification(msgspec.Struct, frozen=True):
    user_id: int
    type: str
    actor_id: int
    post_id: int | None = None
    comment_id: int | None = None
    room_id: int | None = None
    call_id: int | None = None


Notifier = Callable[[NewNotification], Awaitable[object]]
"""Store a notification and push it to the user (NotificationService.notify)."""

ManyNotifier = Callable[[Sequence[NewNotification]], Awaitable[object]]
"""Store notifications in one statement and push each to its user (NotificationService.notify_all)."""


class NotificationRecord(msgspec.Struct, frozen=True):
    id: int
    user_id: int
    type: str
    actor: UserSummary
    post_id: int | None
    comment_id: int | None
    room_id: int | None
    call_id: int | None
    created_at: datetime
    read: bool


def _opt(value: int | None) -> str | UnsetType:
    return str(value) if value is not None else UNSET


class Notification(msgspec.Struct, frozen=True):
    id: str
    type: str
    actor: UserSummary
    created_at: str
    read: bool
    post_id: str | UnsetType = UNSET
    comment_id: str | UnsetType = UNSET
    room_id: str | UnsetType = UNSET
    call_id: str | UnsetType = UNSET

    @classmethod
    def of(cls, n: NotificationRecord) -> Notification:
        return cls(
            id=str(n.id),
            type=n.type,
            actor=n.actor,
            created_at=rfc3339(n.created_at),
            read=n.read,
            post_id=_opt(n.post_id),
            comment_id=_opt(n.comment_id),
            room_id=_opt(n.room_id),
            call_id=_opt(n.call_id),
        )
