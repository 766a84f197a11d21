"""Fixtures shared by every test: a fresh PostgreSQL database per run, settings, apps.

Real services only. PostgreSQL: $SOCIALHUB_TEST_PG (an admin URL; default the local
server's `test` database), in which a database `socialhub_test_<random>` is created for
the run and dropped after. Redis: $SOCIALHUB_TEST_REDIS_URL (default local), with a
random key prefix per app so runs never collide. A missing service fails loudly.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from socialhub.app import create_app
from socialhub.config import Settings, load_settings, with_overrides
from socialhub.storage.database import Database

pytest_plugins = ["tests.conftest_kafka", "tests.private_redis", "tests.private_postgres", "tests.s3_server"]
ADMIN_URL = os.environ.get("SOCIALHUB_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SOCIALHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_SECRET = "test-secret-" + "x" * 40
# argon2id at its cheapest keeps sign-up/login tests fast; production cost is tested in
# tests/unit/test_passwords.py and tests/integration/test_password_rehash.py.
CHEAP_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}


async def create_database(prefix: str) -> str:
    """A new, empty database on the test server; its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(ADMIN_URL)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}); start it (see .ci/run)")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"


async def drop_database(url: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def fresh_database(prefix: str) -> AsyncIterator[str]:
    """A database of its own for the block (tests whose readers must see only their events)."""
    url = await create_database(prefix)
    try:
        yield url
    finally:
        await drop_database(url)


@asynccontextmanager
async def migrated_database(prefix: str) -> AsyncIterator[str]:
    """A database of its own for the block, with every migration applied."""
    from socialhub.storage.migrate import migrate

    async with fresh_database(prefix) as url:
        await migrate(url)
        yield url


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    """One plain connection (for SQL a test writes or checks by hand)."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def pool(url: str, **options: Any) -> AsyncIterator[Database]:
    """socialhub's own pool on `url` (Database.open's options), closed after the block."""
    database = Database()
    await database.open(url, **options)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    async with fresh_database("socialhub_test") as url:
        yield url


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for an app under test; keyword arguments override sections."""

    def build(*, redis: bool | str = False, **sections: dict[str, Any]) -> Settings:
        """`redis`: True for the tests' Redis, or the URL of another (a private one)."""
        base = load_settings(env={})
        server = {"data_dir": str(tmp_path / "data"), **sections.pop("server", {})}
        auth = {"jwt_secret": TEST_SECRET, **CHEAP_ARGON2, **sections.pop("auth", {})}
        database = {"url": database_url, **sections.pop("database", {})}
        ratelimit = sections.pop("ratelimit", {"enabled": False})
        redis_section = sections.pop("redis", {})
        if redis:
            url = redis if isinstance(redis, str) else REDIS_URL
            redis_section = {"url": url, "key_prefix": f"shtest:{secrets.token_hex(4)}:", **redis_section}
        return with_overrides(
            base,
            server=server,
            auth=auth,
            database=database,
            redis=redis_section,
            ratelimit=ratelimit,
            **sections,
        )

    return build


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app with its lifespan started, and an httpx client talking to it in-process."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings()) as c:
        yield c


class Account:
    """A signed-up user and a client that sends their token."""

    def __init__(self, client: httpx.AsyncClient, body: dict[str, Any], data: dict[str, Any]) -> None:
        self.client = client
        self.username: str = body["username"]
        self.email: str = body["email"]
        self.password: str = body["password"]
        self.id: str = data["user"]["id"]
        self.token: str = data["token"]
        self.refresh_token: str = data["refresh_token"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.client.get(url, headers=self.headers, **kw)

    async def post(self, url: str, **kw: Any) -> httpx.Response:
        return await self.client.post(url, headers=self.headers, **kw)

    async def patch(self, url: str, **kw: Any) -> httpx.Response:
        return await self.client.patch(url, headers=self.headers, **kw)

    async def delete(self, url: str, **kw: Any) -> httpx.Response:
        return await self.client.delete(url, headers=self.headers, **kw)


async def signup(client: httpx.AsyncClient, **fields: str) -> Account:
    u = "u" + secrets.token_hex(6)
    body = {"name": f"User {u}", "email": f"{u}@example.test", "username": u, "password": "correct horse 1"}
    body.update(fields)
    r = await client.post("/auth/signup", json=body)
    assert r.status_code == 201, r.text
    return Account(client, body, r.json())


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"}, body
    return str(body["error"]["code"])
