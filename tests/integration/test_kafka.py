"""KafkaPublisher and KafkaSource against a real Kafka-protocol broker (tansu).

Each test uses its own topic names and consumer-group prefix on the session broker;
the outage test takes a private broker, since a restart wipes tansu's in-memory state.
Consumer groups use a short session timeout: tansu holds a JoinGroup for about half
of it, so the default (10 s) would cost 5 s per join.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from socialhub.domain.events import POSTS, USERS, Envelope, FollowCreated, FollowData, PostCreated, PostData
from socialhub.infra.events import kafka
from socialhub.infra.events.base import Consumer
from socialhub.infra.events.kafka import KafkaPublisher, KafkaSource, PublishError
from tests.kafka_broker import TansuBroker
from tests.ports import free_port

PARTITIONS = 3
FAST_GROUP: dict[str, Any] = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


@pytest.fixture(autouse=True)
def no_unclosed_clients(caplog: pytest.LogCaptureFixture) -> Any:
    """Every aiokafka client a test made must be closed by the code under test."""
    yield
    gc.collect()
    leaks = [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()]
    assert not leaks, leaks


def topic_names() -> dict[str, str]:
    suffix = secrets.token_hex(4)
    return {POSTS: f"posts-{suffix}", USERS: f"users-{suffix}"}


def group_prefix() -> str:
    return f"test-{secrets.token_hex(4)}-"


_ids = iter(range(1, 1 << 30))


def envelope(key: str, topic: str = POSTS) -> Envelope:
    n = str(next(_ids))
    when = "2025-01-02T03:04:05.000006Z"
    event: PostCreated | FollowCreated
    if topic == POSTS:
        event = PostCreated(id=n, occurred_at=when, actor_id="42", data=PostData(post_id=n, author_id="42"))
    else:
        event = FollowCreated(id=n, occurred_at=when, actor_id="42", data=FollowData(follower_id="42", followee_id=n))
    return Envelope(topic=topic, key=key, event=event)


class Recorder(Consumer):
    """Records what it handled; raises once for each event id in `fail_once`."""

    def __init__(self, name: str, fail_once: set[str] | None = None) -> None:
        self.name = name
        self.fail_once = set(fail_once or ())
        self.handled: list[Envelope] = []
        self.attempts: list[str] = []

    async def handle(self, envelope: Envelope) -> None:
        self.attempts.append(envelope.event.id)
        if envelope.event.id in self.fail_once:
            self.fail_once.discard(envelope.event.id)
            raise RuntimeError(f"refusing {envelope.event.id} once")
        self.handled.append(envelope)

    def ids(self) -> list[str]:
        return [e.event.id for e in self.handled]


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(source: KafkaSource) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 5)
        # The port's promise: run() returns promptly once stop is set.
        assert time.monotonic() - started < 1.5


@asynccontextmanager
async def publisher(bootstrap: str, topics: dict[str, str], **kwargs: Any) -> AsyncIterator[KafkaPublisher]:
    pub = KafkaPublisher(bootstrap, topics, partitions=PARTITIONS, **kwargs)
    await pub.start()
    try:
        yield pub
    finally:
        await pub.close()


def per_key(envelopes: list[Envelope]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for env in envelopes:
        out.setdefault(env.key, []).append(env.event.id)
    return out


async def read_all(bootstrap: str, topic: str, count: int) -> list[Any]:
    """Every record of `topic` (no consumer group), waiting for at least `count`."""
    kc = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await kc.start()
    try:
        kc.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await kc.seek_to_beginning()
        records: list[Any] = []
        deadline = time.monotonic() + 10
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await kc.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await kc.stop()


async def test_start_creates_topics_and_two_instances_may_race(
    kafka_broker: TansuBroker, caplog: pytest.LogCaptureFixture
) -> None:
    topics = topic_names()
    pubs = [KafkaPublisher(kafka_broker.bootstrap, topics, partitions=PARTITIONS) for _ in range(2)]
    try:
        await asyncio.gather(*(p.start() for p in pubs))
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        try:
            described = {t["topic"]: t for t in await admin.describe_topics(list(topics.values()))}
        finally:
            await admin.close()
        for name in topics.values():
            assert described[name]["error_code"] == 0
            assert len(described[name]["partitions"]) == PARTITIONS
        assert all([await p.ping() for p in pubs])
        # tansu refuses aiokafka's InitProducerId; the publisher says so and carries on.
        for p in pubs:
            assert p.idempotent or "refused an idempotent producer" in caplog.text
    finally:
        for p in pubs:
            await p.close()


async def test_publish_sends_spec_value_and_key_to_the_mapped_topic(kafka_broker: TansuBroker) -> None:
    topics = topic_names()
    post, follow = envelope("1001"), envelope("7", topic=USERS)
    async with publisher(kafka_broker.bootstrap, topics) as pub:
        await pub.publish([post, follow])

    [posts_record] = await read_all(kafka_broker.bootstrap, topics[POSTS], 1)
    [users_record] = await read_all(kafka_broker.bootstrap, topics[USERS], 1)
    assert posts_record.key == b"1001"
    assert json.loads(posts_record.value) == {
        "id": post.event.id,
        "type": "post.created",
        "occurred_at": "2025-01-02T03:04:05.000006Z",
        "actor_id": "42",
        "data": {"post_id": post.event.id, "author_id": "42"},
    }
    assert users_record.key == b"7"
    assert json.loads(users_record.value)["type"] == "follow.created"


async def test_source_delivers_in_order_per_key_and_skips_malformed_records(
    kafka_broker: TansuBroker, caplog: pytest.LogCaptureFixture
) -> None:
    topics = topic_names()
    first = [envelope(f"post-{i % 4}") for i in range(20)] + [envelope("u1", USERS), envelope("u2", USERS)]
    second = [envelope(f"post-{i % 4}") for i in range(8)]
    async with publisher(kafka_broker.bootstrap, topics) as pub:
        await pub.publish(first)
        raw = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await raw.start()
        try:
            await raw.send_and_wait(topics[POSTS], b"not json", key=b"post-0")
            await raw.send_and_wait(topics[POSTS], b'{"id": "1"}', key=b"post-1")
        finally:
            await raw.stop()
        await pub.publish(second)

    recorder = Recorder("feed")
    source = KafkaSource(kafka_broker.bootstrap, topics, recorder, group_prefix=group_prefix(), **FAST_GROUP)
    async with running(source):
        await eventually(lambda: len(recorder.handled) >= 30, 20, "30 events")
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would show up now

    published = first + second
    assert sorted(recorder.ids(), key=int) == [e.event.id for e in published]  # each once
    assert per_key(recorder.handled) == per_key(published)  # in order per key
    assert {e.topic for e in recorder.handled} == {POSTS, USERS}  # logical names, not Kafka's
    assert recorder.handled[0].event == next(e for e in published if e.event.id == recorder.handled[0].event.id).event
    assert caplog.text.count("is not a valid event") == 2


async def test_failed_handle_is_retried_in_order_and_offsets_are_committed(kafka_broker: TansuBroker) -> None:
    topics = topic_names()
    prefix = group_prefix()
    events = [envelope(f"key-{i % 2}") for i in range(10)]
    flaky = events[4]  # key-0, with key-0 events before and after it
    async with publisher(kafka_broker.bootstrap, topics) as pub:
        await pub.publish(events)

        recorder = Recorder("notifications", fail_once={flaky.event.id})
        source = KafkaSource(kafka_broker.bootstrap, topics, recorder, group_prefix=prefix, **FAST_GROUP)
        async with running(source):
            await eventually(lambda: len(recorder.handled) >= 10, 20, "all 10 events")
        assert recorder.attempts.count(flaky.event.id) == 2  # delivered again after the failure
        assert per_key(recorder.handled) == per_key(events)  # and nothing after it overtook it

        # Same consumer name = same group: a new instance starts after the committed offsets.
        late = envelope("key-0")
        await pub.publish([late])
        again = Recorder("notifications")
        source = KafkaSource(kafka_broker.bootstrap, topics, again, group_prefix=prefix, **FAST_GROUP)
        async with running(source):
            await eventually(lambda: late.event.id in again.ids(), 20, "the late event")
            await asyncio.sleep(0.3)
        assert again.ids() == [late.event.id]


async def test_two_instances_share_the_group(kafka_broker: TansuBroker) -> None:
    topics = topic_names()
    prefix = group_prefix()
    a, b = Recorder("feed"), Recorder("feed")
    source_a = KafkaSource(kafka_broker.bootstrap, topics, a, group_prefix=prefix, **FAST_GROUP)
    source_b = KafkaSource(kafka_broker.bootstrap, topics, b, group_prefix=prefix, **FAST_GROUP)
    all_partitions = {(t, p) for t in topics.values() for p in range(PARTITIONS)}
    async with publisher(kafka_broker.bootstrap, topics) as pub, running(source_a), running(source_b):

        def split() -> bool:
            mine, theirs = source_a.assignment, source_b.assignment
            return bool(mine) and bool(theirs) and not (mine & theirs) and (mine | theirs) == all_partitions

        await eventually(split, 20, "both instances to own partitions")
        events = [envelope(f"user-{i}", POSTS if i % 2 else USERS) for i in range(40)]
        await pub.publish(events)
        await eventually(lambda: len(a.handled) + len(b.handled) >= 40, 20, "40 events")
        await asyncio.sleep(0.5)

    handled = a.ids() + b.ids()
    assert sorted(handled, key=int) == [e.event.id for e in events]  # each exactly once
    assert a.handled and b.handled


async def test_broker_outage_publish_fails_then_recovers_and_source_keeps_delivering(
    private_kafka_broker: TansuBroker, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka, "IDLE_CHECK_SECONDS", 0.3)
    caplog.set_level(logging.INFO, logger="socialhub.infra.events.kafka")
    broker = private_kafka_broker
    topics = topic_names()
    recorder = Recorder("feed")
    source = KafkaSource(broker.bootstrap, topics, recorder, group_prefix=group_prefix(), **FAST_GROUP)
    async with publisher(broker.bootstrap, topics, request_timeout_ms=2000) as pub, running(source):
        before = envelope("p1")
        await pub.publish([before])
        await eventually(lambda: before.event.id in recorder.ids(), 20, "the event before the outage")

        await asyncio.to_thread(broker.stop)
        started = time.monotonic()
        with pytest.raises(PublishError):
            await pub.publish([envelope("p1")])
        assert time.monotonic() - started < 8
        assert not await pub.ping()
        await eventually(lambda: "unreachable" in caplog.text, 5, "the source to warn about the outage")

        # Back on the same port, with empty storage (tansu's is in memory).
        await asyncio.to_thread(broker.start)
        after = [envelope("p1"), envelope("p2"), envelope("u1", USERS)]
        await pub.publish(after)
        assert await pub.ping()
        await eventually(lambda: {e.event.id for e in after} <= set(recorder.ids()), 30, "the events after the restart")
        await eventually(lambda: "reachable again" in caplog.text, 5, "the source to notice the broker is back")
    [warning] = [r for r in caplog.records if "unreachable" in r.message]  # once per outage
    assert warning.levelno == logging.WARNING and warning.name == "socialhub.infra.events.kafka"


async def test_source_retries_while_no_broker_answers_and_stops_promptly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="socialhub.infra.events.kafka")
    source = KafkaSource(f"127.0.0.1:{free_port()}", topic_names(), Recorder("feed"), **FAST_GROUP)
    async with running(source):
        await eventually(lambda: "retrying in" in caplog.text, 5, "a warning about the broker")
        await asyncio.sleep(0.7)  # a couple of attempts, then stop mid-backoff
    warnings = [r for r in caplog.records if r.name == "socialhub.infra.events.kafka" and "retrying in" in r.message]
    assert len(warnings) >= 2 and all(r.levelno == logging.WARNING for r in warnings)


async def test_publish_raises_when_no_broker_answers() -> None:
    pub = KafkaPublisher(f"127.0.0.1:{free_port()}", topic_names(), request_timeout_ms=1000)
    started = time.monotonic()
    with pytest.raises(PublishError, match="connecting to Kafka"):
        await pub.start()
    with pytest.raises(PublishError):
        await pub.publish([envelope("x")])
    assert time.monotonic() - started < 5
    assert not await pub.ping()
    await pub.close()
