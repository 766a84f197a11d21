"""A fresh Matrix Synapse homeserver for one round of `vs-synapse`.

Synapse lives in a venv of its own (bench/peers/synapse/.venv, git-ignored, installed
from bench/peers/synapse/requirements.txt): its pins are not socialhub's. Each round
gets a temp dir with a generated homeserver config (bench.peers.matrix), a signing key
and a log file, and a database made for it on the `--database-url` server with the
encoding and collation Synapse requires, dropped after. One process, no workers.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.peers.matrix import CREATE_DATABASE, database_args, dump, homeserver_config, log_config, signing_key
from bench.server import ThrowawayDatabase, stop_process, wait_answering
from bench.target import TargetError

SYNAPSE_DIR = Path(__file__).resolve().parent / "synapse"
VENV = SYNAPSE_DIR / ".venv"
REQUIREMENTS = SYNAPSE_DIR / "requirements.txt"
INSTALL_COMMAND = (
    "python3 -m venv bench/peers/synapse/.venv && "
    "bench/peers/synapse/.venv/bin/pip install -r bench/peers/synapse/requirements.txt"
)
# A fresh database: Synapse creates its schema (a few hundred statements) on first start.
START_TIMEOUT_S = 240.0
# The port range of this machine's helpers is not this module's business: any free port.
LOG_TAIL_LINES = 20


def synapse_python() -> Path:
    """The venv's Python, or TargetError with the install command."""
    python = VENV / "bin" / "python"
    if not python.exists():
        raise TargetError(f"Synapse is not installed for vs-synapse: run {INSTALL_COMMAND}")
    return python


def synapse_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import synapse, importlib.metadata as m; print(m.version('matrix-synapse'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise TargetError(f"Synapse in {VENV} does not import: {out.stderr.strip()[-300:]}; run {INSTALL_COMMAND}")
    return out.stdout.strip()


# PostgreSQL 15 flushes a backend's pending statistics at most once a second, and an idle
# backend's after 10 s: before the first reading the setup's transactions must have landed.
STATS_SETTLE_S = 11.0


class DbCounter:
    """Transactions and rows written in one database (pg_stat_database), from after the
    setup settled to after the server stopped (a backend flushes its statistics when it
    ends): background work and shutdown included, as part of what the server does."""

    def __init__(self, admin_url: str, name: str) -> None:
        self.admin_url, self.name = admin_url, name
        self.before: tuple[int, int] | None = None
        self.after: tuple[int, int] | None = None

    def start(self) -> None:
        time.sleep(STATS_SETTLE_S)
        self.before = asyncio.run(_counts(self.admin_url, self.name))

    def stop(self) -> None:
        if self.before is not None and self.after is None:
            self.after = asyncio.run(_counts(self.admin_url, self.name))

    def per_message(self, messages: int) -> tuple[float, float] | None:
        """(transactions, rows inserted + updated + deleted) per message sent."""
        if self.before is None or self.after is None or messages < 1:
            return None
        (xacts1, rows1), (xacts0, rows0) = self.after, self.before
        return (xacts1 - xacts0) / messages, (rows1 - rows0) / messages


async def _counts(url: str, name: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit + xact_rollback AS xacts, tup_inserted + tup_updated + tup_deleted AS rows "
            "FROM pg_stat_database WHERE datname = $1",
            name,
        )
    finally:
        await conn.close()
    return (int(row["xacts"]), int(row["rows"])) if row is not None else (0, 0)


class SynapseSide:
    """`python -m synapse.app.homeserver` on a free port, on a database of its own."""

    name = "synapse"

    def __init__(self, python: Path, database_url: str, port: int, presence: bool, keep_db: bool) -> None:
        self.python, self.database_url, self.port = python, database_url, port
        self.presence, self.keep_db = presence, keep_db
        self.url = f"http://127.0.0.1:{port}"
        self.db = ThrowawayDatabase(database_url, prefix="synapse_bench_", keep=keep_db, create_sql=CREATE_DATABASE)
        self.db_name = self.db.name
        self.shared_secret = secrets.token_urlsafe(32)
        self._tmp = tempfile.TemporaryDirectory(prefix="socialhub-bench-synapse-")
        self.data_dir = Path(self._tmp.name)
        self.log_path = self.data_dir / "homeserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._db_created = False
        self.db_counter = DbCounter(database_url, self.db_name)

    def write_config(self) -> Path:
        d = str(self.data_dir)
        config = homeserver_config(port=self.port, data_dir=d, database=database_args(self.database_url, self.db_name),
                                   shared_secret=self.shared_secret, presence=self.presence)  # fmt: skip
        path = self.data_dir / "homeserver.yaml"
        path.write_text(dump(config))
        (self.data_dir / "log.config").write_text(dump(log_config(str(self.log_path))))
        (self.data_dir / "localhost.signing.key").write_text(signing_key())
        (self.data_dir / "media_store").mkdir()
        return path

    def __enter__(self) -> SynapseSide:
        try:
            self.db.create()
            self._db_created = True
            config = self.write_config()
            cmd = [str(self.python), "-m", "synapse.app.homeserver", "--config-path", str(config)]
            with open(self.data_dir / "stdout.log", "wb") as out:
                self.proc = subprocess.Popen(cmd, cwd=self.data_dir, stdout=out, stderr=subprocess.STDOUT)
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        wait_answering(self.proc, f"{self.url}/_matrix/client/versions", "Synapse", self.log_tail, START_TIMEOUT_S)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = []
        for name in ("stdout.log", "homeserver.log"):
            try:
                text += (self.data_dir / name).read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(text)

    def logged_errors(self) -> dict[str, int]:
        """Synapse's ERROR and CRITICAL log lines (the log holds WARNING and above), by text."""
        counts: dict[str, int] = {}
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return counts
        for line in lines:
            if " ERROR " in line or " CRITICAL " in line:
                key = line.split(" ", 2)[-1][:200]
                counts[key] = counts.get(key, 0) + 1
        return counts

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None
        if self._db_created:
            self.db_counter.stop()
            self._db_created = False
        self.db.drop()
        self._tmp.cleanup()
