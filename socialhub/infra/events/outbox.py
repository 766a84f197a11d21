"""OutboxSource: feeds a consumer straight from the outbox table.

One reader per consumer name is active across all instances: it holds a session
advisory lock on its own connection (others wait as standbys and take over when
that connection dies). It LISTENs for the insert trigger's NOTIFY and also polls, in
case a notification is missed (they are not queued across reconnects).
"""

from __future__ import annotations

import asyncio
import logging
import zlib

import asyncpg

from socialhub.infra.events.base import Consumer, EventSource
from socialhub.storage.database import Database
from socialhub.storage.outbox import OUTBOX_CHANNEL, OutboxStore

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
    def __init__(self, db: Database, store: OutboxStore, consumer: Consumer) -> None:
        self.db = db
        self.store = store
        self.consumer = consumer
        self._wake = asyncio.Event()
        self.active = False  # True while this instance holds the reader's lock

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                await self._run_locked(stop)
                backoff = 0.1
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                logger.warning("outbox reader %s lost its connection; retrying", self.consumer.name, exc_info=True)
            except Exception:
                logger.exception("outbox reader %s failed; retrying", self.consumer.name)
            self.active = False
            await _sleep_unless(stop, backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _run_locked(self, stop: asyncio.Event) -> None:
        conn = await self.db.connect_dedicated()
        try:
            lock_key = zlib.crc32(self.consumer.name.encode()) & 0x7FFFFFFF
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE, lock_key):
                if await _sleep_unless(stop, STANDBY_SECONDS):
                    return
            self.active = True
            await conn.add_listener(OUTBOX_CHANNEL, self._notified)
            position = await self.store.get_position(self.consumer.name)
            logger.info("outbox reader %s active", self.consumer.name)
            while not stop.is_set():
                if conn.is_closed():
                    raise ConnectionError("listen connection closed")
                # Cleared before reading, not before waiting: a NOTIFY that arrives while
                # a batch is being handled must cut the next wait short.
                self._wake.clear()
                batch = await self.store.get_batch(position, BATCH_SIZE)
                if batch:
                    await self.consumer.handle_batch([envelope for _, envelope in batch])
                    position = batch[-1][0]
                    await self.store.update_position(self.consumer.name, position)
                    if len(batch) == BATCH_SIZE:
                        continue
                woken = await self._wait(stop, POLL_SECONDS)
                if woken:
                    await _sleep_unless(stop, REPOLL_SECONDS)
        finally:
            self.active = False
            if not conn.is_closed():
                await conn.close(timeout=5)

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


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` or until `stop`; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
