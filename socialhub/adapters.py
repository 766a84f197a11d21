"""Which implementation of each swappable part runs: one table per part, keyed by the
names config validates (`config.MediaStoreName`, `MailBackendName`, `SharedStateName`,
`EventPathName`), as uvicorn's config maps its protocol names to classes.

Only this module and app.py import concrete adapters (an import contract says so);
everything else sees the ports of `socialhub/infra/*/base.py`. Concrete modules are
imported inside their builders, so a deployment loads only what it uses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from socialhub.api.http.health import Check
from socialhub.config import EventPathName, MailBackendName, MediaStoreName, Settings, SharedStateName
from socialhub.domain import events
from socialhub.infra.events.base import Consumer, EventSource, Publisher
from socialhub.infra.events.outbox import OutboxSource
from socialhub.infra.events.relay import KafkaRelay
from socialhub.infra.events.retry import RetryPolicy
from socialhub.infra.kv.base import Counters, RateLimiter, Timelines, Values
from socialhub.infra.mail.base import Mailer
from socialhub.infra.media.base import MediaStore
from socialhub.infra.pubsub.base import PubSub
from socialhub.storage.deadletters import DeadLetterStore
from socialhub.storage.outbox import OutboxStore


@dataclass(frozen=True)
class SharedState:
    """The ports on state shared between instances, and how to check and close what is
    behind them."""

    limiter: RateLimiter
    values: Values
    timelines: Timelines
    counters: Counters
    pubsub: PubSub
    ping: Check | None  # for /readyz; None in process (nothing can be down)
    close: Callable[[], Awaitable[None]]


def _redis_state(settings: Settings) -> SharedState:
    """One Redis client shared by every port and pub/sub, closed last."""
    from socialhub.infra.kv.redis import RedisCounters, RedisRateLimiter, RedisTimelines, RedisValues
    from socialhub.infra.pubsub.redis import RedisPubSub
    from socialhub.infra.redis_client import client_from_url, ping

    client = client_from_url(settings.redis.url)
    prefix = settings.redis.key_prefix

    async def redis_ok() -> bool:
        return await ping(client)

    return SharedState(
        limiter=RedisRateLimiter(client, prefix),
        values=RedisValues(client, prefix),
        timelines=RedisTimelines(client, prefix),
        counters=RedisCounters(client, prefix),
        pubsub=RedisPubSub(client, prefix),
        ping=redis_ok,
        close=client.aclose,
    )


def _memory_state(settings: Settings) -> SharedState:
    """In process: one instance only."""
    from socialhub.infra.kv.memory import MemoryCounters, MemoryRateLimiter, MemoryTimelines, MemoryValues
    from socialhub.infra.pubsub.memory import MemoryPubSub

    async def nothing() -> None:
        return None

    return SharedState(
        limiter=MemoryRateLimiter(),
        values=MemoryValues(),
        timelines=MemoryTimelines(),
        counters=MemoryCounters(),
        pubsub=MemoryPubSub(),
        ping=None,
        close=nothing,
    )


@dataclass(frozen=True)
class Media:
    """The media store, where GET /media/{key} sends clients instead of streaming the file
    (None: it streams it), and how /readyz checks the store (None: nothing to check)."""

    store: MediaStore
    redirect: Callable[[str], Awaitable[str]] | None
    ping: Check | None


def _public_base(settings: Settings) -> Callable[[str], Awaitable[str]] | None:
    base = settings.media.public_base_url.rstrip("/")
    if not base:
        return None

    async def public_url(key: str) -> str:
        return f"{base}/{key}"

    return public_url


def _disk_media(settings: Settings) -> Media:
    from socialhub.infra.media.disk import DiskMediaStore

    return Media(DiskMediaStore(settings.data_path / "media"), _public_base(settings), None)


def _s3_media(settings: Settings) -> Media:
    from socialhub.infra.media.s3 import S3MediaStore

    m = settings.media
    store = S3MediaStore(
        bucket=m.s3_bucket,
        endpoint=m.s3_endpoint,
        region=m.s3_region,
        access_key=m.s3_access_key,
        secret_key=m.s3_secret_key,
        prefix=m.s3_prefix,
        presign_ttl=m.presign_ttl,
    )
    redirect = _public_base(settings)
    if redirect is None and m.serve == "presigned":
        redirect = store.presigned_url
    return Media(store, redirect, store.ping)


def _file_mailer(settings: Settings) -> Mailer:
    from socialhub.infra.mail.file import FileMailer

    return FileMailer(settings.data_path / "mail", sender=settings.mail.from_address)


def _smtp_mailer(settings: Settings) -> Mailer:
    from socialhub.infra.mail.smtp import SmtpMailer

    return SmtpMailer(settings.mail.smtp_url, sender=settings.mail.from_address)


@dataclass(frozen=True)
class EventPath:
    """The readers that hand events to the consumers, by name, and the Kafka producer
    when there is one (its health is part of /readyz, it is closed at shutdown)."""

    sources: dict[str, EventSource]
    publisher: Publisher | None


def _policy(settings: Settings) -> RetryPolicy:
    ev = settings.events
    return RetryPolicy(
        attempts=ev.retry_attempts,
        backoff=ev.retry_backoff,
        backoff_max=ev.retry_backoff_max,
        replay_poll=ev.replay_poll,
    )


def _outbox_path(
    settings: Settings, outbox: OutboxStore, dead: DeadLetterStore, consumers: list[Consumer]
) -> EventPath:
    """Each consumer reads the outbox itself."""
    policy = _policy(settings)
    return EventPath({c.name: OutboxSource(outbox, c, dead_letters=dead, policy=policy) for c in consumers}, None)


def kafka_topics(settings: Settings) -> dict[str, str]:
    """Each logical topic (events.POSTS, events.USERS) -> its Kafka topic name; what the
    Kafka adapter is given, and what the AsyncAPI document names."""
    return {events.POSTS: settings.kafka.posts_topic, events.USERS: settings.kafka.users_topic}


def _kafka_path(
    settings: Settings, outbox: OutboxStore, dead: DeadLetterStore, consumers: list[Consumer]
) -> EventPath:
    """A relay forwards the outbox to Kafka; each consumer is a Kafka consumer group."""
    from socialhub.infra.events.kafka import KafkaPublisher, KafkaSource

    policy = _policy(settings)
    kafka = settings.kafka
    topics = kafka_topics(settings)
    publisher = KafkaPublisher(
        kafka.bootstrap_servers, topics, partitions=kafka.partitions, replication_factor=kafka.replication_factor
    )
    relay = KafkaRelay(publisher)
    sources: dict[str, EventSource] = {relay.name: OutboxSource(outbox, relay, dead_letters=dead, policy=policy)}
    for c in consumers:
        sources[c.name] = KafkaSource(
            kafka.bootstrap_servers, topics, c, prepare=publisher.ensure_topics, dead_letters=dead, policy=policy
        )
    return EventPath(sources, publisher)


SHARED_STATES: dict[SharedStateName, Callable[[Settings], SharedState]] = {
    "memory": _memory_state,
    "redis": _redis_state,
}
MEDIA_STORES: dict[MediaStoreName, Callable[[Settings], Media]] = {
    "disk": _disk_media,
    "s3": _s3_media,
}
MAILERS: dict[MailBackendName, Callable[[Settings], Mailer]] = {
    "file": _file_mailer,
    "smtp": _smtp_mailer,
}
EVENT_PATHS: dict[EventPathName, Callable[[Settings, OutboxStore, DeadLetterStore, list[Consumer]], EventPath]] = {
    "outbox": _outbox_path,
    "kafka": _kafka_path,
}


def shared_state(settings: Settings) -> SharedState:
    return SHARED_STATES[settings.redis.backend](settings)


def media(settings: Settings) -> Media:
    return MEDIA_STORES[settings.media.store](settings)


def mailer(settings: Settings) -> Mailer:
    return MAILERS[settings.mail.backend](settings)


def event_path(settings: Settings, outbox: OutboxStore, dead: DeadLetterStore, consumers: list[Consumer]) -> EventPath:
    return EVENT_PATHS[settings.kafka.backend](settings, outbox, dead, consumers)
