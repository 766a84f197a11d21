"""The PostgreSQL pool and transactions (asyncpg). All SQL lives in storage/."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

logger = logging.getLogger(__name__)

Connection = asyncpg.Connection
Record = asyncpg.Record


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


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
