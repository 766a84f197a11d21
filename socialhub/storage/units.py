"""Units of work: a transaction that storage hands out, so that the rules in services can
write several things all or none (a post and its event in the outbox, a password and
the end of the user's sessions) without ever holding a connection or the pool.

A service opens one with `Units.begin()` (or `Units.retrying` where concurrent writers
may deadlock) and passes it to the store methods that take one; those run their
statements in it. The block's end commits, an error rolls back. Everything about a lost
database stays where it is, in `Database` (`Unavailable`, retried only when nothing was
sent); a unit adds no round trip of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from socialhub.storage.database import Database

T = TypeVar("T")


class UnitOfWork:
    """One open transaction. Services only pass it along to store methods; its statement
    methods are for the stores (all SQL lives in storage/)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._conn.fetch(query, *args)
        return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._conn.fetchrow(query, *args)
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        result: str = await self._conn.execute(query, *args)
        return result

    async def executemany(self, query: str, args: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(query, args)


class Units:
    """Hands out units of work on the shared pool."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[UnitOfWork]:
        """One transaction for the block: committed when it ends, rolled back on an error."""
        async with self._db.transaction() as conn:
            yield UnitOfWork(conn)

    async def retrying(self, body: Callable[[UnitOfWork], Awaitable[T]], attempts: int = 3) -> T:
        """`body` in a unit, run again when PostgreSQL aborted it as a deadlock victim or a
        serialization failure (see `Database.retrying`): `body` must be safe to repeat."""
        return await self._db.retrying(lambda conn: body(UnitOfWork(conn)), attempts)
