"""What an event reader does when its consumer fails: retry, hold, dead-letter.

Both sources (`outbox.OutboxSource`, `kafka.KafkaSource`) hand each event to a `Triage`.
A failure is one of two things, told apart in two ways:

1. **An outage**: the consumer could not reach something it needs (PostgreSQL, Redis,
   the Kafka broker). `is_outage` recognises it by the exception's class, following its
   `__cause__` chain: `OSError`/`TimeoutError`, asyncpg's connection-class errors
   (SQLSTATE classes 08, 53 and 57 except a cancelled statement; a closed connection or
   pool), Redis connection errors, Kafka errors the client marks retriable, and
   socialhub's own `Unavailable`. The event is not at fault: nothing is counted against
   it, the reader backs off and tries again, as long as it takes. Never a dead letter.
2. **A failure of the event itself** (poison: data a handler cannot apply). The event is
   tried `attempts - 1` times in place, with doubling backoff. If it still fails it is
   *held*, and the reader goes on with the events after it. It becomes a dead letter
   only once the consumer has been seen working after that failure, and one last try
   of the event, after that, fails again. Seen working: an event after it went
   through; or, when the batch ends with events held, the last event that went
   through is handed to the consumer once more (a no-op: consumers are idempotent)
   and passes. So a failure that is not recognised as an outage but hits every event
   (a handler broken for all) dead-letters nothing: nothing passes, and after
   `MAX_HELD` held events in a row the reader takes the consumer for down, goes back to
   the first held event and starts over after a backoff. And when such a failure ends,
   the last try of each held event passes: no dead letter either.

3. **An event that cannot be read** (`Unreadable`: a type this version does not know,
   data that does not fit its type, from the outbox or a Kafka record). It never
   reaches the consumer and no try could change it, so it is poison at once: a dead
   letter with one attempt, kept as it was sent. A later version that can read it
   replays it on `socialhub events retry`; this one marks such a retry failed again.

The cost: a held event's position is not saved (nor its Kafka offset committed) until
it is settled, so after a restart it and the events after it are delivered again
(consumers are idempotent); the check "seen working" may deliver one event twice (for
the relay: publish it twice). A run of more than `MAX_HELD` poison events with nothing
good between them is indistinguishable from a broken consumer and holds the stream.

Dead letters go to a `stores.DeadLetterBook` (storage's `DeadLetterStore`, handed in by
app.py); `socialhub events retry` marks them, and the running reader of that consumer
(`replay_requested`, polled every `replay_poll` seconds) claims and handles them again.
Without a store (`dead_letters=None`, tests of a source alone) a failing event is
retried until it passes, as before dead letters existed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import re
import time
from typing import Generic, TypeVar

import aiokafka.errors as kafka_errors
import asyncpg
import redis.exceptions

from socialhub.domain.delivery import DeadLetter
from socialhub.domain.events import Envelope, Unreadable
from socialhub.errors import Unavailable
from socialhub.infra.events.base import Consumer
from socialhub.infra.events.metrics import DEAD_LETTERED, EVENT_ERRORS, REPLAYS
from socialhub.infra.events.stores import DeadLetterBook
from socialhub.supervisor import sleep_unless

logger = logging.getLogger(__name__)

W = TypeVar("W")

# Defaults of the [events] settings (socialhub.toml explains the numbers).
ATTEMPTS = 5
BACKOFF = 0.5
BACKOFF_MAX = 10.0
REPLAY_POLL = 5.0
# Held events in a row, with none passing, after which the consumer counts as down. Each
# costs its tries in a row (3.5 s with the defaults), so about a minute of trying
# ahead before a reader with a broken consumer stops reading ahead; a run of poison
# events this long is not expected from one bad write.
MAX_HELD = 20
# Retry requests a reader claims at once (one query per poll).
REPLAY_BATCH = 50
# Stored error text: the exception's type and message, this long at most.
ERROR_MAX_CHARS = 2000
_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]*@", re.IGNORECASE)
_SECRET_WORDS = re.compile(r"\b(password|passwd|secret|token)=\S+", re.IGNORECASE)

_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    Unavailable,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.exceptions.AdminShutdownError,  # 57: the server is going away
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kafka_errors.KafkaConnectionError,
    kafka_errors.KafkaTimeoutError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says a dependency is unreachable, not that the
    event is bad."""
    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; a cycle must not loop forever
        if seen is None:
            return False
        if isinstance(seen, _OUTAGE_TYPES):
            return True
        # A closed connection or pool, but not DataError (an argument the query refused).
        if isinstance(seen, asyncpg.InterfaceError) and not isinstance(seen, asyncpg.DataError):
            return True
        if isinstance(seen, kafka_errors.KafkaError) and seen.retriable:
            return True
        seen = seen.__cause__
    return False


def describe(exc: BaseException) -> str:
    """The error text kept with a dead letter: type and message, credentials masked."""
    text = f"{type(exc).__name__}: {exc}"
    text = _CREDENTIALS.sub(r"\1***@", text)
    text = _SECRET_WORDS.sub(r"\1=***", text)
    return text[:ERROR_MAX_CHARS]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = ATTEMPTS  # tries of one event before it is dead-lettered (at least 2)
    backoff: float = BACKOFF  # wait before the second try; doubles each time
    backoff_max: float = BACKOFF_MAX
    replay_poll: float = REPLAY_POLL  # how often a reader looks for retry requests

    def delay(self, tries: int) -> float:
        return float(min(self.backoff * 2 ** (tries - 1), self.backoff_max))


class Stopped(Exception):
    """The reader's `stop` was set while it waited between tries."""


class ConsumerDown(Exception):
    """`MAX_HELD` events in a row failed with nothing passing: the consumer is broken, not the events."""


@dataclasses.dataclass(frozen=True)
class Failure:
    tries: int
    first_failed_at: datetime.datetime
    error: str


@dataclasses.dataclass(frozen=True)
class Held(Generic[W]):
    """An event that failed its tries, waiting to see whether others pass."""

    where: W  # the source's position of it (outbox (xid, id), or Kafka partition and offset)
    envelope: Envelope
    failure: Failure


class Triage(Generic[W]):
    """One reader's retries, held events and dead letters (see the module docstring)."""

    def __init__(
        self, consumer: Consumer, dead_letters: DeadLetterBook | None, policy: RetryPolicy, stop: asyncio.Event
    ) -> None:
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.policy = policy
        self.stop = stop
        self.held: list[Held[W]] = []
        self.last_passed: Envelope | None = None  # handed again to see whether the consumer works
        self._replay_checked = 0.0

    def reset(self) -> None:
        """Forget held events (the reader goes back to its saved position)."""
        self.held.clear()

    def note_passed(self, envelope: Envelope) -> None:
        """The source handled events without the triage (a whole batch at once)."""
        self.last_passed = envelope

    async def check_held(self) -> None:
        """At the end of a batch with events held: if the last event that passed passes
        again, the consumer works and the held events are settled; if it fails, the
        consumer is broken and they stay held. Raises on an outage."""
        if not self.held or self.last_passed is None:
            return
        if await self._tries(self.last_passed, 1) is None:
            await self.settle()

    def count_batch_failure(self, exc: Exception) -> None:
        """A whole-batch call failed (the source will go event by event, or back off)."""
        EVENT_ERRORS.labels(self.consumer.name, "outage" if is_outage(exc) else "event").inc()
        logger.warning("consumer %s failed on a batch: %s", self.consumer.name, describe(exc))

    async def deliver(self, where: W, envelope: Envelope | Unreadable) -> bool:
        """Handle one event. True: handled, and every event held before it settled.
        False: it is held (or events before it are). Raises the consumer's error on an
        outage (after saying so in the metrics), `ConsumerDown`, or `Stopped`."""
        if isinstance(envelope, Unreadable):
            await self._unreadable(envelope)
            return not self.held
        if self.dead_letters is None:
            failure = await self._tries(envelope, self.policy.attempts)
            if failure is not None:
                raise RuntimeError(f"{self.consumer.name} failed on event {envelope.event_id}: {failure.error}")
            return True
        failure = await self._tries(envelope, self.policy.attempts - 1)
        if failure is None:
            await self.settle()
            return True
        self.held.append(Held(where, envelope, failure))
        if len(self.held) > MAX_HELD:
            raise ConsumerDown(f"{len(self.held)} events in a row failed in consumer {self.consumer.name}")
        return False

    async def settle(self) -> None:
        """Another event went through, so the consumer works: each held event gets one
        last try, and those that fail it are poison and become dead letters."""
        held, self.held = self.held, []
        for i, h in enumerate(held):
            try:
                failure = await self._tries(h.envelope, 1)
                if failure is not None:
                    await self._dead_letter(h, failure)
            except BaseException:
                self.held = held[i:]  # still unsettled, for the reader to go back to
                raise

    async def _dead_letter(self, h: Held[W], last: Failure) -> None:
        tries = h.failure.tries + last.tries
        dead_id = await self._store(h.envelope, last.error, tries, h.failure.first_failed_at)
        if dead_id is None:
            return
        logger.error(
            "consumer %s gave up on event %s (%s) after %d tries while others passed: dead letter %d (%s)",
            self.consumer.name,
            h.envelope.event_id,
            h.envelope.event_type,
            tries,
            dead_id,
            last.error,
        )

    async def _unreadable(self, bad: Unreadable) -> None:
        EVENT_ERRORS.labels(self.consumer.name, "event").inc()
        if self.dead_letters is None:
            logger.error(
                "consumer %s: event %s (%r) cannot be read (%s); skipped",
                self.consumer.name,
                bad.event_id,
                bad.event_type,
                bad.error,
            )
            return
        dead_id = await self._store(bad, bad.error, 1, datetime.datetime.now(datetime.UTC))
        if dead_id is not None:
            logger.error(
                "consumer %s: event %s (%r) cannot be read (%s): dead letter %d",
                self.consumer.name,
                bad.event_id,
                bad.event_type,
                bad.error,
                dead_id,
            )

    async def _store(
        self, envelope: Envelope | Unreadable, error: str, tries: int, first_failed_at: datetime.datetime
    ) -> int | None:
        """Insert a dead letter; its id. None when the database refuses this one (a value
        jsonb cannot hold, such as a U+0000 in a string of a Kafka record): it is logged
        and dropped, since retrying could never store it and would stop the stream.
        Raises on an outage (the reader retries)."""
        assert self.dead_letters is not None
        try:
            dead_id = await self.dead_letters.insert_dead_letter(
                self.consumer.name, envelope, error, tries, first_failed_at
            )
        except Exception as exc:
            if is_outage(exc):
                raise
            logger.error(
                "consumer %s could not store event %s (%r) as a dead letter (%s); dropped",
                self.consumer.name,
                envelope.event_id,
                envelope.event_type,
                describe(exc),
            )
            return None
        DEAD_LETTERED.labels(self.consumer.name).inc()
        return dead_id

    async def _tries(self, envelope: Envelope, count: int) -> Failure | None:
        """Up to `count` tries with backoff between them; None once one passed. An outage
        is raised at once: retrying it is the reader's business, not this event's."""
        first: datetime.datetime | None = None
        for n in range(1, count + 1):
            try:
                await self.consumer.handle(envelope)
                self.last_passed = envelope
                return None
            except Exception as exc:
                if is_outage(exc):
                    EVENT_ERRORS.labels(self.consumer.name, "outage").inc()
                    raise
                EVENT_ERRORS.labels(self.consumer.name, "event").inc()
                first = first or datetime.datetime.now(datetime.UTC)
                error = describe(exc)
                logger.warning(
                    "consumer %s failed on event %s (%s), try %d of %d: %s",
                    self.consumer.name,
                    envelope.event_id,
                    envelope.event_type,
                    n,
                    count,
                    error,
                    exc_info=n == count,
                )
            if n < count and await sleep_unless(self.stop, self.policy.delay(n)):
                raise Stopped
        assert first is not None
        return Failure(count, first, error)

    async def replay_requested(self) -> None:
        """Handle the dead letters `socialhub events retry` asked for, at most once per
        `replay_poll` seconds. An outage gives them back for a later poll."""
        store = self.dead_letters
        now = time.monotonic()
        if store is None or now - self._replay_checked < self.policy.replay_poll:
            return
        self._replay_checked = now
        for dead in await store.update_claimed_retries(self.consumer.name, REPLAY_BATCH):
            if isinstance(dead.envelope, Unreadable):
                # Still not an event this version can read: nothing to try.
                await store.update_failed_again(dead.id, dead.envelope.error, 1)
                REPLAYS.labels(self.consumer.name, "failed").inc()
                logger.error(
                    "consumer %s cannot read dead letter %d: %s", self.consumer.name, dead.id, dead.envelope.error
                )
                continue
            envelope = dead.envelope
            try:
                failure = await self._tries(envelope, self.policy.attempts)
            except BaseException as exc:
                await _release(store, dead)
                if isinstance(exc, Exception) and not isinstance(exc, Stopped):
                    logger.warning("replaying dead letter %d of %s: %r; later", dead.id, self.consumer.name, exc)
                    return
                raise
            if failure is None:
                await store.update_replayed(dead.id)
                REPLAYS.labels(self.consumer.name, "handled").inc()
                logger.info("consumer %s handled dead letter %d again", self.consumer.name, dead.id)
            else:
                await store.update_failed_again(dead.id, failure.error, failure.tries)
                REPLAYS.labels(self.consumer.name, "failed").inc()
                logger.error("consumer %s failed dead letter %d again: %s", self.consumer.name, dead.id, failure.error)


async def _release(store: DeadLetterBook, dead: DeadLetter) -> None:
    try:
        await store.update_released(dead.id)
    except Exception as exc:  # the database is away: the claim times out instead
        logger.debug("could not release dead letter %d: %r", dead.id, exc)
