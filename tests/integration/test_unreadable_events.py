"""An event a reader cannot read is poison, never a crash of the reader.

What a reader cannot read: an outbox row of a type this version does not know (a newer
version wrote it, during a rolling deploy), or whose data does not fit its type (written
by hand); a Kafka record of the same kinds. Each becomes a dead letter at once, kept as
it was sent, while the events around it go through; a replay by this version fails
again, and one by a version that can read it (here: the stored value mended in SQL)
handles it. A Kafka record that is not even an event (not JSON, no id) is skipped.

Real PostgreSQL (a database per test), the real app and `socialhub events` CLI, and a
real Kafka-protocol broker (tansu).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from socialhub.config import Settings
from socialhub.domain import events
from socialhub.domain.events import POSTS, Envelope, PostCreated, PostData
from socialhub.infra.events.kafka import KafkaPublisher, KafkaSource
from socialhub.infra.events.outbox import OutboxSource
from socialhub.infra.events.relay import KafkaRelay
from socialhub.infra.events.retry import RetryPolicy
from socialhub.storage.database import Database
from socialhub.storage.deadletters import DeadLetterStore
from socialhub.storage.outbox import OutboxStore, insert_event
from socialhub.storage.units import Units
from tests.conftest import connected, migrated_database, pool, running_app
from tests.integration.test_dead_letters import FAST, _true, cli, post_notified
from tests.integration.test_kafka import FAST_GROUP, Recorder, group_prefix, publisher, read_all, running, topic_names
from tests.integration.test_kafka_path import feed_ids, follow, new_post, reader
from tests.integration.test_outbox import run_source, stop_source, wait_until
from tests.kafka_broker import TansuBroker

POLICY = RetryPolicy(attempts=3, backoff=0.01, backoff_max=0.02, replay_poll=0.1)


@pytest.fixture
async def own_db_url() -> AsyncIterator[str]:
    async with migrated_database("socialhub_unreadable") as url:
        yield url


@pytest.fixture
async def conn(own_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with connected(own_db_url) as c:
        yield c


@pytest.fixture
async def db(own_db_url: str) -> AsyncIterator[Database]:
    async with pool(own_db_url, min_size=1, max_size=4) as database:
        yield database


async def write_row(conn: asyncpg.Connection, kind: str, actor: int, data: object, key: str = "1") -> int:
    """An outbox row written in SQL, as another version (or a hand) would."""
    event_id: int = await conn.fetchval(
        """INSERT INTO outbox (topic, key, type, actor_id, data)
           VALUES ('posts', $1, $2, $3, $4::jsonb) RETURNING id""",
        key,
        kind,
        actor,
        json.dumps(data),
    )
    return event_id


async def dead_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, consumer, event_id, attempts, status, error, event FROM dead_letters ORDER BY consumer, event_id"
    )


async def test_unreadable_outbox_rows_are_dead_lettered_at_once_and_replayed_once_readable(
    make_settings: Callable[..., Settings], own_db_url: str, conn: asyncpg.Connection
) -> None:
    settings = make_settings(database={"url": own_db_url}, events=FAST)
    async with running_app(settings) as client:
        author, fan = await reader(client), await reader(client)
        await follow(fan, author)
        first = await new_post(author, "before")
        unknown = await write_row(conn, "post.exploded", int(author.id), {"post_id": first})
        ghost_post = 9_000_000_000_000 + secrets.randbelow(10**9)
        misfit = await write_row(conn, "post.created", int(author.id), {"post_id": f"#{ghost_post}"})
        second = await new_post(author, "after")

        async def delivered() -> bool:
            return await post_notified(conn, first) and await post_notified(conn, second)

        await wait_until(delivered, "the posts on both sides of the unreadable rows", 10.0)

        async def four() -> bool:
            return len(await dead_rows(conn)) == 4

        await wait_until(four, "each unreadable row dead-lettered by each consumer", 10.0)
        rows = await dead_rows(conn)
        assert [(r["consumer"], r["event_id"], r["attempts"], r["status"]) for r in rows] == [
            ("feed", unknown, 1, "dead"),
            ("feed", misfit, 1, "dead"),
            ("notifications", unknown, 1, "dead"),
            ("notifications", misfit, 1, "dead"),
        ]
        by_id = {r["event_id"]: r for r in rows}
        assert by_id[unknown]["error"] == "unknown event type 'post.exploded'"
        assert "post.created" in by_id[misfit]["error"] and "$.data" in by_id[misfit]["error"]
        stored = json.loads(by_id[misfit]["event"])  # as it would have been sent
        assert set(stored) == {"id", "type", "occurred_at", "actor_id", "data"}  # (jsonb keeps no order)
        assert (stored["id"], stored["type"], stored["actor_id"]) == (str(misfit), "post.created", author.id)
        assert stored["data"] == {"post_id": f"#{ghost_post}"}
        assert await feed_ids(fan) >= {first, second}  # the feed reader went on too

        rc, out, err = await cli(settings, "dead")
        assert rc == 0, err
        assert sorted(tuple(x.split()[2:5]) for x in out.splitlines()) == sorted(
            [
                ("feed", "post.exploded", str(unknown)),
                ("feed", "post.created", str(misfit)),
                ("notifications", "post.exploded", str(unknown)),
                ("notifications", "post.created", str(misfit)),
            ]
        )

        # This version still cannot read them: a replay fails again, the readers go on.
        rc, out, err = await cli(settings, "retry")
        assert rc == 0 and len(out.splitlines()) == 4, err

        async def failed_again() -> bool:
            return [(r["status"], r["attempts"]) for r in await dead_rows(conn)] == [("dead", 2)] * 4

        await wait_until(failed_again, "each replay to fail again", 10.0)

        # A version that reads the misfit (here: its stored value mended) handles it on replay.
        await conn.execute(
            """UPDATE dead_letters SET event = jsonb_set(event, '{data}', $2::jsonb) WHERE event_id = $1""",
            misfit,
            json.dumps({"post_id": str(ghost_post), "author_id": author.id}),
        )
        ids = [str(r["id"]) for r in await dead_rows(conn) if r["event_id"] == misfit]
        rc, out, err = await cli(settings, "retry", *ids)
        assert rc == 0, err

        async def replayed() -> bool:
            return [(r["event_id"], r["status"]) for r in await dead_rows(conn)] == [
                (unknown, "dead"),
                (misfit, "replayed"),
            ] * 2

        await wait_until(replayed, "both consumers to replay the mended event", 10.0)
        assert await post_notified(conn, str(ghost_post))
        third = await new_post(author, "and after that")
        await wait_until(lambda: post_notified(conn, third), "a later post", 10.0)


async def test_unreadable_kafka_records_are_dead_lettered_and_garbage_is_skipped(
    kafka_broker: TansuBroker, db: Database, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    topics = topic_names()
    good = [
        Envelope(POSTS, "k", PostCreated(id=str(n), occurred_at="t", actor_id="1", data=PostData(str(n), "1")))
        for n in (101, 102, 103)
    ]
    unknown = {"id": "201", "type": "post.exploded", "occurred_at": "t", "actor_id": "1", "data": {}}
    misfit = {"id": "202", "type": "post.created", "occurred_at": "t", "actor_id": "1", "data": {"post_id": 5}}
    async with publisher(kafka_broker.bootstrap, topics) as pub:
        raw = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await raw.start()
        try:
            # One key, so one partition: the order below is the order read.
            await pub.publish([good[0]])
            await raw.send_and_wait(topics[POSTS], json.dumps(unknown).encode(), key=b"k")
            await raw.send_and_wait(topics[POSTS], b"not json", key=b"k")
            await raw.send_and_wait(topics[POSTS], json.dumps(misfit).encode(), key=b"k")
            await raw.send_and_wait(topics[POSTS], b'{"type": "post.created"}', key=b"k")
            # Unreadable, and not even storable: jsonb holds no U+0000. Logged and dropped.
            await raw.send_and_wait(topics[POSTS], b'{"id": "203", "type": "post.\\u0000"}', key=b"k")
            await pub.publish(good[1:])
        finally:
            await raw.stop()

    prefix = group_prefix()
    recorder = Recorder("feed")
    dead = DeadLetterStore(db)
    source = KafkaSource(
        kafka_broker.bootstrap, topics, recorder, group_prefix=prefix, dead_letters=dead, policy=POLICY, **FAST_GROUP
    )
    async with running(source):
        await wait_until(_true(lambda: len(recorder.handled) >= 3), "the good records", 20.0)

        async def two() -> bool:
            return len(await dead_rows(conn)) == 2

        await wait_until(two, "the two unreadable records dead-lettered", 10.0)
        await asyncio.sleep(0.3)  # the third would be stored by now
    assert recorder.ids() == ["101", "102", "103"]
    rows = await dead_rows(conn)
    assert [(r["consumer"], r["event_id"], r["attempts"]) for r in rows] == [("feed", 201, 1), ("feed", 202, 1)]
    assert [json.loads(r["event"]) for r in rows] == [unknown, misfit]  # as sent
    assert {r["event_id"]: r["error"] for r in rows}[201] == "unknown event type 'post.exploded'"
    assert "could not store event 203 ('post.\\x00') as a dead letter (UntranslatableCharacterError" in caplog.text

    # The offsets were committed past them: the group's next reader starts after them all.
    late = Envelope(POSTS, "k", PostCreated(id="104", occurred_at="t", actor_id="1", data=PostData("104", "1")))
    async with publisher(kafka_broker.bootstrap, topics) as pub:
        await pub.publish([late])
    again = Recorder("feed")
    source = KafkaSource(
        kafka_broker.bootstrap, topics, again, group_prefix=prefix, dead_letters=dead, policy=POLICY, **FAST_GROUP
    )
    async with running(source):
        await wait_until(_true(lambda: again.ids() == ["104"]), "the late record", 20.0)
        await asyncio.sleep(0.3)
    assert again.attempts == ["104"] and len(await dead_rows(conn)) == 2


async def test_the_relay_dead_letters_an_unreadable_row_and_publishes_the_rest(
    kafka_broker: TansuBroker, db: Database, conn: asyncpg.Connection
) -> None:
    topics = topic_names()
    async with Units(db).begin() as uow:
        before = await insert_event(uow, events.post_created(1, 11))
    bad = await write_row(conn, "post.exploded", 1, {"post_id": "12"})
    async with Units(db).begin() as uow:
        after = await insert_event(uow, events.post_created(1, 13))
    publisher = KafkaPublisher(kafka_broker.bootstrap, topics, partitions=3)
    await publisher.ensure_topics()  # before read_all subscribes, which would make the broker create them
    relay = KafkaRelay(publisher)
    source = OutboxSource(OutboxStore(db), relay, dead_letters=DeadLetterStore(db), policy=POLICY)
    stop, task = await run_source(source)
    try:

        async def one() -> bool:
            return len(await dead_rows(conn)) == 1

        await wait_until(one, "the unreadable row dead-lettered by the relay", 10.0)
        await asyncio.sleep(0.3)  # a third record would show up now
        records = await read_all(kafka_broker.bootstrap, topics[POSTS], 2)
    finally:
        await stop_source(stop, task)
        await publisher.close()
    assert sorted(json.loads(r.value)["id"] for r in records) == sorted([str(before), str(after)])
    [row] = await dead_rows(conn)
    assert (row["consumer"], row["event_id"], row["attempts"]) == ("kafka-relay", bad, 1)
