"""The PostgreSQL pool and transactions (asyncpg). All SQL lives in storage/.

A database that is down, restarting or unreachable is `socialhub.errors.Unavailable`
to every caller, raised here (the one boundary), never asyncpg's or the socket's own
errors: HTTP answers 503 with Retry-After, the WebSocket an `error unavailable`, and
background workers tell an outage from a bug by it. The pool heals by itself: asyncpg
notices a connection the server closed and opens a new one at the next acquire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from asyncpg.transaction import Transaction

from socialhub.errors import Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a caller waits for a connection (a free one from the pool, or a new one from
# the server) before it is told `unavailable` (default of `database.connect_timeout`).
# A restarting server refuses at once; this bounds the other cases (a pool exhausted by
# a stalled server, a host that accepts TCP and never answers) so a request never hangs
# longer than a client's own timeout (browsers and SDKs commonly give up after 10-30 s).
CONNECT_TIMEOUT = 5.0
# /readyz answers within this even when the pool is exhausted: probes time out at 1-2 s
# by default (Kubernetes timeoutSeconds: 1), and a probe that hangs reads as down anyway.
PING_TIMEOUT = 2.0
# SQLSTATEs of a server going away: admin_shutdown (pg_ctl stop/restart, a failover
# terminating sessions), crash_shutdown, cannot_connect_now (starting up or shutting down).
_SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})
# Exception classes that may mean a lost connection; `is_lost` decides for each one.
_CONNECTION_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
# Refused by asyncpg before anything was sent: the statement cannot have run. InterfaceError
# on a closed connection; InternalClientError ("cannot switch to state ...; another
# operation is in progress") on a connection the server dropped in the middle of another
# caller's statement, handed out again before asyncpg saw it closed (seen under a
# PostgreSQL restart: tests/e2e/test_db_outage.py, about 1 run in 4).
_NOT_SENT = (asyncpg.InterfaceError, asyncpg.InternalClientError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool: pool connections never
    carry session state (LISTEN and session advisory locks use `connect_dedicated`;
    settings are given at connect), and asyncpg rolls back an open transaction itself.
    Its default reset query (UNLISTEN, RESET ALL, ...) is a round trip that doubled
    those of every read (py-spy, GET /feed under load)."""


class _OneLineReconnects(logging.Filter):
    """asyncpg's pool keeps `min_size` connections open in the background and logs every
    failed attempt with a traceback (1 s apart, doubling to 60 s): during an outage that
    is a traceback storm for nothing but "connection refused". The line stays; the
    cause is told in one line instead of the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith("Failed to restore the pool connection floor"):
            exc = record.exc_info[1]
            record.msg = f"{record.msg} ({type(exc).__name__}: {exc})"
            record.exc_info = None
            record.exc_text = None
        return True


_ONE_LINE_RECONNECTS = _OneLineReconnects()


class Database:
    """A connection pool, opened at start-up (`open`) and shared by every store; only
    storage/ sees it. `transaction()` for a store's own multi-statement writes (services
    get theirs as units of work, `storage.units`), `acquire()` for several reads on one
    connection.

    Every way in turns a lost or unreachable database into `socialhub.errors.Unavailable`
    (HTTP 503, WebSocket `error unavailable`), here and nowhere else; see `outage`."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._url = ""
        self._connect_timeout = CONNECT_TIMEOUT
        self._down_since: float | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the database is not open yet")
        return self._pool

    async def open(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 20,
        statement_timeout: float = 30.0,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        logging.getLogger("asyncpg.pool").addFilter(_ONE_LINE_RECONNECTS)  # once: addFilter ignores repeats
        self._pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_no_reset,
            # asyncpg's own default (60 s) would hold a request that long on a server that
            # accepts TCP but never answers the startup packet.
            timeout=connect_timeout,
            server_settings={
                "statement_timeout": str(int(statement_timeout * 1000)),
                "application_name": "socialhub",
                "timezone": "UTC",
            },
        )

    # -- connections ---------------------------------------------------------------------

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for the block. Not retried: the block may have written."""
        conn = await self._checkout()
        try:
            yield conn
        except _CONNECTION_ERRORS as exc:
            if is_lost(exc, conn):
                raise self._lost(exc, conn) from exc
            raise
        finally:
            await self.pool.release(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        conn, tx = await self._begin()
        try:
            try:
                yield conn
            except BaseException:
                if not _closed(conn):  # else nothing to roll back: the server already has
                    await tx.rollback()
                raise
            # A commit cut off by a lost connection may or may not have happened: it is
            # answered `unavailable` and never retried here (the client retries, and the
            # writes that matter carry their own idempotency key, e.g. client_msg_id).
            await tx.commit()
        except _CONNECTION_ERRORS as exc:
            if is_lost(exc, conn):
                raise self._lost(exc, conn) from exc
            raise
        finally:
            await self.pool.release(conn)

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

    async def connect_dedicated(self) -> asyncpg.Connection:
        """A connection outside the pool, for LISTEN and session-level advisory locks
        (the caller closes it). Unavailable when the database cannot be reached."""
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self._url, timeout=self._connect_timeout, server_settings={"application_name": "socialhub"}
            )
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from exc
        self._reachable()
        return conn

    # -- one statement on any pooled connection ---------------------------------------------

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._one(lambda conn: conn.fetch(query, *args))
        return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._one(lambda conn: conn.fetchrow(query, *args))
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._one(lambda conn: conn.fetchval(query, *args))

    async def execute(self, query: str, *args: Any) -> str:
        result: str = await self._one(lambda conn: conn.execute(query, *args))
        return result

    async def ping(self) -> bool:
        """For /readyz: bounded by PING_TIMEOUT, whatever the pool is doing."""
        try:
            async with asyncio.timeout(PING_TIMEOUT), self.acquire() as conn:
                return bool(await conn.fetchval("SELECT 1"))
        except Unavailable:
            return False  # logged once per outage by _unavailable
        except Exception as exc:  # any failure means "not ready"; no traceback per probe
            logger.warning("database ping failed: %r", exc)
            return False

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # -- the outage boundary ----------------------------------------------------------------

    async def _checkout(self) -> asyncpg.Connection:
        """A pooled connection within the connect timeout, or Unavailable. Any failure
        here is the database's: nothing of the caller's has run yet."""
        try:
            conn: asyncpg.Connection = await self.pool.acquire(timeout=self._connect_timeout)
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from exc
        self._reachable()
        return conn

    async def _begin(self) -> tuple[asyncpg.Connection, Transaction]:
        """A connection with its transaction begun. A BEGIN that fails on a lost
        connection is tried once more on another: nothing has been done yet."""
        for attempt in (1, 2):
            conn = await self._checkout()
            tx = conn.transaction()
            try:
                await tx.start()
                return conn, tx
            except BaseException as exc:
                lost = isinstance(exc, _CONNECTION_ERRORS) and is_lost(exc, conn)
                if lost:
                    _discard(conn)
                await self.pool.release(conn)
                if not lost:
                    raise
                if attempt == 2:
                    raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    async def _one(self, statement: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run one statement. It is tried once more only when asyncpg refused it before
        sending (the connection was already closed, asyncpg's InterfaceError): then it
        cannot have run, read or write. A connection lost once the statement was sent is
        never retried: a write may have committed."""
        for attempt in (1, 2):
            conn = await self._checkout()
            try:
                return await statement(conn)
            except _CONNECTION_ERRORS as exc:
                if not is_lost(exc, conn):
                    raise
                _discard(conn)
                if attempt == 2 or not isinstance(exc, _NOT_SENT):
                    raise self._unavailable(exc) from exc
            finally:
                await self.pool.release(conn)
        raise AssertionError("unreachable")

    def _lost(self, exc: BaseException, conn: asyncpg.Connection) -> Unavailable:
        """A connection found lost: closed so that the pool opens a fresh one in its place
        rather than hand it out again, and the error every caller sees."""
        _discard(conn)
        return self._unavailable(exc)

    def _unavailable(self, exc: BaseException) -> Unavailable:
        """The error every caller sees; the first of an outage is logged (one line, no
        traceback: an outage is not a bug), the others are not."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(
                "database unreachable (%s: %s); answering unavailable until it is back", type(exc).__name__, exc
            )
        return Unavailable("the database is unreachable; try again shortly")

    def _reachable(self) -> None:
        if self._down_since is not None:
            logger.warning("database reachable again after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None


def _discard(conn: asyncpg.Connection) -> None:
    """Close a connection found broken, so that the pool opens a fresh one in its place
    rather than hand it out again. asyncpg may already have detached it from the pool
    (it does when it sees the socket close): then there is nothing left to do."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass


def _closed(conn: asyncpg.Connection) -> bool:
    """Whether the connection is gone; one asyncpg already detached from the pool (it does
    when it sees the socket close) is, and refuses every method call."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def is_lost(exc: BaseException, conn: asyncpg.Connection | None = None) -> bool:
    """Whether `exc` means the database connection is gone or unreachable, rather than a
    fault of the statement. InterfaceError, OSError and TimeoutError count only once the
    connection is closed (asyncpg also raises InterfaceError for misuse, and a statement
    may hit a timeout of its own)."""
    if isinstance(exc, asyncpg.PostgresConnectionError):  # SQLSTATE class 08, incl. ConnectionDoesNotExistError
        return True
    if isinstance(exc, asyncpg.InternalClientError):  # the connection's protocol state is broken
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return exc.sqlstate in _SHUTDOWN_STATES
    if isinstance(exc, asyncpg.InterfaceError | OSError | TimeoutError):
        return conn is None or _closed(conn)
    return False
