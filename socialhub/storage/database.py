"""The PostgreSQL pool and transactions (asyncpg). All SQL lives in storage/."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

logger = logging.getLogger(__name__)

T = TypeVar("T")

Connection = asyncpg.Connection
Record = asyncpg.Record


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool: pool connections never
    carry session state (LISTEN and session advisory locks use `connect_dedicated`;
    settings are given at connect), and asyncpg rolls back an open transaction itself.
    Its default reset query (UNLISTEN, RESET ALL, ...) is a round trip that doubled
    those of every read (py-spy, GET /feed under load)."""


class Database:
    """A connection pool, opened at start-up (`open`) and shared by every store.
    `transaction()` for writes, `acquire()` for several reads on one connection."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._url = ""

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the database is not open yet")
        return self._pool

    async def open(self, url: str, *, min_size: int = 2, max_size: int = 20, statement_timeout: float = 30.0) -> None:
        self._url = url
        self._pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_no_reset,
            server_settings={
                "statement_timeout": str(int(statement_timeout * 1000)),
                "application_name": "socialhub",
                "timezone": "UTC",
            },
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def retrying(self, body: Callable[[asyncpg.Connection], Awaitable[T]], attempts: int = 3) -> T:
        """Run `body` in a transaction, again when PostgreSQL aborted it as a deadlock
        victim or a serialization failure: the standard remedy for those, which any
        workload of concurrent writes to shared rows meets now and then."""
        for attempt in range(1, attempts + 1):
            try:
                async with self.transaction() as conn:
                    return await body(conn)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == attempts:
                    raise
                logger.info("transaction retried after a deadlock or serialization failure")
                await asyncio.sleep(random.uniform(0.001, 0.01) * attempt)
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            yield conn

    async def connect_dedicated(self) -> asyncpg.Connection:
        """A connection outside the pool, for LISTEN and session-level advisory locks
        (the caller closes it)."""
        conn: asyncpg.Connection = await asyncpg.connect(self._url, server_settings={"application_name": "socialhub"})
        return conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(query, *args)
        return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.pool.fetchrow(query, *args)
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        result: str = await self.pool.execute(query, *args)
        return result

    async def ping(self) -> bool:
        try:
            return bool(await self.pool.fetchval("SELECT 1", timeout=2))
        except Exception:  # any failure means "not ready"
            logger.warning("database ping failed", exc_info=True)
            return False

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
