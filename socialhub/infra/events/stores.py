"""What the event sources need from storage, and nothing more.

infra and storage are siblings: neither imports the other. The sources say here what
they use, as small Protocols over the value types of `domain.delivery`; storage's
`OutboxStore` and `DeadLetterStore` have these methods (structurally, without
importing this module), and app.py hands them in.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from socialhub.domain.delivery import DeadLetter, OutboxEntry, Position
from socialhub.domain.events import Envelope, Unreadable


class ReaderSession(Protocol):
    """A reader's own connection to the outbox: its lock, and word of new events. It is
    gone when the connection is: the reader then opens a new one."""

    async def try_lock(self) -> bool:
        """Take the reader's lock: one holder per reader name across every instance,
        until this session ends. False when another session holds it."""

    async def listen(self, notify: Callable[[], None]) -> None:
        """From now on call `notify` when an event is committed to the outbox (a hint:
        one can be missed, e.g. across a reconnect)."""

    def is_closed(self) -> bool:
        """Whether the connection was lost (the lock and the notifications with it)."""


class OutboxLog(Protocol):
    """The outbox as its readers see it: events in commit-safe order, and their positions."""

    def reader_session(self, name: str) -> AbstractAsyncContextManager[ReaderSession]:
        """Open a session for reader `name` (raises when the database is unreachable)."""

    async def get_position(self, name: str) -> Position:
        """Reader `name`'s saved position (the start, for a new reader)."""

    async def get_batch(self, after: Position, limit: int) -> list[OutboxEntry]:
        """Up to `limit` events after `after`, in order; only those nothing can commit before."""

    async def update_position(self, name: str, position: Position) -> None:
        """Save reader `name`'s position."""


class DeadLetterBook(Protocol):
    """Where a reader puts the events its consumer gave up on, and finds those asked for again."""

    async def insert_dead_letter(
        self,
        consumer: str,
        envelope: Envelope | Unreadable,
        error: str,
        attempts: int,
        first_failed_at: datetime.datetime,
    ) -> int:
        """Store (or, for an event already there, update) a dead letter; its id."""

    async def update_claimed_retries(self, consumer: str, limit: int) -> list[DeadLetter]:
        """Take up to `limit` of `consumer`'s retry requests (one reader each, across instances)."""

    async def update_replayed(self, dead_id: int) -> None:
        """A claimed dead letter was handled at last."""

    async def update_failed_again(self, dead_id: int, error: str, attempts: int) -> None:
        """A claimed dead letter failed again: dead, with its new error."""

    async def update_released(self, dead_id: int) -> None:
        """Give a claimed dead letter back, to be claimed again later."""


class OutboxLags(Protocol):
    """How far behind the outbox readers are (for the metrics)."""

    async def get_lags(self, names: list[str]) -> dict[str, float]:
        """Per reader: seconds since the oldest event it has not handled occurred."""


class DeadLetterCounts(Protocol):
    """How many dead letters wait (for the metrics)."""

    async def get_waiting_counts(self) -> dict[str, int]:
        """Dead letters not replayed yet, per consumer."""
