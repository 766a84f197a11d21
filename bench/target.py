"""The server a scenario measures: one it starts itself, or a running one (`--url`).

A started server runs with rate limits off and a JWT secret known to the benchmark (so
it can sign tokens for users it inserts with SQL). Its database is the embedded
PostgreSQL, or with `--database-url` a throw-away database created on that PostgreSQL
for the run and dropped after (much faster to set up than initdb). `--redis` points
the server at Redis (timelines, pub/sub); `--kafka` starts the test suite's tansu
broker and points the server at it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.server import ServerWatch, SpawnedServer, ThrowawayDatabase
from bench.ws.servers import drop_redis_keys


class TargetError(RuntimeError):
    pass


def add_target_options(p: argparse.ArgumentParser, twice: bool = False) -> None:
    """The server options every scenario has; `twice`: `--url` and `--server-pid` may be
    given twice (the socket scenarios measure two instances on one Redis with `--redis`)."""
    g = p.add_argument_group("server")
    action = "append" if twice else "store"
    more = " (twice with --redis: two instances)" if twice else ""
    g.add_argument("--url", action=action, help=f"a running server to measure{more} (default: start one for the run)")
    g.add_argument(
        "--server-pid", type=int, action=action, help=f"with --url: its pid, to report its CPU and RSS{more}"
    )
    g.add_argument("--jwt-secret", help="with --url: the server's auth.jwt_secret (to sign tokens for seeded users)")
    g.add_argument(
        "--database-url",
        help="started server: a PostgreSQL to make a throw-away database on (e.g. postgresql://127.0.0.1/test); "
        "with --url: the server's own database, where the data set is inserted",
    )
    g.add_argument("--redis", nargs="?", const="redis://127.0.0.1:6379/0", help="started server: use this Redis")
    g.add_argument("--kafka", action="store_true", help="started server: start a tansu broker, use the Kafka path")


class Target:
    """Context manager: `url`, `db_url`, `secret`, `watch` (None when the pid is unknown)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server: SpawnedServer | None = None
        self.url = ""
        self.db_url: str | None = None
        self.secret: str | None = None
        self.watch: ServerWatch | None = None
        self.description = ""
        self._db: ThrowawayDatabase | None = None
        self._broker: Any = None
        self._broker_dir: tempfile.TemporaryDirectory[str] | None = None
        self._redis_prefix: str | None = None

    def __enter__(self) -> Target:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        a = self.args
        if a.url:
            self.url = a.url.rstrip("/")
            self.db_url, self.secret = a.database_url, a.jwt_secret
            self.watch = ServerWatch(a.server_pid) if a.server_pid else None
            self.description = f"{self.url} (running server" + (f", pid {a.server_pid})" if a.server_pid else ")")
            return
        self.secret = secrets.token_urlsafe(32)
        env = {"SOCIALHUB_AUTH_JWT_SECRET": self.secret}
        parts = ["started by the benchmark", "rate limits off"]
        if a.database_url:
            self._db = ThrowawayDatabase(a.database_url)
            env["SOCIALHUB_DATABASE_URL"] = self.db_url = self._db.create()
            parts.append(f"PostgreSQL {urlsplit(a.database_url).netloc} (throw-away database {self._db.name})")
        else:
            parts.append("embedded PostgreSQL")
        if a.redis:
            env["SOCIALHUB_REDIS_URL"] = a.redis
            self._redis_prefix = f"bench:{secrets.token_hex(4)}:"  # deleted after the run
            env["SOCIALHUB_REDIS_KEY_PREFIX"] = self._redis_prefix
            parts.append(f"Redis {a.redis}")
        if a.kafka:
            from tests.kafka_broker import TansuBroker

            self._broker_dir = tempfile.TemporaryDirectory(prefix="socialhub-bench-tansu-")
            self._broker = TansuBroker(Path(self._broker_dir.name))
            self._broker.start()
            env["SOCIALHUB_KAFKA_BOOTSTRAP_SERVERS"] = self._broker.bootstrap
            parts.append(f"Kafka (tansu) {self._broker.bootstrap}")
        self.server = SpawnedServer(env, ready_path="/readyz")
        print(f"starting socialhub serve on {self.server.url} ...", file=sys.stderr, flush=True)
        self.server.start()
        assert self.server.proc is not None
        self.url = self.server.url
        pgdata = None if a.database_url else self.server.data_dir / "postgres"
        if self.db_url is None:
            self.db_url = _embedded_url(pgdata) if pgdata is not None else None
        if pgdata is None and urlsplit(a.database_url).hostname in ("127.0.0.1", "localhost", "::1"):
            self.watch = LocalPostgresWatch(self.server.proc.pid)
            parts.append("PostgreSQL CPU: the whole local cluster, other users' work included")
        else:
            self.watch = ServerWatch(self.server.proc.pid, pgdata)
        self.description = f"{self.url} ({', '.join(parts)}; pid {self.server.proc.pid})"

    def require_database(self) -> tuple[str, str]:
        if self.db_url is None or self.secret is None:
            raise TargetError(
                "seeding needs the server's database and JWT secret: with --url give --database-url and --jwt-secret"
            )
        return self.db_url, self.secret

    def logged_errors(self) -> dict[str, int]:
        return self.server.logged_errors() if self.server is not None else {}

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        if self._broker_dir is not None:
            self._broker_dir.cleanup()
            self._broker_dir = None
        if self._db is not None:
            self._db.drop()
            self._db = None
        if self._redis_prefix is not None:
            # Timelines and presence flags outlive the server by design; a benchmark's should not.
            asyncio.run(drop_redis_keys(self.args.redis, self._redis_prefix))
            self._redis_prefix = None


class LocalPostgresWatch(ServerWatch):
    """A server on a PostgreSQL of this machine: its CPU is counted over the whole cluster
    (every `postgres` process), since the data dir of a cluster we did not start is unknown."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid, Path("/nonexistent"))  # a pgdata, so that PostgreSQL CPU is reported

    def _postgres(self) -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["name"]) if p.info["name"] in ("postgres", "postmaster")]


def _embedded_url(pgdata: Path) -> str | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return f"postgresql://postgres@/postgres?host={lines[4].strip()}&port={lines[3].strip()}"
