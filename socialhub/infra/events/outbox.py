"""OutboxSource: feeds a consumer straight from the outbox table.

One reader per consumer name is active across all instances: it holds the reader's
lock in a session of its own (`stores.ReaderSession`: an advisory lock on its own
connection; others wait as standbys and take over when that session dies). It is
woken by the session's notifications of new events and also polls, in case a
notification is missed (they are not queued across reconnects).

A batch goes to the consumer's `handle_batch` at once. If that fails on an outage the
reader backs off and reads the batch again; otherwise it goes through the batch event by
event under a `retry.Triage`, which retries the failing event, holds it while the
events after it pass, and dead-letters it (see retry.py). The saved position never
passes an event that is held: only the in-memory read cursor does. Between batches the
reader replays the dead letters `socialhub events retry` asked for.
"""

from __future__ import annotations

import asyncio
import logging

from socialhub.domain.delivery import OutboxEntry, Position
from socialhub.domain.events import Envelope
from socialhub.infra.events.base import Consumer, EventSource
from socialhub.infra.events.retry import ConsumerDown, RetryPolicy, Stopped, Triage, is_outage
from socialhub.infra.events.stores import DeadLetterBook, OutboxLog, ReaderSession
from socialhub.supervisor import OutageLog, sleep_unless

logger = logging.getLogger(__name__)

BATCH_SIZE = 200
# Fallback poll when no NOTIFY arrives. NOTIFY is sent at commit, but an event becomes
# readable only once older transactions have ended, so a short re-poll follows a wake-up.
POLL_SECONDS = 1.0
REPOLL_SECONDS = 0.02
STANDBY_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 5.0


class OutboxSource(EventSource):
    def __init__(
        self,
        store: OutboxLog,
        consumer: Consumer,
        *,
        dead_letters: DeadLetterBook | None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.store = store
        self.consumer = consumer
        # None only for a source tried alone: a failing event is then retried until it passes.
        self.dead_letters = dead_letters
        self.policy = policy or RetryPolicy()
        self._wake = asyncio.Event()
        self.active = False  # True while this instance holds the reader's lock

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        outage = OutageLog(logger, f"outbox reader {self.consumer.name}")
        while not stop.is_set():
            # A fresh triage each time: after a failure the reader goes back to its saved
            # position, which is before any event it was holding.
            triage: Triage[Position] = Triage(self.consumer, self.dead_letters, self.policy, stop)
            try:
                await self._run_session(stop, triage, outage)
                backoff = 0.1
            except Stopped:
                break
            except ConsumerDown as exc:
                logger.error("outbox reader %s: %s; starting again from the first of them", self.consumer.name, exc)
            except Exception as exc:
                # An outage is told once when it starts and when it ends (no traceback per
                # retry); anything else is a fault of ours and keeps its traceback.
                if is_outage(exc):
                    outage.failed(exc)
                else:
                    logger.exception("outbox reader %s failed; retrying", self.consumer.name)
            self.active = False
            await sleep_unless(stop, backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _run_session(self, stop: asyncio.Event, triage: Triage[Position], outage: OutageLog) -> None:
        async with self.store.reader_session(self.consumer.name) as session:
            outage.ok()
            try:
                await self._read(stop, triage, session)
            finally:
                self.active = False

    async def _read(self, stop: asyncio.Event, triage: Triage[Position], session: ReaderSession) -> None:
        while not await session.try_lock():
            if await sleep_unless(stop, STANDBY_SECONDS):
                return
        self.active = True
        await session.listen(self._wake.set)
        position = await self.store.get_position(self.consumer.name)
        cursor = position  # past `position` only by events being held
        logger.info("outbox reader %s active", self.consumer.name)
        while not stop.is_set():
            if session.is_closed():
                raise ConnectionError("listen connection closed")
            # Cleared before reading, not before waiting: a notification that arrives while
            # a batch is being handled must cut the next wait short.
            self._wake.clear()
            await triage.replay_requested()
            batch = await self.store.get_batch(cursor, BATCH_SIZE)
            if batch:
                position = await self._deliver(triage, batch, position)
                cursor = batch[-1].position
                if len(batch) == BATCH_SIZE:
                    continue
            woken = await self._wait(stop, POLL_SECONDS)
            if woken:
                await sleep_unless(stop, REPOLL_SECONDS)

    async def _deliver(self, triage: Triage[Position], batch: list[OutboxEntry], position: Position) -> Position:
        """Hand `batch` to the consumer; the position saved afterwards."""
        envelopes = [e.envelope for e in batch if isinstance(e.envelope, Envelope)]
        if not triage.held and len(envelopes) == len(batch):
            try:
                await self.consumer.handle_batch(envelopes)
            except Exception as exc:
                triage.count_batch_failure(exc)
                if is_outage(exc):
                    raise
            else:
                triage.note_passed(envelopes[-1])
                await self.store.update_position(self.consumer.name, batch[-1].position)
                return batch[-1].position
        # Event by event (consumers are idempotent: those before the failure were
        # handled already, and are again).
        saved = position
        for entry in batch:
            if await triage.deliver(entry.position, entry.envelope):
                position = entry.position
        if triage.held:
            await triage.check_held()
            if not triage.held:
                position = batch[-1].position
        if position != saved:
            await self.store.update_position(self.consumer.name, position)
        return position

    async def _wait(self, stop: asyncio.Event, seconds: float) -> bool:
        """Sleep until a notification (or one since the last read), `stop`, or the
        timeout; True when woken by a notification."""
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return self._wake.is_set()
