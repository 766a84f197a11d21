"""The one place that wires socialhub together.

`create_app(settings)` picks each adapter from config, builds the stores, services
and the Starlette app, and returns it with an ordered lifespan: dependencies start in
the order below and stop in reverse.

    start: embedded PostgreSQL (if no database.url) -> migrations -> pool
           -> key-value store -> pub/sub -> session guard
    stop:  session guard -> background mail -> pub/sub -> key-value -> pool
           -> embedded PostgreSQL
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from socialhub.api.http.auth import AuthRoutes
from socialhub.api.http.errors import handle_http_exception, handle_socialhub_error, handle_unexpected
from socialhub.api.http.health import Check, HealthRoutes
from socialhub.api.http.middleware import AccessLog
from socialhub.api.http.ratelimit import RateLimitMiddleware
from socialhub.api.http.security import Authenticator
from socialhub.api.http.users import UserRoutes
from socialhub.config import Settings
from socialhub.errors import SocialhubError
from socialhub.infra.kv.base import KeyValue
from socialhub.infra.mail.base import Mailer
from socialhub.infra.pubsub.base import PubSub
from socialhub.secrets_file import load_or_create_secret
from socialhub.services.accounts import AccountService
from socialhub.services.passwords import Passwords
from socialhub.services.sessions import SessionGuard
from socialhub.services.tokens import TokenCodec
from socialhub.services.users import UserService
from socialhub.storage.auth import AuthStore
from socialhub.storage.database import Database
from socialhub.storage.embedded import EmbeddedPostgres
from socialhub.storage.migrate import migrate
from socialhub.storage.users import UserStore

logger = logging.getLogger(__name__)


def make_kv(settings: Settings) -> KeyValue:
    if settings.redis.url:
        from socialhub.infra.kv.redis import RedisKV

        return RedisKV.from_url(settings.redis.url, prefix=settings.redis.key_prefix)
    from socialhub.infra.kv.memory import MemoryKV

    return MemoryKV()


def make_pubsub(settings: Settings) -> PubSub:
    if settings.redis.url:
        from socialhub.infra.pubsub.redis import RedisPubSub

        return RedisPubSub(settings.redis.url, prefix=settings.redis.key_prefix)
    from socialhub.infra.pubsub.memory import MemoryPubSub

    return MemoryPubSub()


def make_mailer(settings: Settings) -> Mailer:
    if settings.mail.backend == "smtp":
        from socialhub.infra.mail.smtp import SmtpMailer

        return SmtpMailer(settings.mail.smtp_url, sender=settings.mail.from_address)
    from socialhub.infra.mail.file import FileMailer

    return FileMailer(settings.data_path / "mail", sender=settings.mail.from_address)


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
    kv = make_kv(settings)
    pubsub = make_pubsub(settings)
    mailer = make_mailer(settings)
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
        db=db,
        users=user_store,
        auth=auth_store,
        passwords=passwords,
        tokens=tokens,
        guard=guard,
        mailer=mailer,
        secret=secret,
        refresh_ttl=settings.auth.refresh_ttl,
        otp_ttl=settings.auth.otp_ttl,
        otp_max_attempts=settings.auth.otp_max_attempts,
    )
    users = UserService(db=db, users=user_store)
    authenticator = Authenticator(guard)
    max_body = settings.server.max_body_bytes

    async def pubsub_ok() -> bool:
        return pubsub.healthy

    checks: dict[str, Check] = {"database": db.ping}
    if settings.redis.url:
        checks["redis"] = kv.ping
        checks["pubsub"] = pubsub_ok

    routes: list[BaseRoute] = [
        *HealthRoutes(checks, metrics=settings.metrics.enabled).routes(),
        *AuthRoutes(accounts, authenticator, max_body).routes(),
        *UserRoutes(users, authenticator, max_body).routes(),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await open_database(settings, db, stack)
            stack.push_async_callback(kv.close)
            await pubsub.start()
            stack.push_async_callback(pubsub.close)
            await guard.start()
            stack.push_async_callback(mailer.close)
            stack.push_async_callback(accounts.drain)
            stack.push_async_callback(guard.stop)
            logger.info("socialhub ready")
            yield
            logger.info("socialhub stopping")

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(AccessLog),
            Middleware(RateLimitMiddleware, kv=kv, settings=settings.ratelimit, tokens=tokens),
        ],
        exception_handlers={
            SocialhubError: handle_socialhub_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
