"""Migrations: applied once, in order, even when instances start at the same moment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from socialhub.ids import id_time
from socialhub.storage.migrate import load_migrations, migrate
from tests.conftest import fresh_database


@pytest.fixture
async def empty_db() -> AsyncIterator[str]:
    async with fresh_database("socialhub_mig") as url:
        yield url


async def test_concurrent_migrations_apply_each_file_once(empty_db: str) -> None:
    results = await asyncio.gather(*[migrate(empty_db) for _ in range(4)])
    versions = [m.version for m in load_migrations()]
    assert sorted(v for r in results for v in r) == versions  # every file exactly once overall
    conn = await asyncpg.connect(empty_db)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == versions
        assert await migrate(conn) == []
        # Python and SQL agree on the id layout.
        made = await conn.fetchval("SELECT socialhub_id()")
        assert abs(id_time(made) - datetime.now(UTC)) < timedelta(seconds=5)
        ids = [await conn.fetchval("SELECT socialhub_id()") for _ in range(50)]
        assert ids == sorted(ids) and len(set(ids)) == 50
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_half_applied(empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE b (x int); SELECT no_such_function();")
    with pytest.raises(asyncpg.PostgresError):
        await migrate(empty_db, tmp_path)
    conn = await asyncpg.connect(empty_db)
    try:
        assert await conn.fetchval("SELECT to_regclass('a') IS NOT NULL")
        assert await conn.fetchval("SELECT to_regclass('b') IS NULL")
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 1
    finally:
        await conn.close()


def test_migration_names_are_checked(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("")
    with pytest.raises(RuntimeError, match="NNNN_name"):
        load_migrations(tmp_path)
