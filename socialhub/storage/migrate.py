"""Forward-only migrations: numbered .sql files, each applied in its own transaction,
recorded in schema_migrations, under an advisory lock so that instances starting at
once apply each file exactly once."""

from __future__ import annotations

import hashlib
import logging
import re
from importlib import resources
from pathlib import Path

import asyncpg
import msgspec

logger = logging.getLogger(__name__)

# pg_advisory_lock key: an arbitrary constant ("socialhub" in ASCII, truncated to 63 bits).
LOCK_KEY = 0x736F6369616C6875
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """Where the .sql files are: inside the installed wheel, or the source checkout."""
    packaged = Path(str(resources.files("socialhub"))) / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise RuntimeError(f"migration file {path.name}: expected NNNN_name.sql")
        found.append(Migration(version=int(m.group(1)), name=m.group(2), sql=path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number in {directory}")
    return found


async def migrate(url_or_conn: str | asyncpg.Connection, directory: Path | None = None) -> list[int]:
    """Apply what is missing; return the versions applied now."""
    conn = await asyncpg.connect(url_or_conn) if isinstance(url_or_conn, str) else url_or_conn
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            return await _apply(conn, load_migrations(directory))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        if isinstance(url_or_conn, str):
            await conn.close()


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> list[int]:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version    integer PRIMARY KEY,
               name       text NOT NULL,
               checksum   text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    done = {r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")}
    applied: list[int] = []
    for m in migrations:
        if m.version in done:
            if done[m.version] != m.checksum:
                logger.warning("migration %04d_%s changed after it was applied", m.version, m.name)
            continue
        async with conn.transaction():
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
        logger.info("applied migration %04d_%s", m.version, m.name)
        applied.append(m.version)
    return applied
