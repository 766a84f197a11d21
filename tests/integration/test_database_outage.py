"""The database boundary (storage/database.py) against a private PostgreSQL the tests
stop, start and cut: every way in raises `Unavailable` while the server is gone, the
pool heals by itself, a statement cut off after it was sent is never run twice, and a
caller never waits on the pool longer than the connect timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from socialhub.errors import Unavailable
from socialhub.storage.database import Database, is_lost
from socialhub.supervisor import OutageLog
from tests.private_postgres import PrivatePostgres

CONNECT_TIMEOUT = 1.0
# Slack over the connect timeout for a loaded machine.
SLACK = 4.0


@pytest.fixture
async def db(private_postgres: PrivatePostgres) -> AsyncIterator[Database]:
    database = Database()
    await database.open(private_postgres.url, min_size=1, max_size=2, connect_timeout=CONNECT_TIMEOUT)
    yield database
    await database.close()


async def test_every_way_in_is_unavailable_while_the_server_is_down_and_heals_after(
    db: Database, private_postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    assert await db.fetchval("SELECT 1") == 1
    await asyncio.to_thread(private_postgres.stop, "fast")

    async def in_transaction() -> None:
        async with db.transaction() as conn:
            await conn.execute("SELECT 1")

    async def on_one_connection() -> None:
        async with db.acquire() as conn:
            await conn.execute("SELECT 1")

    with caplog.at_level(logging.WARNING, logger="socialhub.storage.database"):
        for way in (
            db.fetch("SELECT 1"),
            db.fetchrow("SELECT 1"),
            db.fetchval("SELECT 1"),
            db.execute("SELECT 1"),
            in_transaction(),
            on_one_connection(),
            db.connect_dedicated(),
        ):
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                await way
            assert time.monotonic() - started < CONNECT_TIMEOUT + SLACK
            assert caught.value.code == "unavailable" and caught.value.retry_after > 0
            assert is_lost(caught.value.__cause__ or caught.value), repr(caught.value.__cause__)
        assert await db.ping() is False
    # One line for the outage, not one per call, and no traceback.
    told = [r for r in caplog.records if r.name == "socialhub.storage.database"]
    assert len(told) == 1 and told[0].exc_info is None, [r.getMessage() for r in told]

    await asyncio.to_thread(private_postgres.start)
    # The first call after the restart succeeds: no stale connection is handed out.
    assert await db.fetchval("SELECT 2") == 2
    async with db.transaction() as conn:
        assert await conn.fetchval("SELECT 3") == 3
    assert await db.ping() is True


async def test_a_statement_cut_off_after_it_was_sent_is_not_run_again(
    db: Database, private_postgres: PrivatePostgres
) -> None:
    """A sequence is not transactional: it counts every time the statement runs."""
    await db.execute("CREATE SEQUENCE IF NOT EXISTS cut_off")
    admin = await asyncpg.connect(private_postgres.url)
    try:
        running = asyncio.create_task(db.execute("SELECT nextval('cut_off'), pg_sleep(30)"))
        for _ in range(100):
            victims = await admin.fetch(
                "SELECT pid FROM pg_stat_activity"
                " WHERE query LIKE 'SELECT nextval(''cut_off'')%' AND pid <> pg_backend_pid()"
            )
            if victims:
                break
            await asyncio.sleep(0.05)
        assert victims, "the statement never started"
        await admin.execute("SELECT pg_terminate_backend($1)", victims[0]["pid"])
        with pytest.raises(Unavailable):
            await running
        assert await admin.fetchval("SELECT last_value FROM cut_off") == 1
    finally:
        await admin.close()
    # The pool opens a new connection in place of the terminated one.
    assert await db.fetchval("SELECT nextval('cut_off')") == 2


async def test_a_caller_waits_for_a_busy_pool_no_longer_than_the_connect_timeout(db: Database) -> None:
    async with db.acquire(), db.acquire():  # max_size=2: the pool is exhausted
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await db.fetchval("SELECT 1")
        waited = time.monotonic() - started
        assert CONNECT_TIMEOUT * 0.9 <= waited < CONNECT_TIMEOUT + SLACK
    assert await db.fetchval("SELECT 1") == 1


async def test_statement_errors_are_not_outages(db: Database) -> None:
    """A bad statement is the caller's error, with its own class, not `unavailable`."""
    with pytest.raises(asyncpg.UndefinedTableError):
        await db.fetch("SELECT * FROM no_such_table")
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with db.transaction() as conn:
            await conn.fetchval("SELECT 1 / 0")
    with pytest.raises(asyncpg.QueryCanceledError):  # a statement timeout is 57014, not a shutdown
        async with db.transaction() as conn:
            await conn.execute("SET LOCAL statement_timeout = 10")
            await conn.execute("SELECT pg_sleep(1)")


def test_an_outage_is_logged_when_it_starts_and_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.outage")
    outage = OutageLog(log, "worker w")
    with caplog.at_level(logging.INFO, logger="test.outage"):
        outage.ok()
        for _ in range(50):
            outage.failed(Unavailable("the database is unreachable"))
        outage.ok()
        outage.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unavailable (the database is unreachable)" in lines[0]
    assert "going on after" in lines[1] and "50 attempts" in lines[1]
    assert all(r.exc_info is None for r in caplog.records)
