"""Start a real `socialhub serve` in a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import TEST_SECRET
from tests.ports import free_port


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """SOCIALHUB_* settings for a server on this database: the tests' JWT secret, cheap
    password hashing, no Kafka; `extra` adds to them or overrides them."""
    return {
        "SOCIALHUB_DATABASE_URL": database_url,
        "SOCIALHUB_AUTH_JWT_SECRET": TEST_SECRET,
        "SOCIALHUB_AUTH_ARGON2_TIME_COST": "1",
        "SOCIALHUB_AUTH_ARGON2_MEMORY_KIB": "1024",
        "SOCIALHUB_AUTH_ARGON2_PARALLELISM": "1",
        "SOCIALHUB_KAFKA_BOOTSTRAP_SERVERS": "",
        **extra,
    }


class Server:
    """`socialhub serve` on a free port; env adds SOCIALHUB_* settings. Its SIGTERM stops
    it at once (`server.drain_seconds` 0) unless env sets a drain (tests/e2e/test_drain.py)."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> Server:
        exe = shutil.which("socialhub", path=str(Path(sys.executable).parent)) or "socialhub"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "SOCIALHUB_SERVER_DATA_DIR": str(self.data_dir),
            "SOCIALHUB_SERVER_DRAIN_SECONDS": "0",
            **self.env,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.data_dir.parent,
                start_new_session=True,
            )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"socialhub serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"socialhub serve not ready in {timeout}s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the graceful path."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def start_pair(root: Path, env: dict[str, str]) -> tuple[Server, Server]:
    """Instances A and B with one configuration (one database, one Redis), started in
    turn; A is killed again if B does not start."""
    a = Server(root / "a", env).start()
    try:
        return a, Server(root / "b", env).start()
    except BaseException:
        a.kill()
        raise
