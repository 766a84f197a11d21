"""The servers a socket scenario measures: started here, or running ones given by URL.

`BenchServer` is `socialhub serve` with the benchmark's settings; a `Target` is any
server the clients connect to (its URL, and its pid for CPU and memory figures). The Redis
keys of spawned servers are removed here (the throw-away database: bench.server).
"""

from __future__ import annotations

import contextlib
import sys
from urllib.parse import urlsplit

import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.server import SpawnedServer


class BenchServer(SpawnedServer):
    """`socialhub serve` with the benchmark's settings (database, Redis, JWT secret),
    ready when `/readyz` answers (the database, and Redis where configured)."""

    def __init__(self, settings: dict[str, str]) -> None:
        super().__init__(env=settings, ready_path="/readyz")

    def embedded_url(self) -> str | None:
        """A URL of the embedded cluster this server started, from its pid file."""
        try:
            lines = (self.data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        return f"postgresql://postgres@/postgres?host={lines[4].strip()}&port={lines[3].strip()}"


class Target(msgspec.Struct, frozen=True):
    """A server the clients connect to; `pid` None when it is not known (no CPU or RSS figures)."""

    url: str
    pid: int | None


async def drop_redis_keys(url: str, prefix: str) -> int:
    """Delete what the spawned servers left under their key prefix (presence flags
    outlive a stopped instance by design; a benchmark should not leave them)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await client.delete(*batch)
                batch.clear()
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


def listener_pid(url: str) -> int | None:
    port = urlsplit(url).port
    with contextlib.suppress(psutil.Error):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return int(c.pid)
    return None


def server_pid(url: str, given: list[int] | None, index: int) -> int | None:
    """The pid of the process listening on the URL's port; a --server-pid that is not it
    (a shell or wrapper around the server) would make every memory figure wrong."""
    pid = given[index] if given and index < len(given) else None
    found = listener_pid(url)
    if pid is not None and found is not None and found != pid:
        print(f"--server-pid {pid} does not listen on {url}; measuring pid {found}, which does", file=sys.stderr)
        return found
    if pid is None and found is None:
        print(f"cannot find the process listening on {url}: no server CPU or memory figures", file=sys.stderr)
    return pid if pid is not None else found


def hostport(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80
