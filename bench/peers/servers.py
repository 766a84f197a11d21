"""The two servers of `vs-socketio`, each fresh for one round, and what their clients need.

`SocialhubSide`: `socialhub serve` (rate limits off) on a throw-away database of
`--database-url` (or the embedded PostgreSQL) and on Redis under a key prefix of its own;
users and sessions go in with SQL and rooms through `POST /chat/rooms`, as `ws-chat`
does (bench.ws.accounts). `SocketIoSide`: `node bench/peers/socketio/server.js` on the
same Redis under another prefix; it keeps no users, so tokens are signed for made-up ids
with the same secret and claims (socialhub's `TokenCodec`), and a room is just a name.
Both delete their Redis keys when they stop.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.server import MIB, ServerStartError, ThrowawayDatabase, free_port, stop_process, wait_answering
from bench.target import TargetError
from bench.ws.accounts import TOKEN_TTL_S, Account, create_room, seed_accounts
from bench.ws.servers import BenchServer, drop_redis_keys
from socialhub.services.tokens import TokenCodec

PEERS_DIR = Path(__file__).resolve().parent
SERVER_JS = PEERS_DIR / "socketio" / "server.js"
DRIVER_JS = PEERS_DIR / "driver" / "driver.js"
NODE_PARTS = (PEERS_DIR / "socketio", PEERS_DIR / "driver")
# Node starts in well under a second; a slow Redis connect is the only wait.
NODE_START_TIMEOUT_S = 30.0


def check_node(node: str) -> str:
    """The node executable, or TargetError with the exact command that installs what is missing."""
    found = shutil.which(node)
    if found is None:
        raise TargetError(
            f"{node} not found: vs-socketio needs Node.js 18 or later (Debian: apt-get install nodejs npm)"
        )
    missing = [d for d in NODE_PARTS if not (d / "node_modules").is_dir()]
    if missing:
        command = " && ".join(f"npm ci --prefix {_shown(d)}" for d in missing)
        raise TargetError(f"the Node parts of vs-socketio are not installed: run {command}")
    return found


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class SocialhubSide:
    """A fresh `socialhub serve` for one round, with its own database and Redis prefix."""

    name = "socialhub"
    proto = "socialhub"

    def __init__(self, database_url: str | None, redis_url: str, secret: str, keep_db: bool) -> None:
        self.database_url, self.redis_url, self.secret, self.keep_db = database_url, redis_url, secret, keep_db
        self.prefix = f"vsio:sh:{secrets.token_hex(4)}:"
        self.server: BenchServer | None = None
        self.db: ThrowawayDatabase | None = None
        self.db_url = ""
        self.accounts: list[Account] = []
        self.url = ""

    def __enter__(self) -> SocialhubSide:
        try:
            settings = {
                "SOCIALHUB_AUTH_JWT_SECRET": self.secret,
                "SOCIALHUB_REDIS_URL": self.redis_url,
                "SOCIALHUB_REDIS_KEY_PREFIX": self.prefix,
            }
            if self.database_url:
                self.db = ThrowawayDatabase(self.database_url, "socialhub_vsio_", keep=self.keep_db)
                settings["SOCIALHUB_DATABASE_URL"] = self.db.create()
            self.server = BenchServer(settings)
            self.server.start()
            self.url = self.server.url
            db_url = settings.get("SOCIALHUB_DATABASE_URL") or self.server.embedded_url()
            if db_url is None:
                raise ServerStartError("cannot find the embedded PostgreSQL of the server")
            self.db_url = db_url
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.server is not None and self.server.proc is not None
        return self.server.proc.pid

    def tokens(self, count: int) -> list[str]:
        """`count` users with a live session each (made once a round); their access tokens."""
        self.accounts = asyncio.run(seed_accounts(self.db_url, self.secret, count, secrets.token_hex(3)))
        return [a.token for a in self.accounts]

    def room(self, members: int) -> str:
        """A room of the first account and the next `members` (one: a direct room)."""
        owner, others = self.accounts[0], self.accounts[1 : members + 1]
        return create_room(self.url, owner, others, None if members == 1 else f"vs-socketio {secrets.token_hex(3)}")

    def logged_errors(self) -> dict[str, int]:
        return self.server.logged_errors() if self.server is not None else {}

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.db is not None:
            self.db.drop()
            self.db = None
        asyncio.run(drop_redis_keys(self.redis_url, self.prefix))


class SocketIoSide:
    """A fresh Socket.IO 4 + Redis adapter server (bench/peers/socketio) for one round."""

    name = "socketio"
    proto = "socketio"

    def __init__(self, node: str, redis_url: str, secret: str) -> None:
        self.node, self.redis_url, self.secret = node, redis_url, secret
        self.prefix = f"vsio:sio:{secrets.token_hex(4)}:"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="socialhub-bench-socketio-", suffix=".log")

    def __enter__(self) -> SocketIoSide:
        env = {**os.environ, "PORT": str(self.port), "REDIS_URL": self.redis_url, "KEY_PREFIX": self.prefix,
               "JWT_SECRET": self.secret, "NODE_ENV": "production"}  # fmt: skip
        self.proc = subprocess.Popen([self.node, str(SERVER_JS)], env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_answering(self.proc, f"{self.url}/healthz", "Socket.IO", self.log_tail, NODE_START_TIMEOUT_S)
        except ServerStartError:
            self.__exit__()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tokens(self, count: int) -> list[str]:
        """Tokens of socialhub's shape and secret for made-up users 1..count."""
        codec = TokenCodec(self.secret, TOKEN_TTL_S)
        return [codec.issue(i, 1_000_000 + i) for i in range(1, count + 1)]

    def room(self, members: int) -> str:
        return f"room-{secrets.token_hex(6)}"  # Socket.IO rooms need no creation and no members list

    def logged_errors(self) -> dict[str, int]:
        lines = [line for line in self.log_tail(200).splitlines() if line and not line.startswith("listening")]
        return {line[:200]: 1 for line in lines}

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        asyncio.run(drop_redis_keys(self.redis_url, self.prefix))
        self._log.close()


Side = SocialhubSide | SocketIoSide


def rss_mib(pid: int) -> float:
    try:
        return float(psutil.Process(pid).memory_info().rss) / MIB
    except psutil.Error:
        return 0.0
