"""Kafka back end of the event port: the relay's publisher and a consumer-group source.

`KafkaPublisher` is what the outbox relay sends to. Value on the wire: the SPEC's
`{"id", "type", "occurred_at", "actor_id", "data"}` (msgspec JSON of `Event`); key: the
envelope's key (post id or follower id), so one key always lands on one partition
and keeps its order. Sends use acks=all and, when the broker allows it, the idempotent
producer. Any failed publish throws the producer away; the next call builds a new one
and checks the topics again, so one bad moment never leaves a half-broken producer.

`KafkaSource` feeds one `Consumer` from the consumer group `<group_prefix><name>`.
Offsets are committed only after `handle` returned for every record up to them (at
least once). A failing `handle` goes through a `retry.Triage`: retried in place with
backoff; on an outage the partition is rewound to that record and read again after a
backoff; an event that keeps failing on its own is held while the records after it go
on, and dead-lettered once others pass (retry.py). A partition's committed offset never
passes a held record. A record that names an event (a JSON object with a valid "id") but
is not one this version can read (unknown type, data that does not fit) is poison: the
triage dead-letters it at once, as it was sent. One that is not even that (not JSON, no
id) is logged and skipped: nothing could ever read it, and stopping the partition for it
would stop every later event with it.
Between fetches the source replays the dead letters `socialhub events retry` asked for.

Broker outages: `publish` raises (the relay keeps its outbox position and retries);
the source keeps retrying with capped backoff and returns within about a second of
`stop` being set.

Compatibility notes for Kafka-protocol brokers other than Apache Kafka (e.g. tansu):
aiokafka asks for a producer id with InitProducerId v0; a broker that refuses it gets
a warning and a plain acks=all producer (`idempotent` then reads False). Duplicates
from a retried send are harmless because consumers are idempotent (SPEC, Events), and
ordering per partition holds either way: aiokafka keeps one batch in flight per partition.

Why one module of ~550 lines: the publisher and the consumer-group source share the
topic preparation, the wire codec and the broker's error classes, and they are the one
Kafka adapter behind the event port (like `outbox.py` for the other path).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiokafka.errors as kafka_errors
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from socialhub.domain.events import Envelope, Unreadable, encode_event, event_id_of, read_event
from socialhub.infra.events.base import Consumer, EventSource, Publisher
from socialhub.infra.events.retry import ConsumerDown, RetryPolicy, Stopped, Triage
from socialhub.infra.events.stores import DeadLetterBook
from socialhub.supervisor import sleep_unless

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Backoff between attempts (source reconnects, retries of a failing handle): quick at
# first, since most failures are a blip, doubling up to a cap that finds a restarted
# broker within seconds without hammering it.
RETRY_MIN = 0.2
RETRY_MAX = 5.0
# getmany() long-polls at most this long, which bounds how late `stop` is noticed.
POLL_MS = 500
# A commit is retried by aiokafka for as long as the error is retriable (a broker that
# is down); past this the commit is abandoned: the records were handled, and at worst
# they are delivered again.
COMMIT_TIMEOUT = 5.0
# Readiness probes must answer fast; a broker slower than this counts as down.
PING_TIMEOUT = 2.0
# Records per getmany(): one commit per batch keeps commit traffic low.
MAX_BATCH = 500
# An idle source asks the broker for metadata this often, to notice (and log) an outage.
IDLE_CHECK_SECONDS = 5.0

_decoder = msgspec.json.Decoder()


# How long the broker may hold a fetch that has no data. Apache Kafka answers as soon as
# a record arrives, whatever this is; some Kafka-protocol brokers (tansu) wait it out,
# which becomes delivery latency (aiokafka's default of 500 ms gave a p99 of ~400 ms
# write-to-feed, 100 ms gave ~100 ms: python -m bench post-to-feed --kafka). An idle consumer
# pays ten fetches a second for it.
FETCH_MAX_WAIT_MS = 100


class PublishError(RuntimeError):
    """The broker is unreachable, or did not acknowledge all of a batch; send the whole batch again."""


class _Stopped(Exception):
    """`stop` was set while waiting."""


class KafkaPublisher(Publisher):
    """Publishes envelopes to Kafka; `topics` maps logical topic ("posts") to Kafka topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Mapping[str, str],
        *,
        partitions: int = 6,
        replication_factor: int = 1,
        enable_idempotence: bool = True,
        request_timeout_ms: int = 30_000,
        client_id: str = "socialhub",
    ) -> None:
        if not topics:
            raise ValueError("KafkaPublisher needs at least one topic")
        self.bootstrap_servers = bootstrap_servers
        self.topics = dict(topics)
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.request_timeout_ms = request_timeout_ms
        self.client_id = client_id
        self._idempotent = enable_idempotence
        self._producer: Any = None
        self._topics_checked = False
        # publish() and start() may race (relay and a readiness probe, or two relays
        # in one process); only one of them may build the producer.
        self._connect_lock = asyncio.Lock()

    @property
    def idempotent(self) -> bool:
        """Whether sends use the idempotent producer (False after a broker refused it)."""
        return self._idempotent

    async def start(self) -> None:
        try:
            await self._connect()
        except Exception as exc:
            raise PublishError(f"connecting to Kafka at {self.bootstrap_servers}: {exc!r}") from exc

    async def publish(self, batch: list[Envelope]) -> None:
        if not batch:
            return
        records = [(self._kafka_topic(env.topic), env.key.encode(), encode_event(env.event)) for env in batch]
        futures: list[asyncio.Future[Any]] = []
        try:
            producer = await self._connect()
            for topic, key, value in records:
                futures.append(await producer.send(topic, value=value, key=key))
            results = await asyncio.gather(*futures, return_exceptions=True)
        except Exception as exc:
            for fut in futures:
                fut.add_done_callback(_retrieve)
            await self._discard()
            raise PublishError(f"publishing {len(batch)} events to Kafka at {self.bootstrap_servers}: {exc!r}") from exc
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self._discard()
            raise PublishError(
                f"Kafka at {self.bootstrap_servers} did not acknowledge {len(failures)} of {len(batch)} events: "
                f"{failures[0]!r}"
            ) from failures[0]

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                producer = self._producer
                if producer is not None:
                    await producer.client.fetch_all_metadata()
                else:
                    admin = self._admin()
                    try:
                        await admin.start()
                    finally:
                        await admin.close()
        except Exception as exc:
            logger.debug("kafka ping to %s failed: %r", self.bootstrap_servers, exc)
            return False
        return True

    async def close(self) -> None:
        async with self._connect_lock:
            producer, self._producer = self._producer, None
            if producer is not None:
                await producer.stop()

    def _kafka_topic(self, logical: str) -> str:
        try:
            return self.topics[logical]
        except KeyError:
            raise ValueError(f"no Kafka topic configured for event topic {logical!r}") from None

    async def _connect(self) -> Any:
        async with self._connect_lock:
            if not self._topics_checked:
                await self.ensure_topics()
                self._topics_checked = True
            if self._producer is None:
                self._producer = await self._start_producer()
            return self._producer

    async def ensure_topics(self) -> None:
        """Create the topics that do not exist yet; safe when several instances race."""
        admin = self._admin()
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [name for name in self.topics.values() if name not in existing]
            if not missing:
                return
            response = await admin.create_topics(
                [NewTopic(name, self.partitions, self.replication_factor) for name in missing]
            )
            for result in response.topic_errors:
                name, code = result[0], result[1]
                # Another instance created it between list and create: as good as ours.
                if code not in (0, kafka_errors.TopicAlreadyExistsError.errno):
                    message = result[2] if len(result) > 2 else None
                    error = kafka_errors.for_code(code)
                    raise error(f"creating Kafka topic {name!r}: {message or error.description}")
            logger.info("created Kafka topics %s (%d partitions)", ", ".join(missing), self.partitions)
        finally:
            await admin.close()

    async def _start_producer(self) -> Any:
        if self._idempotent:
            producer = self._new_producer(idempotent=True)
            try:
                await producer.start()
                return producer
            except kafka_errors.BrokerResponseError as exc:
                await producer.stop()
                if exc.retriable:
                    raise
                # The broker answered InitProducerId with an error: it does not do
                # idempotence (for aiokafka's request version); see the module docstring.
                logger.warning(
                    "Kafka at %s refused an idempotent producer (%r); publishing with acks=all "
                    "without idempotence (a retried send may duplicate an event, consumers are idempotent)",
                    self.bootstrap_servers,
                    exc,
                )
                self._idempotent = False
            except BaseException:
                await producer.stop()
                raise
        producer = self._new_producer(idempotent=False)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    def _new_producer(self, *, idempotent: bool) -> Any:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=idempotent,
            request_timeout_ms=self.request_timeout_ms,
        )

    def _admin(self) -> Any:
        return AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=self.request_timeout_ms,
        )

    async def _discard(self) -> None:
        """Forget the producer after a failure; the next publish connects afresh."""
        async with self._connect_lock:
            producer, self._producer = self._producer, None
            # A broker that lost its state (or a deleted topic) shows up as a failed
            # send: check the topics again before the next one.
            self._topics_checked = False
        if producer is None:
            return
        try:
            # stop() waits for batches still queued; they expire after the request timeout.
            await asyncio.wait_for(producer.stop(), self.request_timeout_ms / 1000 + 1)
        except Exception as exc:
            logger.warning("closing a failed Kafka producer: %r", exc)


class KafkaSource(EventSource):
    """Feeds `consumer` from the Kafka consumer group `group_prefix + consumer.name`."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Mapping[str, str],
        consumer: Consumer,
        *,
        group_prefix: str = "socialhub-",
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        request_timeout_ms: int = 30_000,
        max_batch: int = MAX_BATCH,
        client_id: str = "socialhub",
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
        prepare: Callable[[], Awaitable[None]] | None = None,
        dead_letters: DeadLetterBook | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        if not topics:
            raise ValueError("KafkaSource needs at least one topic")
        self.dead_letters = dead_letters
        self.policy = policy or RetryPolicy()
        # Run before subscribing (the relay's topic creation): a subscription to a missing
        # topic makes the broker auto-create it with its own partition count.
        self._prepare = prepare
        self.bootstrap_servers = bootstrap_servers
        self.consumer = consumer
        self.group_id = group_prefix + consumer.name
        self._logical = {kafka: logical for logical, kafka in topics.items()}
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": client_id,
            "group_id": self.group_id,
            "auto_offset_reset": "earliest",
            "enable_auto_commit": False,
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "request_timeout_ms": request_timeout_ms,
            "fetch_max_wait_ms": fetch_max_wait_ms,
        }
        self._max_batch = max_batch
        self._kafka: Any = None
        self._broker_down = False

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """(Kafka topic, partition) pairs this instance currently owns; empty when not running."""
        kc = self._kafka
        if kc is None:
            return frozenset()
        return frozenset((tp.topic, tp.partition) for tp in kc.assignment())

    async def run(self, stop: asyncio.Event) -> None:
        delay = RETRY_MIN
        while not stop.is_set():
            kc = AIOKafkaConsumer(*self._logical, **self._options)
            try:
                if self._prepare is not None:
                    await _until(stop, self._prepare())
                await _until(stop, kc.start())
                self._kafka = kc
                logger.info("kafka source %s joined (topics %s)", self.group_id, ", ".join(self._logical))
                delay = RETRY_MIN
                await self._consume(kc, stop)
            except (_Stopped, Stopped):
                pass
            except Exception as exc:
                logger.warning(
                    "kafka source %s at %s failed (%r); retrying in %.1fs",
                    self.group_id,
                    self.bootstrap_servers,
                    exc,
                    delay,
                )
            finally:
                self._kafka = None
                await _close_consumer(kc)
            if await sleep_unless(stop, delay):
                break
            delay = min(delay * 2, RETRY_MAX)

    async def _consume(self, kc: Any, stop: asyncio.Event) -> None:
        retry = RETRY_MIN
        heard_from_broker = time.monotonic()
        # Held records are those after the committed offsets: a new consumer starts from
        # those offsets, so a fresh triage goes with it.
        triage: Triage[tuple[Any, int]] = Triage(self.consumer, self.dead_letters, self.policy, stop)
        while not stop.is_set():
            await self._replay(triage)
            batch: dict[Any, list[Any]] = await kc.getmany(timeout_ms=POLL_MS, max_records=self._max_batch)
            if not batch:
                if time.monotonic() - heard_from_broker >= IDLE_CHECK_SECONDS:
                    await self._check_broker(kc)
                    heard_from_broker = time.monotonic()
                continue
            heard_from_broker = time.monotonic()
            handled, failed = await self._handle_batch(kc, batch, triage)
            if handled:
                await self._commit(kc, handled)
            if not failed:
                retry = RETRY_MIN
                continue
            if await sleep_unless(stop, retry):
                return
            retry = min(retry * 2, RETRY_MAX)

    async def _replay(self, triage: Triage[tuple[Any, int]]) -> None:
        try:
            await triage.replay_requested()
        except Stopped:
            raise
        except Exception as exc:  # the database is away; the next poll tries again
            logger.warning("kafka source %s could not look for dead letters to replay: %r", self.group_id, exc)

    async def _handle_batch(
        self, kc: Any, batch: dict[Any, list[Any]], triage: Triage[tuple[Any, int]]
    ) -> tuple[dict[Any, int], bool]:
        """Handle records in order per partition; the offsets to commit, and whether one failed.

        After a failure (an outage, or too many held records in a row) nothing more of
        this batch is handled: every partition is rewound to its first held record, or
        its first unhandled one, and the held records are tried again from there.
        """
        done: dict[Any, int] = {}
        failed = False
        for tp, records in batch.items():
            if failed:
                _rewind(kc, tp, records[0].offset)
                continue
            for record in records:
                envelope = self._decode(record)
                if envelope is not None:
                    try:
                        await triage.deliver((tp, record.offset), envelope)
                    except Exception as exc:
                        if isinstance(exc, ConsumerDown):
                            logger.error("kafka source %s: %s; going back to the first of them", self.group_id, exc)
                        elif not isinstance(exc, Stopped):
                            logger.warning(
                                "consumer %s failed on event %s (%s %s@%d): %r; it will be retried",
                                self.consumer.name,
                                envelope.event_id,
                                envelope.event_type,
                                tp.topic,
                                tp.partition,
                                exc,
                            )
                        _rewind(kc, tp, record.offset)
                        failed = True
                        break
                done[tp] = record.offset + 1
        if triage.held and not failed:
            try:
                await triage.check_held()
            except Exception as exc:  # an outage (or stop): they stay held, read again
                logger.warning("kafka source %s: held events not settled: %r", self.group_id, exc)
                failed = True
        # Never commit past a held record; after a failure, read them again.
        first_held: dict[Any, int] = {}
        for h in triage.held:
            first_held.setdefault(*h.where)
        for held_tp, offset in first_held.items():
            done[held_tp] = min(done.get(held_tp, offset), offset)
            if failed:
                _rewind(kc, held_tp, offset)
        if failed:
            triage.reset()
        return done, failed

    async def _check_broker(self, kc: Any) -> None:
        """Warn (once per outage) when no broker answers; aiokafka reconnects on its own.

        getmany() just comes back empty while the broker is away, so an idle source
        would otherwise never say that it is cut off.
        """
        try:
            await asyncio.wait_for(kc.topics(), PING_TIMEOUT)
        except (kafka_errors.KafkaError, TimeoutError) as exc:
            if not self._broker_down:
                logger.warning(
                    "kafka source %s: broker at %s unreachable (%r); still retrying",
                    self.group_id,
                    self.bootstrap_servers,
                    exc,
                )
            self._broker_down = True
            return
        if self._broker_down:
            logger.info("kafka source %s: broker at %s reachable again", self.group_id, self.bootstrap_servers)
        self._broker_down = False

    def _decode(self, record: Any) -> Envelope | Unreadable | None:
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        logical = self._logical.get(record.topic)
        if logical is None:  # only subscribed topics are fetched; defensive
            logger.error("kafka record %s: topic is not configured; skipped", where)
            return None
        if record.value is None:
            logger.error("kafka record %s has no value; skipped", where)
            return None
        try:
            value = _decoder.decode(record.value)
            key = record.key.decode() if record.key is not None else ""
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            logger.error("kafka record %s is not a valid event (%s); skipped", where, exc)
            return None
        event_id = event_id_of(value)
        if event_id is None:
            logger.error("kafka record %s is not a valid event (no event id); skipped", where)
            return None
        read = read_event(logical, key, event_id, value)
        if isinstance(read, Unreadable):
            logger.error("kafka record %s is not a valid event (%s); poison", where, read.error)
        return read

    async def _commit(self, kc: Any, offsets: dict[Any, int]) -> None:
        try:
            await asyncio.wait_for(kc.commit(offsets), COMMIT_TIMEOUT)
        except (kafka_errors.KafkaError, TimeoutError) as exc:
            # Handled but not recorded: delivered again after a restart or rebalance,
            # which idempotent consumers absorb. Not fatal; the next commit covers it.
            logger.warning("kafka source %s could not commit offsets: %r", self.group_id, exc)


def _rewind(kc: Any, tp: TopicPartition, offset: int) -> None:
    try:
        kc.seek(tp, offset)
    except kafka_errors.IllegalStateError:
        # Revoked by a rebalance meanwhile: its new owner starts from the committed offset.
        pass


async def _close_consumer(kc: Any) -> None:
    try:
        await asyncio.wait_for(kc.stop(), COMMIT_TIMEOUT)
    except Exception as exc:
        logger.warning("closing a Kafka consumer: %r", exc)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a send future's outcome as seen, so a failure we already reported is not logged again."""
    if not fut.cancelled():
        fut.exception()


async def _until(stop: asyncio.Event, aw: Awaitable[T]) -> T:
    """Await `aw` unless `stop` is set first, in which case it is cancelled and `_Stopped` raised."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # seen: we are stopping, whatever it was
    raise _Stopped
