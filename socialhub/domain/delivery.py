"""What event delivery keeps about its events: where a reader of the outbox is, what it
reads, and the dead letters a consumer gave up on.

Shared by the two sides that must not know each other: storage (which reads and writes
them) and the event sources under infra (which use them); app.py hands the one to the
other.
"""

from __future__ import annotations

import datetime

import msgspec

from socialhub.domain.events import Envelope, Unreadable


class Position(msgspec.Struct, frozen=True, order=True):
    """Where a reader is: the last event it has handled. Ordered as the outbox is read,
    by transaction id, then event id."""

    xid: int
    id: int


class OutboxEntry(msgspec.Struct, frozen=True):
    """One event of the outbox, in its place; one this version cannot read comes as an
    `Unreadable`."""

    position: Position
    envelope: Envelope | Unreadable


class DeadLetter(msgspec.Struct, frozen=True):
    """An event a consumer gave up on, kept as it was sent."""

    id: int
    consumer: str
    envelope: Envelope | Unreadable
    error: str
    attempts: int
    first_failed_at: datetime.datetime
    dead_at: datetime.datetime
    status: str  # dead, retry (asked for again), replaying (taken by a reader), replayed
    status_at: datetime.datetime
