"""The one place that wires socialhub together.

`build(settings)` takes each adapter from the tables of `adapters.py` (keyed by the
config's names), builds the stores, services, workers and route groups; `steps` writes
the start/stop order down as data (`lifecycle.Step`, one owner each); `create_app` lays
out the routes and middleware and returns the Starlette app.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from socialhub import adapters
from socialhub.adapters import SharedState
from socialhub.api.http.asyncapi import AsyncApiRoutes, build_asyncapi
from socialhub.api.http.auth import AuthRoutes
from socialhub.api.http.calls import CallRoutes
from socialhub.api.http.chat import ChatRoutes
from socialhub.api.http.cors import Cors
from socialhub.api.http.errors import handle_http_exception, handle_socialhub_error, handle_unexpected
from socialhub.api.http.feed import FeedRoutes
from socialhub.api.http.health import Check, HealthRoutes
from socialhub.api.http.media import PRESIGNED_REDIRECT_CACHE, PUBLIC_REDIRECT_CACHE, MediaRoutes
from socialhub.api.http.middleware import Edge
from socialhub.api.http.notifications import NotificationRoutes
from socialhub.api.http.openapi import OpenApiRoutes
from socialhub.api.http.posts import PostRoutes
from socialhub.api.http.ratelimit import RateLimitMiddleware
from socialhub.api.http.routing import ConcreteReads, ErrorHandler, RouteGroup, ip_limits, one_route_per_path
from socialhub.api.http.security import Authenticator
from socialhub.api.http.static import StaticRoutes
from socialhub.api.http.users import UserRoutes
from socialhub.api.ws.dispatch import Dispatcher
from socialhub.api.ws.endpoint import SocketEndpoint
from socialhub.api.ws.hub import Hub
from socialhub.config import ConfigError, Settings
from socialhub.domain.protocol import CLOSE_RESTART
from socialhub.errors import SocialhubError
from socialhub.infra.events.base import Publisher
from socialhub.infra.events.metrics import PipelineMonitor
from socialhub.infra.events.outbox import OutboxSource
from socialhub.infra.mail.base import Mailer
from socialhub.infra.media.base import MediaStore
from socialhub.lifecycle import Drain, Step, running
from socialhub.secrets_file import load_or_create_secret
from socialhub.services.accounts import AccountService
from socialhub.services.calls import CallService
from socialhub.services.chat import ChatService
from socialhub.services.feed import FeedService
from socialhub.services.instances import InstanceLedger
from socialhub.services.janitor import Janitor
from socialhub.services.members import RoomMembers
from socialhub.services.notifications import NotificationService
from socialhub.services.passwords import Passwords
from socialhub.services.posts import PostService
from socialhub.services.presence import PresenceService
from socialhub.services.previews import PreviewService
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
from socialhub.storage.previews import PreviewStore
from socialhub.storage.units import Units
from socialhub.storage.users import UserStore
from socialhub.supervisor import Supervisor

logger = logging.getLogger(__name__)


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


def redirect_cache(settings: Settings) -> str:
    """Cache-Control of GET /media/{key}'s redirects (api/http/media.py says why)."""
    m = settings.media
    if m.public_base_url:
        return PUBLIC_REDIRECT_CACHE
    return PRESIGNED_REDIRECT_CACHE.format(seconds=int(m.presign_ttl // 2))


@dataclass
class Parts:
    """Everything `create_app` builds before it lays out routes and the lifecycle."""

    settings: Settings
    db: Database
    shared: SharedState
    media: MediaStore
    media_ping: Check | None  # for /readyz; None when the store is local
    mailer: Mailer
    publisher: Publisher | None
    supervisor: Supervisor
    guard: SessionGuard
    cache: ReadCache
    members: RoomMembers
    chat: ChatService
    hub: Hub
    groups: list[RouteGroup]  # the API's route groups, in the document's order
    busiest_first: list[RouteGroup]  # the same, in the order Starlette tries them
    sockets: SocketEndpoint
    tokens: TokenCodec


def build(settings: Settings) -> Parts:
    """Adapters (adapters.py picks each from config), stores, services, workers, routes."""
    secret = settings.auth.jwt_secret or load_or_create_secret(settings.data_path)
    if not settings.auth.jwt_secret and settings.redis.url:
        logger.warning(
            "auth.jwt_secret is not set: this instance signs tokens with the secret in its data_dir; "
            "instances that do not share that file will refuse each other's tokens"
        )
    db, supervisor = Database(), Supervisor()
    shared, media_backend, mailer = adapters.shared_state(settings), adapters.media(settings), adapters.mailer(settings)
    media = media_backend.store
    pubsub = shared.pubsub
    media_base = settings.server.public_url.rstrip("/")
    user_store, auth_store, post_store = UserStore(db), AuthStore(db), PostStore(db)
    tokens = TokenCodec(secret, settings.auth.access_ttl)
    guard = SessionGuard(tokens, auth_store, pubsub)
    auth = settings.auth
    accounts = AccountService(
        units=Units(db),
        users=user_store,
        auth=auth_store,
        passwords=Passwords(
            time_cost=auth.argon2_time_cost, memory_kib=auth.argon2_memory_kib, parallelism=auth.argon2_parallelism
        ),
        tokens=tokens,
        guard=guard,
        mailer=mailer,
        throttle=LoginThrottle(limiter=shared.limiter, rate=settings.ratelimit.rule("login_account"), secret=secret),
        spawn=supervisor.spawn,
        secret=secret,
        refresh_ttl=auth.refresh_ttl,
        otp_ttl=auth.otp_ttl,
        otp_max_attempts=auth.otp_max_attempts,
    )
    feed_cfg = settings.feed
    cache = ReadCache(
        post_store, pubsub, media_base, max_posts=feed_cfg.cache_posts, max_viewers=feed_cfg.cache_viewers
    )
    previews = PreviewService(media=media, store=PreviewStore(db), cache=cache, widths=settings.media.preview_widths)
    posts = PostService(
        units=Units(db), posts=post_store, users=user_store, media=media, cache=cache, previews=previews,
        fanout_threshold=feed_cfg.fanout_threshold,
    )  # fmt: skip
    feed = FeedService(posts=post_store, timelines=shared.timelines, values=shared.values, cache=cache)
    notifications = NotificationService(store=NotificationStore(db), pubsub=pubsub)
    outbox_store, dead_letters = OutboxStore(db), DeadLetterStore(db)
    path = adapters.event_path(settings, outbox_store, dead_letters, [feed, notifications])
    ledger = InstanceLedger(shared.counters, shared.values, instance_id=f"{socket.gethostname()}-{os.getpid()}")
    presence = PresenceService(
        ledger, shared.counters, shared.values, pubsub,
        save_last_seen=user_store.update_last_seen, load_last_seen=user_store.get_last_seen,
    )  # fmt: skip
    joins = RoomJoins(ledger, shared.counters)
    users = UserService(
        units=Units(db), users=user_store, media=media, media_base=media_base, cache=cache, presence=presence
    )
    chat_store = ChatStore(db)
    members = RoomMembers(chat_store, pubsub)
    rooms = RoomStream(pubsub=pubsub, store=chat_store, members=members, joins=joins)
    chat = ChatService(
        store=chat_store,
        users=user_store,
        members=members,
        rooms=rooms,
        notify=notifications.notify_all,
        joins=joins,
        spawn=supervisor.spawn,
    )

    async def online(user_ids: Sequence[int]) -> dict[int, bool]:
        return {int(v.user_id): v.status == "online" for v in await presence.status(user_ids)}

    calls_cfg = settings.calls
    calls = CallService(
        store=CallStore(db),
        publish=pubsub.publish,
        notify=notifications.notify,
        online=online,
        existing_users=user_store.get_existing_user_ids,
        ring_timeout=calls_cfg.ring_timeout,
        stun_urls=calls_cfg.stun_urls,
        turn_urls=calls_cfg.turn_urls,
        turn_secret=calls_cfg.turn_secret,
        turn_ttl=calls_cfg.turn_ttl,
    )
    hub = Hub(pubsub=pubsub, rooms=rooms, presence=presence)
    guard.add_listener(hub.on_revoked)
    pubsub.on_reset(hub.on_broker_reset)
    sockets = SocketEndpoint(
        guard=guard,
        hub=hub,
        dispatcher=Dispatcher(hub=hub, rooms=rooms, chat=chat, presence_status=presence.status, calls=calls),
        rate=settings.ratelimit.rule("ws_frames"),
    )
    # The workers. Presence's own worker ends this instance's presence when it stops.
    supervisor.add("presence", presence.run)
    supervisor.add("broker-watch", hub.watch_broker)
    supervisor.add("ws-keepalive", sockets.keepalive)
    supervisor.add("calls", calls.run)
    for name, source in path.sources.items():
        supervisor.add(f"events:{name}", source.run)
    monitor = PipelineMonitor(
        outbox_store,
        dead_letters,
        readers=[name for name, source in path.sources.items() if isinstance(source, OutboxSource)],
        consumers=list(path.sources),
        interval=settings.events.metrics_interval,
    )
    supervisor.add("events:metrics", monitor.run)
    janitor = Janitor(posts=post_store, outbox=outbox_store, media=media, dead_letters=dead_letters)
    supervisor.add("janitor", janitor.run)
    supervisor.add("previews", previews.run)

    authenticator, max_body = Authenticator(guard), settings.server.max_body_bytes
    feed_routes = FeedRoutes(feed, authenticator)
    post_routes = PostRoutes(posts, authenticator, media, settings.media, max_body)
    user_routes = UserRoutes(users, authenticator, media, settings.media.max_file_bytes, max_body)
    notification_routes = NotificationRoutes(notifications, authenticator, max_body)
    chat_routes, media_routes = (
        ChatRoutes(chat, authenticator, max_body),
        MediaRoutes(media, redirect=media_backend.redirect, redirect_cache=redirect_cache(settings)),
    )
    call_routes, auth_routes = CallRoutes(calls, authenticator), AuthRoutes(accounts, authenticator, max_body)
    # The document lists the groups in reading order; Starlette tries routes in turn, so
    # they are routed busiest first (the groups' paths never overlap).
    groups: list[RouteGroup] = [
        auth_routes, user_routes, post_routes, feed_routes, notification_routes, media_routes, chat_routes, call_routes,
    ]  # fmt: skip
    busiest_first: list[RouteGroup] = [
        feed_routes, post_routes, user_routes, notification_routes, chat_routes, media_routes, call_routes, auth_routes,
    ]  # fmt: skip
    return Parts(
        settings=settings, db=db, shared=shared, media=media, media_ping=media_backend.ping, mailer=mailer,
        publisher=path.publisher, supervisor=supervisor, guard=guard, cache=cache, members=members, chat=chat, hub=hub,
        groups=groups, busiest_first=busiest_first, sockets=sockets,
        tokens=tokens,
    )  # fmt: skip


def readiness(parts: Parts, drain: Drain) -> dict[str, Check]:
    """What /readyz asks: that the instance is not draining, the database, and Redis,
    Kafka and the S3 bucket where configured."""
    pubsub = parts.shared.pubsub

    async def pubsub_ok() -> bool:
        return pubsub.healthy

    checks: dict[str, Check] = {"serving": drain.serving, "database": parts.db.ping}
    if parts.shared.ping is not None:
        checks["redis"] = parts.shared.ping
        checks["pubsub"] = pubsub_ok
    if parts.publisher is not None:
        checks["kafka"] = parts.publisher.ping
    if parts.media_ping is not None:
        checks["media"] = parts.media_ping
    return checks


def steps(parts: Parts) -> list[Step]:
    """Start-up in this order, shutdown in the reverse one; each step has one owner.
    Sockets close first (with 1012) so that clients reconnect elsewhere while the rest
    winds down; the workers (and the background jobs, mail included) stop before what
    they use; the database goes last."""
    settings, db = parts.settings, parts.db
    database = AsyncExitStack()

    async def open_db() -> None:
        await open_database(settings, db, database)

    async def stop_chat_timers() -> None:
        parts.chat.stop()

    out = [
        Step("database", start=open_db, stop=database.aclose),
        Step("redis client", stop=parts.shared.close),
        Step("pub/sub", start=parts.shared.pubsub.start, stop=parts.shared.pubsub.close),
        Step("media store", stop=parts.media.close),
    ]
    if parts.publisher is not None:
        out.append(Step("kafka producer", stop=parts.publisher.close))
    out += [
        Step("mailer", stop=parts.mailer.close),
        Step("session guard", start=parts.guard.start, stop=parts.guard.stop),
        Step("read cache", start=parts.cache.start, stop=parts.cache.stop),
        Step("room members", start=parts.members.start, stop=parts.members.stop),
        Step("workers and jobs", start=parts.supervisor.start, stop=parts.supervisor.stop),
        Step("typing timers", stop=stop_chat_timers),
        Step("sockets", stop=parts.hub.shutdown),
    ]
    return out


def asyncapi_document(settings: Settings) -> dict[str, Any]:
    """The AsyncAPI document of this configuration: its address (`server.public_url`, else
    host:port) and its Kafka topic names (as the Kafka adapter is given them)."""
    public = urlsplit(settings.server.public_url)
    host = public.netloc or f"{settings.server.host}:{settings.server.port}"
    return build_asyncapi(
        adapters.kafka_topics(settings),
        host=host,
        secure=public.scheme == "https",
        bootstrap_servers=settings.kafka.bootstrap_servers,
    )


def create_app(settings: Settings) -> Starlette:
    parts = build(settings)

    async def close_sockets(window: float) -> None:
        await parts.hub.close_spread(CLOSE_RESTART, "server restarting", window)

    drain = Drain(settings.server.drain_seconds, close_sockets)
    health = HealthRoutes(readiness(parts, drain), metrics=settings.metrics.enabled)
    asyncapi = AsyncApiRoutes(asyncapi_document(settings))
    static = StaticRoutes()  # the web client at / and its files under /static/
    operations = [
        *health.operations(),
        *(op for group in parts.groups for op in group.operations()),
        *asyncapi.operations(),
        *static.operations(),
    ]
    docs = OpenApiRoutes(operations, rate_limits=settings.ratelimit.enabled, asyncapi=asyncapi.document)
    routes = one_route_per_path(
        [
            *(route for group in parts.busiest_first for route in group.routes()),
            *health.routes(),
            *docs.routes(),
            *asyncapi.routes(),
            *static.routes(),
        ]
    )
    life = steps(parts)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running(life):
            logger.info("socialhub ready")
            yield
            logger.info("socialhub stopping")

    # CORS wraps everything below the access log, so a preflight is never rate-limited
    # nor authenticated, and every answer to a listed origin (429 and 503 too) says so.
    cors = [Middleware(Cors, origins=settings.server.cors_origins)] if settings.server.cors_origins else []
    # The errors a handler may raise and their answers (Exception: the 500, Starlette's last resort).
    answers: dict[type[Exception], ErrorHandler] = {
        SocialhubError: handle_socialhub_error,
        HTTPException: handle_http_exception,
    }
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(Edge),
            *cors,
            Middleware(
                RateLimitMiddleware,
                limiter=parts.shared.limiter,
                settings=settings.ratelimit,
                tokens=parts.tokens,
                by_ip=ip_limits(operations),
            ),
            Middleware(ConcreteReads, routes=routes, handlers=answers),
        ],
        exception_handlers={**answers, Exception: handle_unexpected},
    )
    # The document this app serves, for the tests that hold it against the routes.
    app.state.openapi = docs.document
    app.state.asyncapi = asyncapi.document
    # What `socialhub serve` runs on SIGTERM before the server stops (cli.py).
    app.state.drain = drain
    # Where the server's HTTP protocol hands /ws upgrades (`socialhub serve`: cli.py).
    app.state.sockets = parts.sockets
    return app
