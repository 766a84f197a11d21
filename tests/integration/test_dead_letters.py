"""A poison event does not stop the pipeline; an outage dead-letters nothing.

Real PostgreSQL (a database per test, so counts are exact), the real app, the real
`socialhub events` CLI in a subprocess, and for the Kafka path a real tansu broker.
The poison is an outbox row written in SQL between good events: a `post.created` whose
author does not exist, so the notifications consumer's insert fails its foreign key
(as it would for an account deleted before its event was consumed). Creating that
user in SQL then makes it handleable, and `events retry` replays it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from socialhub.config import Settings, with_overrides
from socialhub.domain.events import Envelope, PostCreated, PostData
from socialhub.infra.events import retry
from socialhub.infra.events.base import Consumer
from socialhub.infra.events.outbox import OutboxSource
from socialhub.infra.events.retry import RetryPolicy
from socialhub.storage.database import Database
from socialhub.storage.deadletters import DeadLetterStore
from socialhub.storage.outbox import OutboxStore
from tests.conftest import connected, migrated_database, running_app
from tests.integration.test_kafka_path import feed_ids, follow, kafka_settings, new_post, reader
from tests.integration.test_outbox import emit, run_source, stop_source, wait_until
from tests.kafka_broker import TansuBroker
from tests.ports import free_port

# Short enough for tests; the defaults and their reasons are in socialhub.toml.
FAST = {
    "retry_attempts": 3,
    "retry_backoff": "20ms",
    "retry_backoff_max": "50ms",
    "replay_poll": "100ms",
    "metrics_interval": "100ms",
}
ATTEMPTS = 3
KAFKA_DEADLINE = 45.0


@pytest.fixture
async def own_db_url() -> AsyncIterator[str]:
    async with migrated_database("socialhub_dead") as url:
        yield url


@pytest.fixture
async def conn(own_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    async with connected(own_db_url) as c:
        yield c


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """`socialhub events ...` as an operator runs it, next to the running app."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOCIALHUB_")}
    env.update(
        SOCIALHUB_DATABASE_URL=settings.database.url,
        SOCIALHUB_SERVER_DATA_DIR=settings.server.data_dir,
        SOCIALHUB_SERVER_LOG_LEVEL="warning",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "socialhub.cli",
        "events",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Poison:
    """An event the notifications consumer cannot handle until `cure()`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.user_id = 8_000_000_000_000 + secrets.randbelow(10**12)
        self.post_id = 8_000_000_000_000 + secrets.randbelow(10**12)
        self.event_id = 0

    async def write(self) -> None:
        data = {"post_id": str(self.post_id), "author_id": str(self.user_id)}
        self.event_id = await self.conn.fetchval(
            """INSERT INTO outbox (topic, key, type, actor_id, data)
               VALUES ('posts', $1, 'post.created', $2, $3::jsonb) RETURNING id""",
            str(self.post_id),
            self.user_id,
            json.dumps(data),
        )

    async def cure(self) -> None:
        name = f"ghost{secrets.token_hex(4)}"
        await self.conn.execute(
            "INSERT INTO users (id, username, email, name, password_hash) VALUES ($1, $2, $3, $2, 'x')",
            self.user_id,
            name,
            f"{name}@example.test",
        )

    async def notified(self) -> int:
        n: int = await self.conn.fetchval(
            "SELECT count(*) FROM notifications WHERE user_id = $1 AND event_id = $2", self.user_id, self.event_id
        )
        return n


async def dead_letters(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, consumer, event_id, attempts, status, error, event FROM dead_letters")


async def post_notified(conn: asyncpg.Connection, post_id: str) -> bool:
    n = await conn.fetchval("SELECT count(*) FROM notifications WHERE type = 'post' AND post_id = $1", int(post_id))
    return bool(n)


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from /metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


async def metrics_text(client: httpx.AsyncClient) -> str:
    r = await client.get("/metrics")
    assert r.status_code == 200
    return r.text


async def poison_between_good_events_then_replay(
    settings: Settings, client: httpx.AsyncClient, conn: asyncpg.Connection, deadline: float
) -> None:
    """The scenario both paths share: good post, poison, good post; dead letter, CLI, replay."""
    before = await metrics_text(client)
    author, fan = await reader(client), await reader(client)
    await follow(fan, author)
    first = await new_post(author, "before the poison")
    poison = Poison(conn)
    await poison.write()
    second = await new_post(author, "after the poison")

    async def delivered() -> bool:
        return await post_notified(conn, first) and await post_notified(conn, second)

    await wait_until(delivered, "the posts on both sides of the poison notified", deadline)

    async def one_dead_letter() -> bool:
        return len(await dead_letters(conn)) == 1

    await wait_until(one_dead_letter, "the poison dead-lettered", deadline)
    assert {first, second} <= await feed_ids(fan)  # the feed consumer went on too
    [dead] = await dead_letters(conn)
    assert (dead["consumer"], dead["event_id"], dead["attempts"], dead["status"]) == (
        "notifications",
        poison.event_id,
        ATTEMPTS,
        "dead",
    )
    assert dead["error"].startswith("ForeignKeyViolationError:"), dead["error"]
    event = json.loads(dead["event"])  # as stored: the SPEC's value of the event
    assert set(event) == {"id", "type", "occurred_at", "actor_id", "data"}
    assert (event["id"], event["type"]) == (str(poison.event_id), "post.created")
    assert event["actor_id"] == str(poison.user_id)
    assert await poison.notified() == 0

    async def counted() -> bool:
        text = await metrics_text(client)
        return metric(text, "socialhub_events_dead_letters", consumer="notifications") == 1

    await wait_until(counted, "the dead letter in /metrics", deadline)
    after = await metrics_text(client)
    name = "socialhub_events_dead_lettered_total"
    assert metric(after, name, consumer="notifications") == metric(before, name, consumer="notifications") + 1
    name = "socialhub_events_errors_total"
    event_errors = metric(after, name, consumer="notifications", kind="event")
    assert event_errors >= metric(before, name, consumer="notifications", kind="event") + ATTEMPTS
    assert "socialhub_outbox_lag_seconds{" in after

    rc, out, err = await cli(settings, "dead")
    assert rc == 0, err
    [line] = out.splitlines()
    assert line.split()[:5] == [str(dead["id"]), "dead", "notifications", "post.created", str(poison.event_id)]
    assert f"tries={ATTEMPTS}" in line and "ForeignKeyViolationError" in line

    rc, out, err = await cli(settings, "retry", "4242")
    assert rc == 2 and "no dead letter 4242" in err and out == ""

    await poison.cure()
    rc, out, err = await cli(settings, "retry")
    assert rc == 0, err
    assert [x.split()[:2] for x in out.splitlines()] == [[str(dead["id"]), "retry"]]

    async def replayed() -> bool:
        return [r["status"] for r in await dead_letters(conn)] == ["replayed"]

    await wait_until(replayed, "the running consumer to replay the dead letter", deadline)
    assert await poison.notified() == 1
    rc, out, err = await cli(settings, "dead")
    assert (rc, out) == (0, "") and "no dead letters" in err
    rc, out, err = await cli(settings, "dead", "--all")
    assert rc == 0 and out.split()[:2] == [str(dead["id"]), "replayed"]
    rc, out, err = await cli(settings, "retry", str(dead["id"]))
    assert rc == 2 and "is replayed" in err

    async def none_waiting() -> bool:
        return metric(await metrics_text(client), "socialhub_events_dead_letters", consumer="notifications") == 0

    await wait_until(none_waiting, "no dead letter waiting in /metrics", deadline)
    await asyncio.sleep(0.3)  # a second replay would show up now
    assert await poison.notified() == 1


async def test_a_poison_event_on_the_outbox_path_is_dead_lettered_listed_and_replayed(
    make_settings: Callable[..., Settings], own_db_url: str, conn: asyncpg.Connection
) -> None:
    settings = make_settings(database={"url": own_db_url}, events=FAST)
    async with running_app(settings) as client:
        await poison_between_good_events_then_replay(settings, client, conn, 10.0)


async def test_a_poison_event_on_the_kafka_path_is_dead_lettered_listed_and_replayed(
    make_settings: Callable[..., Settings],
    own_db_url: str,
    conn: asyncpg.Connection,
    private_kafka_broker: TansuBroker,
) -> None:
    settings = with_overrides(kafka_settings(make_settings, own_db_url, private_kafka_broker), events=FAST)
    async with running_app(settings) as client:
        await poison_between_good_events_then_replay(settings, client, conn, KAFKA_DEADLINE)
        # The relay published the poison like any other event: only its consumer failed.
        assert await conn.fetchval("SELECT count(*) FROM dead_letters WHERE consumer = 'kafka-relay'") == 0


# -- outages: nothing dead-lettered -----------------------------------------------------------


class Dependent(Consumer):
    """Needs a dependency for even-numbered events only; `down` makes that dependency a
    real PostgreSQL address nobody listens on ("unreachable"), or breaks the handler for
    every event ("broken")."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.handled: list[int] = []
        self.down: str | None = None

    async def handle(self, envelope: Envelope) -> None:
        assert isinstance(envelope.event, PostCreated)
        n = int(envelope.event.data.post_id)
        if self.down == "broken":
            raise RuntimeError("this handler fails on every event")
        if self.down == "unreachable" and n % 2 == 0:
            await asyncpg.connect(f"postgresql://root@127.0.0.1:{free_port()}/gone", timeout=2)
        self.handled.append(n)


@pytest.mark.parametrize("down", ["unreachable", "broken"])
async def test_an_outage_delays_events_and_dead_letters_none(
    own_db_url: str, down: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the consumer's database is unreachable, events that need it wait (those that
    do not, pass): an outage, not poison. A handler failing for every event (nothing
    passes) is taken for a broken consumer, not for bad events."""
    monkeypatch.setattr(retry, "MAX_HELD", 3)  # "broken": go back and start over soon
    db = Database()
    await db.open(own_db_url, min_size=1, max_size=4)
    consumer = Dependent("dep-" + secrets.token_hex(4))
    policy = RetryPolicy(attempts=3, backoff=0.01, backoff_max=0.02, replay_poll=0.1)
    source = OutboxSource(OutboxStore(db), consumer, dead_letters=DeadLetterStore(db), policy=policy)
    stop, task = await run_source(source)
    try:
        await emit(db, 1)
        await wait_until(_true(lambda: consumer.handled == [1]), "the event before the outage")
        consumer.down = down
        ns = list(range(2, 12))
        for n in ns:
            await emit(db, n)
        await asyncio.sleep(1.5)  # many tries of each, and of the events after them
        assert not set(ns[::2]) & set(consumer.handled)  # the even ones need what is down
        consumer.down = None
        await wait_until(_true(lambda: set(ns) <= set(consumer.handled)), "every event once the outage ends")
        assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    finally:
        await stop_source(stop, task)
        await db.close()


def _true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


def post_created(n: int) -> PostCreated:
    return PostCreated(id=str(n), occurred_at="", actor_id="1", data=PostData(post_id=str(n), author_id="1"))


def test_the_cli_needs_numeric_ids() -> None:
    from socialhub.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["events", "retry", "not-an-id"])
    assert exc.value.code == 2


async def test_replayed_dead_letters_are_dropped_after_the_retention_and_waiting_ones_kept(own_db_url: str) -> None:
    db = Database()
    await db.open(own_db_url, min_size=1, max_size=2)
    try:
        store = DeadLetterStore(db)
        [first, second, third] = [
            await store.insert_dead_letter("feed", envelope, "KeyError: 'author_id'", 3, datetime.now(UTC))
            for envelope in [Envelope("posts", str(n), post_created(n)) for n in (1, 2, 3)]
        ]
        # Dead-lettered again (a restart read it before its position was saved): one row.
        again = Envelope("posts", "1", post_created(1))
        assert await store.insert_dead_letter("feed", again, "KeyError: 'x'", 3, datetime.now(UTC)) == first
        assert [(d.attempts, d.error) for d in await store.get_by_ids([first])] == [(6, "KeyError: 'x'")]
        assert [d.id for d in await store.update_retry_requested([first, second])] == [first, second]
        assert [d.id for d in await store.update_claimed_retries("feed", 10)] == [first, second]
        assert await store.update_claimed_retries("feed", 10) == []  # claimed once
        await store.update_replayed(first)
        await store.update_failed_again(second, "KeyError: 'y'", 3)
        await db.execute("UPDATE dead_letters SET status_at = now() - interval '8 days'")
        janitor_retention = 7 * 86400.0
        assert await store.delete_replayed(janitor_retention) == 1
        left = await store.get_dead_letters(include_replayed=True)
        assert [(d.id, d.status, d.attempts) for d in left] == [(second, "dead", 6), (third, "dead", 3)]
        assert await store.get_waiting_counts() == {"feed": 2}
    finally:
        await db.close()
