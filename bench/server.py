"""The server side of a benchmark: start `socialhub serve` for it, and watch what it uses.

`SpawnedServer` runs the server on a free port with a throw-away data dir (embedded
PostgreSQL, rate limits off) and stops it with SIGTERM, as an operator would.
`ThrowawayDatabase` makes a database of its own on a given PostgreSQL for one run (a
shared database such as `test` is other people's: a benchmark never writes there).
`ServerWatch` reads CPU time and memory of the server process and of the embedded
PostgreSQL cluster, which `pg_ctl` detaches from the server (its postmaster is not a
child of the server process), so it is found by its data directory instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import psutil  # type: ignore[import-untyped,unused-ignore]

# Embedded PostgreSQL runs initdb on first start; a slow disk can make that take a while.
START_TIMEOUT_S = 120.0
# uvicorn's graceful shutdown is 15 s (cli.py), then the cluster is stopped.
STOP_TIMEOUT_S = 45.0
MIB = 1024 * 1024
# The line of a traceback that names the exception ("pkg.SomeError: message"), not the
# DETAIL/HINT lines asyncpg adds after it.
LONG_NUMBER = re.compile(r"\d{6,}")
EXCEPTION_LINE = re.compile(r"^(?!DETAIL|HINT)[A-Za-z_][\w.]*(: .*)?$")

# A process's identity: (pid, create_time) tells a reused pid from the original.
ProcessKey = tuple[int, float]


class CpuSnapshot(msgspec.Struct, frozen=True):
    """CPU seconds (user + system) per process, for the app and for PostgreSQL."""

    app: dict[ProcessKey, float]
    postgres: dict[ProcessKey, float]


class ServerUsage(msgspec.Struct, frozen=True):
    """What the server used over one measured window."""

    app_cpu_s: float
    postgres_cpu_s: float | None
    app_rss_mib: float
    app_peak_rss_mib: float
    postgres_pss_mib: float | None


class ServerStartError(RuntimeError):
    pass


class ThrowawayDatabase:
    """A database created on the PostgreSQL of `admin_url` for one run, dropped after
    (unless `keep`); `url` is the same URL pointing at it."""

    def __init__(
        self,
        admin_url: str,
        prefix: str = "socialhub_bench_",
        keep: bool = False,
        create_sql: str = 'CREATE DATABASE "{name}"',
    ) -> None:
        """`create_sql`: the statement that makes it, `{name}` its name (a peer may need
        an encoding or collation of its own)."""
        self.admin_url = admin_url
        self.name = prefix + secrets.token_hex(4)
        self.url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{self.name}"))
        self.keep = keep
        self.create_sql = create_sql
        self._created = False

    def create(self) -> str:
        asyncio.run(_admin(self.admin_url, self.create_sql.format(name=self.name)))
        self._created = True
        return self.url

    def drop(self) -> None:
        if self._created and not self.keep:
            asyncio.run(_admin(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._created = False

    def __enter__(self) -> ThrowawayDatabase:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_answering(
    proc: subprocess.Popen[bytes], url: str, what: str, log_tail: Callable[[], str], timeout: float
) -> None:
    """Until `url` answers 200; ServerStartError, with the log's tail, when `proc` exits
    first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{what} exited with {proc.returncode}:\n{log_tail()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise ServerStartError(f"{what}: no answer on {url} after {timeout:.0f} s:\n{log_tail()}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, the graceful shutdown waited for `timeout` seconds, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


class SpawnedServer:
    """`socialhub serve` in a temporary data dir, started and stopped by the benchmark.

    `env` adds settings (`SOCIALHUB_DATABASE_URL`, `SOCIALHUB_REDIS_URL`, ...) to the
    embedded defaults; `ready_path` is the route polled until it answers 200.
    """

    def __init__(self, env: Mapping[str, str] | None = None, ready_path: str = "/healthz") -> None:
        self.env = dict(env or {})
        self.ready_path = ready_path
        self._tmp = tempfile.TemporaryDirectory(prefix="socialhub-bench-")
        self.data_dir = Path(self._tmp.name)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # The operator's SOCIALHUB_* settings (a database URL, a config file) are left out
        # on purpose: a spawned server runs on the embedded defaults plus `self.env`.
        env = {key: value for key, value in os.environ.items() if not key.startswith("SOCIALHUB_")}
        env["SOCIALHUB_SERVER_DATA_DIR"] = str(self.data_dir)
        env["SOCIALHUB_RATELIMIT_ENABLED"] = "false"
        env["SOCIALHUB_SERVER_DRAIN_SECONDS"] = "0"  # a benchmark's server stops at once on SIGTERM
        env.update(self.env)
        cmd = [sys.executable, "-m", "socialhub.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_answering(self.proc, f"{self.url}{self.ready_path}", "socialhub serve", self.log_tail, START_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM, wait for the graceful shutdown, clean up; the server's exit code."""
        code = stop_process(self.proc) if self.proc is not None else None
        # A server that was killed leaves its cluster running; stop that one postmaster.
        postmaster = find_postmaster(self.data_dir / "postgres")
        if postmaster is not None:
            postmaster.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
            try:
                postmaster.wait(STOP_TIMEOUT_S)
            except psutil.TimeoutExpired:
                postmaster.kill()
        self._tmp.cleanup()
        return code

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def logged_errors(self) -> dict[str, int]:
        """The server's error-level log records, each as its message and the exception's
        last line, with how often each occurred."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {}
        counts: dict[str, int] = {}
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not one of socialhub's JSON log lines (a warning printed by a library)
            if not isinstance(record, dict) or record.get("level") not in ("error", "critical"):
                continue
            summary = str(record.get("msg", "")).strip()
            raised = [m.group(0) for m in map(EXCEPTION_LINE.match, str(record.get("exc", "")).splitlines()) if m]
            if raised:
                summary += f": {raised[-1]}"
            summary = LONG_NUMBER.sub("{id}", summary)  # so that one error on many ids counts as one
            counts[summary] = counts.get(summary, 0) + 1
        return counts


def find_postmaster(pgdata: Path) -> psutil.Process | None:
    """The postmaster serving `pgdata`, from the pid file PostgreSQL keeps there."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        proc = psutil.Process(pid)
        return proc if "postgres" in proc.name() else None
    except (OSError, ValueError, psutil.Error):
        return None


class ServerWatch:
    """CPU and memory of a server process (and its embedded PostgreSQL, when known)."""

    def __init__(self, pid: int, pgdata: Path | None = None) -> None:
        self.app = psutil.Process(pid)
        self.pgdata = pgdata
        self._peak_rss = 0

    def snapshot(self) -> CpuSnapshot:
        self.sample_memory()
        return CpuSnapshot(app=_cpu_times(_with_children(self.app)), postgres=_cpu_times(self._postgres()))

    def sample_memory(self) -> None:
        try:
            self._peak_rss = max(self._peak_rss, self.app.memory_info().rss)
        except psutil.Error:
            pass

    def usage(self, before: CpuSnapshot, after: CpuSnapshot) -> ServerUsage:
        try:
            rss = self.app.memory_info().rss
        except psutil.Error:
            rss = 0
        self._peak_rss = max(self._peak_rss, rss)
        postgres = self._postgres()
        pss: float | None = None
        if postgres:
            # PSS shares each shared page out among the processes mapping it, so the sum
            # over the cluster is its real footprint (a sum of RSS counts shared_buffers
            # once per backend).
            pss = sum(_pss(proc) for proc in postgres) / MIB
        return ServerUsage(
            app_cpu_s=_cpu_delta(before.app, after.app),
            postgres_cpu_s=_cpu_delta(before.postgres, after.postgres) if self.pgdata is not None else None,
            app_rss_mib=rss / MIB,
            app_peak_rss_mib=self._peak_rss / MIB,
            postgres_pss_mib=pss,
        )

    def _postgres(self) -> list[psutil.Process]:
        if self.pgdata is None:
            return []
        postmaster = find_postmaster(self.pgdata)
        return _with_children(postmaster) if postmaster is not None else []


def _with_children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def _cpu_times(procs: list[psutil.Process]) -> dict[ProcessKey, float]:
    out: dict[ProcessKey, float] = {}
    for proc in procs:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                out[(proc.pid, proc.create_time())] = times.user + times.system
        except psutil.Error:
            pass  # ended between the listing and the read
    return out


def _cpu_delta(before: dict[ProcessKey, float], after: dict[ProcessKey, float]) -> float:
    # A process born during the window counts in full; one that ended during it is lost
    # (PostgreSQL backends live as long as the pool's connections, so that is rare).
    return sum(cpu - before.get(key, 0.0) for key, cpu in after.items())


def _pss(proc: psutil.Process) -> int:
    try:
        info = proc.memory_full_info()
        return int(getattr(info, "pss", info.rss))
    except psutil.Error:
        return 0
