"""The one place that wires socialhub together.

`create_app(settings)` picks each adapter from config, builds the stores, services
and the Starlette app, and returns it with an ordered lifespan: dependencies start in
the order below and stop in reverse.

    start: embedded PostgreSQL (if no database.url) -> migrations -> pool
           -> pub/sub -> session guard -> read cache -> background workers
    stop:  sockets (closed with 1012) -> chat timers -> presence -> workers (event
           readers, presence, janitor) -> session guard -> background mail -> read cache
           -> Kafka producer -> media -> pub/sub -> Redis -> pool
           -> embedded PostgreSQL
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from socialhub.api.http.auth import AuthRoutes
from socialhub.api.http.calls import CallRoutes
from socialhub.api.http.chat import ChatRoutes
from socialhub.api.http.errors import handle_http_exception, handle_socialhub_error, handle_unexpected
from socialhub.api.http.feed import FeedRoutes
from socialhub.api.http.health import Check, HealthRoutes
from socialhub.api.http.media import MediaRoutes
from socialhub.api.http.middleware import AccessLog, StorableText
from socialhub.api.http.notifications import NotificationRoutes
from socialhub.api.http.openapi import OpenApiRoutes
from socialhub.api.http.posts import PostRoutes
from socialhub.api.http.ratelimit import RateLimitMiddleware
from socialhub.api.http.routing import RouteGroup, ip_limits, one_route_per_path
from socialhub.api.http.security import Authenticator
from socialhub.api.http.users import UserRoutes
from socialhub.api.ws.dispatch import Dispatcher
from socialhub.api.ws.endpoint import SocketEndpoint
from socialhub.api.ws.hub import Hub
from socialhub.config import ConfigError, Settings
from socialhub.domain import events
from socialhub.errors import SocialhubError
from socialhub.infra.events.base import Consumer, EventSource, Publisher
from socialhub.infra.events.metrics import PipelineMonitor
from socialhub.infra.events.outbox import OutboxSource
from socialhub.infra.events.relay import KafkaRelay
from socialhub.infra.events.retry import RetryPolicy
from socialhub.infra.kv.base import Counters, RateLimiter, Timelines, Values
from socialhub.infra.mail.base import Mailer
from socialhub.infra.media.base import MediaStore
from socialhub.infra.pubsub.base import PubSub
from socialhub.secrets_file import load_or_create_secret
from socialhub.services.accounts import AccountService
from socialhub.services.calls import CallService
from socialhub.services.chat import ChatService
from socialhub.services.feed import FeedService
from socialhub.services.instances import InstanceLedger
from socialhub.services.janitor import Janitor
from socialhub.services.notifications import NotificationService
from socialhub.services.passwords import Passwords
from socialhub.services.posts import PostService
from socialhub.services.presence import PresenceService
from socialhub.services.readcache import ReadCache
from socialhub.services.roomjoins import RoomJoins
from socialhub.services.roomstream import RoomStream
from socialhub.services.sessions import SessionGuard
from socialhub.services.throttle import LoginThrottle
from socialhub.services.tokens import TokenCodec
from socialhub.services.users import UserService
from socialhub.storage.auth import AuthStore
from socialhub.storage.calls import CallStore
from socialhub.storage.chat import ChatStore
from socialhub.storage.database import Database
from socialhub.storage.deadletters import DeadLetterStore
from socialhub.storage.embedded import EmbeddedPostgres
from socialhub.storage.migrate import migrate
from socialhub.storage.notifications import NotificationStore
from socialhub.storage.outbox import OutboxStore
from socialhub.storage.posts import PostStore
from socialhub.storage.units import Units
from socialhub.storage.users import UserStore
from socialhub.supervisor import Supervisor

logger = logging.getLogger(__name__)


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


def make_shared_state(settings: Settings) -> SharedState:
    """In process, or Redis: one client shared by every port and pub/sub, closed last."""
    if settings.redis.url:
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


def make_media(settings: Settings) -> MediaStore:
    from socialhub.infra.media.disk import DiskMediaStore

    return DiskMediaStore(settings.data_path / "media")


def make_event_sources(
    settings: Settings, db: Database, consumers: list[Consumer]
) -> tuple[dict[str, EventSource], Publisher | None]:
    """Without Kafka each consumer reads the outbox; with it, a relay forwards the outbox
    to Kafka and each consumer is a Kafka consumer group."""
    outbox = OutboxStore(db)
    dead = DeadLetterStore(db)
    ev = settings.events
    policy = RetryPolicy(
        attempts=ev.retry_attempts,
        backoff=ev.retry_backoff,
        backoff_max=ev.retry_backoff_max,
        replay_poll=ev.replay_poll,
    )
    if not settings.kafka.bootstrap_servers:
        return {c.name: OutboxSource(outbox, c, dead_letters=dead, policy=policy) for c in consumers}, None
    from socialhub.infra.events.kafka import KafkaPublisher, KafkaSource

    topics = {events.POSTS: settings.kafka.posts_topic, events.USERS: settings.kafka.users_topic}
    publisher = KafkaPublisher(
        settings.kafka.bootstrap_servers,
        topics,
        partitions=settings.kafka.partitions,
        replication_factor=settings.kafka.replication_factor,
    )
    relay = KafkaRelay(publisher)
    sources: dict[str, EventSource] = {relay.name: OutboxSource(outbox, relay, dead_letters=dead, policy=policy)}
    for c in consumers:
        sources[c.name] = KafkaSource(
            settings.kafka.bootstrap_servers,
            topics,
            c,
            prepare=publisher.ensure_topics,
            dead_letters=dead,
            policy=policy,
        )
    return sources, publisher


def make_mailer(settings: Settings) -> Mailer:
    if settings.mail.backend == "smtp":
        from socialhub.infra.mail.smtp import SmtpMailer

        return SmtpMailer(settings.mail.smtp_url, sender=settings.mail.from_address)
    from socialhub.infra.mail.file import FileMailer

    return FileMailer(settings.data_path / "mail", sender=settings.mail.from_address)


# How long start-up waits for a configured PostgreSQL or Redis to answer before it gives
# up with a message naming the key (a server that is down refuses at once; this bounds
# one that drops packets).
REACH_TIMEOUT = 10.0


def _where(url: str) -> str:
    """host:port/name of a URL, without its credentials (they are never printed)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def check_reachable(settings: Settings, *, redis: bool = True) -> None:
    """Fail start-up with ConfigError naming the key when the configured PostgreSQL (or,
    with `redis`, Redis) does not answer, rather than with a traceback from inside the
    lifespan."""
    if settings.database.url:
        try:
            conn = await asyncpg.connect(settings.database.url, timeout=REACH_TIMEOUT)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise ConfigError(f"database.url: cannot connect to {_where(settings.database.url)}: {exc}") from None
        await conn.close()
    if redis and settings.redis.url:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        client = Redis.from_url(settings.redis.url, socket_connect_timeout=REACH_TIMEOUT)
        try:
            await client.ping()
        except (OSError, RedisError) as exc:
            raise ConfigError(f"redis.url: cannot connect to {_where(settings.redis.url)}: {exc}") from None
        finally:
            await client.aclose()


async def open_database(settings: Settings, db: Database, stack: AsyncExitStack) -> None:
    """Start the embedded server if needed, apply migrations, open the pool."""
    url = settings.database.url
    if not url:
        embedded = EmbeddedPostgres(settings.data_path)
        url = await embedded.start()
        stack.push_async_callback(embedded.stop)
    applied = await migrate(url)
    if applied:
        logger.info("migrations applied", extra={"versions": applied})
    await db.open(
        url,
        min_size=settings.database.pool_min,
        max_size=settings.database.pool_max,
        statement_timeout=settings.database.statement_timeout,
        connect_timeout=settings.database.connect_timeout,
    )
    stack.push_async_callback(db.close)


def create_app(settings: Settings) -> Starlette:
    secret = settings.auth.jwt_secret or load_or_create_secret(settings.data_path)
    if not settings.auth.jwt_secret and settings.redis.url:
        logger.warning(
            "auth.jwt_secret is not set: this instance signs tokens with the secret in its data_dir; "
            "instances that do not share that file will refuse each other's tokens"
        )

    db = Database()
    shared = make_shared_state(settings)
    pubsub = shared.pubsub
    mailer = make_mailer(settings)
    media = make_media(settings)
    media_base = settings.server.public_url.rstrip("/")
    user_store = UserStore(db)
    auth_store = AuthStore(db)
    tokens = TokenCodec(secret, settings.auth.access_ttl)
    guard = SessionGuard(tokens, auth_store, pubsub)
    passwords = Passwords(
        time_cost=settings.auth.argon2_time_cost,
        memory_kib=settings.auth.argon2_memory_kib,
        parallelism=settings.auth.argon2_parallelism,
    )
    accounts = AccountService(
        units=Units(db),
        users=user_store,
        auth=auth_store,
        passwords=passwords,
        tokens=tokens,
        guard=guard,
        mailer=mailer,
        throttle=LoginThrottle(limiter=shared.limiter, rate=settings.ratelimit.rule("login_account"), secret=secret),
        secret=secret,
        refresh_ttl=settings.auth.refresh_ttl,
        otp_ttl=settings.auth.otp_ttl,
        otp_max_attempts=settings.auth.otp_max_attempts,
    )
    post_store = PostStore(db)
    cache = ReadCache(
        post_store,
        pubsub,
        media_base,
        max_posts=settings.feed.cache_posts,
        max_viewers=settings.feed.cache_viewers,
    )
    posts = PostService(
        units=Units(db),
        posts=post_store,
        users=user_store,
        media=media,
        cache=cache,
        fanout_threshold=settings.feed.fanout_threshold,
    )
    feed = FeedService(posts=post_store, timelines=shared.timelines, values=shared.values, cache=cache)
    notifications = NotificationService(store=NotificationStore(db), pubsub=pubsub)
    sources, publisher = make_event_sources(settings, db, [feed, notifications])
    ledger = InstanceLedger(shared.counters, shared.values, instance_id=f"{socket.gethostname()}-{os.getpid()}")
    presence = PresenceService(
        ledger, shared.counters, shared.values, pubsub,
        save_last_seen=user_store.update_last_seen, load_last_seen=user_store.get_last_seen,
    )  # fmt: skip
    joins = RoomJoins(ledger, shared.counters)
    users = UserService(
        units=Units(db), users=user_store, media=media, media_base=media_base, cache=cache, presence=presence
    )
    chat = ChatService(
        store=ChatStore(db),
        users=user_store,
        pubsub=pubsub,
        notify=notifications.notify,
        joined_users=joins.joined_users,
    )

    async def online(user_ids: Sequence[int]) -> dict[int, bool]:
        return {int(v.user_id): v.status == "online" for v in await presence.status(user_ids)}

    calls = CallService(
        store=CallStore(db),
        publish=pubsub.publish,
        notify=notifications.notify,
        online=online,
        existing_users=user_store.get_existing_user_ids,
        ring_timeout=settings.calls.ring_timeout,
        stun_urls=settings.calls.stun_urls,
        turn_urls=settings.calls.turn_urls,
        turn_secret=settings.calls.turn_secret,
        turn_ttl=settings.calls.turn_ttl,
    )
    rooms = RoomStream(pubsub=pubsub, chat=chat, joins=joins)
    hub = Hub(pubsub=pubsub, rooms=rooms, presence=presence)
    guard.add_listener(hub.on_revoked)
    pubsub.on_reset(hub.on_broker_reset)
    sockets = SocketEndpoint(
        guard=guard,
        hub=hub,
        dispatcher=Dispatcher(hub=hub, rooms=rooms, chat=chat, presence_status=presence.status, calls=calls),
        rate=settings.ratelimit.rule("ws_frames"),
    )
    supervisor = Supervisor()
    supervisor.add("presence", presence.run)
    supervisor.add("broker-watch", hub.watch_broker)
    supervisor.add("calls", calls.run)
    for name, source in sources.items():
        supervisor.add(f"events:{name}", source.run)
    monitor = PipelineMonitor(
        OutboxStore(db),
        DeadLetterStore(db),
        readers=[name for name, source in sources.items() if isinstance(source, OutboxSource)],
        consumers=list(sources),
        interval=settings.events.metrics_interval,
    )
    supervisor.add("events:metrics", monitor.run)
    janitor = Janitor(posts=post_store, outbox=OutboxStore(db), media=media, dead_letters=DeadLetterStore(db))
    supervisor.add("janitor", janitor.run)
    authenticator = Authenticator(guard)
    max_body = settings.server.max_body_bytes

    async def pubsub_ok() -> bool:
        return pubsub.healthy

    checks: dict[str, Check] = {"database": db.ping}
    if shared.ping is not None:
        checks["redis"] = shared.ping
        checks["pubsub"] = pubsub_ok
    if publisher is not None:
        checks["kafka"] = publisher.ping

    health_routes = HealthRoutes(checks, metrics=settings.metrics.enabled)
    auth_routes = AuthRoutes(accounts, authenticator, max_body)
    user_routes = UserRoutes(users, authenticator, media, settings.media.max_file_bytes, max_body)
    post_routes = PostRoutes(posts, authenticator, media, settings.media, max_body)
    feed_routes = FeedRoutes(feed, authenticator)
    notification_routes = NotificationRoutes(notifications, authenticator, max_body)
    media_routes = MediaRoutes(media)
    chat_routes = ChatRoutes(chat, authenticator, max_body)
    call_routes = CallRoutes(calls, authenticator)
    api: list[RouteGroup] = [
        auth_routes,
        user_routes,
        post_routes,
        feed_routes,
        notification_routes,
        media_routes,
        chat_routes,
        call_routes,
    ]
    operations = [*health_routes.operations(), *(op for group in api for op in group.operations())]
    docs_routes = OpenApiRoutes(operations, rate_limits=settings.ratelimit.enabled)
    # Starlette tries each route in turn, so the busiest groups go first (the groups'
    # paths never overlap: order matters only inside a group).
    by_traffic: list[RouteGroup] = [
        feed_routes,
        post_routes,
        user_routes,
        notification_routes,
        chat_routes,
        media_routes,
        call_routes,
        auth_routes,
    ]
    routes = one_route_per_path(
        [
            *(route for group in by_traffic for route in group.routes()),
            *sockets.routes(),
            *health_routes.routes(),
            *docs_routes.routes(),
        ]
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await open_database(settings, db, stack)
            stack.push_async_callback(shared.close)
            await pubsub.start()
            stack.push_async_callback(pubsub.close)
            stack.push_async_callback(media.close)
            if publisher is not None:
                stack.push_async_callback(publisher.close)
            await guard.start()
            await cache.start()
            stack.push_async_callback(cache.stop)
            stack.push_async_callback(mailer.close)
            stack.push_async_callback(accounts.drain)
            stack.push_async_callback(guard.stop)
            await supervisor.start()
            stack.push_async_callback(supervisor.stop)
            stack.push_async_callback(presence.stop)
            stack.callback(chat.stop)
            stack.push_async_callback(hub.shutdown)
            logger.info("socialhub ready")
            yield
            logger.info("socialhub stopping")

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(AccessLog),
            Middleware(StorableText),
            Middleware(
                RateLimitMiddleware,
                limiter=shared.limiter,
                settings=settings.ratelimit,
                tokens=tokens,
                by_ip=ip_limits(operations),
            ),
        ],
        exception_handlers={
            SocialhubError: handle_socialhub_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
    # The document this app serves, for the tests that hold it against the routes.
    app.state.openapi = docs_routes.document
    return app
