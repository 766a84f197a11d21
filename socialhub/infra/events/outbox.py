"""OutboxSource: feeds a consumer straight from the outbox table.

One reader per consumer name is active across all instances: it holds a session
advisory lock on its own connection (others wait as standbys and take over when
that connection dies). It LISTENs for the insert trigger's NOTIFY and also polls, in
case a notification is missed (they are not queued across reconnects).

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
import zlib

from socialhub.domain.events import Envelope
from socialhub.infra.events.base import Consumer, EventSource
from socialhub.infra.events.retry import ConsumerDown, RetryPolicy, Stopped, Triage, is_outage
from socialhub.storage.database import Database
from socialhub.storage.deadletters import DeadLetterStore
from socialhub.storage.outbox import OUTBOX_CHANNEL, OutboxEntry, OutboxStore, Position
from socialhub.supervisor import OutageLog, sleep_unless

logger = logging.getLogger(__name__)

BATCH_SIZE = 200
# Fallback poll when no NOTIFY arrives. NOTIFY is sent at commit, but an event becomes
# readable only once older transactions have ended, so a short re-poll follows a wake-up.
POLL_SECONDS = 1.0
REPOLL_SECONDS = 0.02
STANDBY_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 5.0
LOCK_NAMESPACE = 0x5EED  # first key of pg_try_advisory_lock(int, int); the second is the name's CRC


class OutboxSource(EventSource):
    def __init__(
        self,
        db: Database,
        store: OutboxStore,
        consumer: Consumer,
        *,
        dead_letters: DeadLetterStore | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.consumer = consumer
        # Dead letters live next to the outbox, in the same database.
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetterStore(db)
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
                await self._run_locked(stop, triage, outage)
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

    async def _run_locked(self, stop: asyncio.Event, triage: Triage[Position], outage: OutageLog) -> None:
        conn = await self.db.connect_dedicated()
        outage.ok()
        try:
            lock_key = zlib.crc32(self.consumer.name.encode()) & 0x7FFFFFFF
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE, lock_key):
                if await sleep_unless(stop, STANDBY_SECONDS):
                    return
            self.active = True
            await conn.add_listener(OUTBOX_CHANNEL, self._notified)
            position = await self.store.get_position(self.consumer.name)
            cursor = position  # past `position` only by events being held
            logger.info("outbox reader %s active", self.consumer.name)
            while not stop.is_set():
                if conn.is_closed():
                    raise ConnectionError("listen connection closed")
                # Cleared before reading, not before waiting: a NOTIFY that arrives while
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
        finally:
            self.active = False
            if not conn.is_closed():
                await conn.close(timeout=5)

    async def _deliver(
        self, triage: Triage[Position], batch: list[OutboxEntry], position: Position
    ) -> Position:
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

    def _notified(self, *args: object) -> None:
        self._wake.set()

    async def _wait(self, stop: asyncio.Event, seconds: float) -> bool:
        """Sleep until a NOTIFY (or one since the last read), `stop`, or the timeout;
        True when woken by a NOTIFY."""
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return self._wake.is_set()
