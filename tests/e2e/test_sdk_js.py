"""The JavaScript SDK (static/socialhub.js) in Node against a real `socialhub serve`.

The Node tests (tests/js/sdk.test.mjs, run by `node --test`) drive the SDK as an app
would; this test gives them a server on its own database, with a short access-token
lifetime so that the refresh is seen, and a control endpoint through which they restart
the server (SIGTERM: sockets closed with 1012) or kill it (SIGKILL: no close frame at all)
in the middle of a chat. Node >= 20 is needed (its global WebSocket behind
--experimental-websocket); no npm package is.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import migrated_database
from tests.e2e.server import Server, server_env

REPO = Path(__file__).resolve().parents[2]
NODE_TESTS = REPO / "tests" / "js" / "sdk.test.mjs"
ACCESS_TTL = 8
"""Seconds an access token lives here: the SDK refreshes it after about 6 (a quarter before)."""
NODE_TEST_TIMEOUT_MS = 240_000
"""The bound of the Node run as a whole (each test has its own, in the file)."""
HTTP_LIMITS_OFF = {
    f"SOCIALHUB_RATELIMIT_{rule}": "off"
    for rule in ("LOGIN", "LOGIN_ACCOUNT", "SIGNUP", "REFRESH", "FORGOT_PASSWORD", "RESET_PASSWORD", "WRITE")
}
"""The HTTP limits are off (the tests sign up many users from one address); the socket's
frame limit stays at its default, which the SDK paces itself under."""
PORTS = range(19500, 20000)
"""The ports these tests take (each helper of the project has its own range)."""


def port_in_range() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


def node_major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.strip().lstrip("v").split(".")[0])


class Control:
    """POST /restart (SIGTERM, then start again on the same port) and POST /kill (SIGKILL,
    then start again), answered once the server is ready again."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                try:
                    with outer.lock:
                        if self.path == "/restart":
                            outer.server.stop()
                        elif self.path == "/kill":
                            outer.server.kill()
                        else:
                            self.send_error(404)
                            return
                        outer.server.start()
                    self.send_response(204)
                    self.end_headers()
                except Exception as exc:
                    self.send_error(500, str(exc)[:200])

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", port_in_range()), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Control:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def node() -> Iterator[str]:
    found = shutil.which("node")
    if found is None or node_major(found) < 20:
        pytest.skip("Node >= 20 is not installed")
    yield found


@pytest.mark.timeout(360)
async def test_the_sdk_in_node(node: str, tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    async with migrated_database("socialhub_sdk") as url:
        env = server_env(url, SOCIALHUB_AUTH_ACCESS_TTL=str(ACCESS_TTL), **HTTP_LIMITS_OFF)
        server = Server(tmp_path / "server", env, port=port_in_range())
        await asyncio.to_thread(server.start)
        try:
            with Control(server) as control, log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    node,
                    "--experimental-websocket",
                    "--no-warnings",
                    "--test",
                    "--test-reporter=spec",
                    f"--test-timeout={NODE_TEST_TIMEOUT_MS}",
                    str(NODE_TESTS),
                    env={
                        **os.environ,
                        "SOCIALHUB_URL": server.url,
                        "SOCIALHUB_CONTROL_URL": control.url,
                        "SOCIALHUB_ACCESS_TTL": str(ACCESS_TTL),
                        "SOCIALHUB_MAIL_DIR": str(server.data_dir / "mail"),
                    },
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=REPO,
                )
                try:
                    await asyncio.wait_for(proc.wait(), timeout=300)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    pytest.fail("node --test did not finish in 300 s:\n" + log.read_text(errors="replace"))
        finally:
            await asyncio.to_thread(server.kill)
    report = log.read_text(errors="replace")
    print(report)
    assert proc.returncode == 0, report
    assert "ℹ fail 0" in report, report
