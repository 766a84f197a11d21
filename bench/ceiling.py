"""The ceilings socialhub is compared with, measured in the same run on the same machine.

- `http`: a bare Starlette app that answers every GET/POST with bytes captured from the
  real server (a feed page, a created post), from memory, under uvicorn with the settings
  of `socialhub serve` (uvloop, httptools, no access log). Whatever socialhub does beyond
  that — authentication, SQL, encoding — is what separates it from this figure.
- `ws`: a bare `websockets` server that relays every text frame to every other socket
  (one-to-one when two are connected, fan-out when many are).

Run as `python -m bench.ceiling http --port P --body-file F` or `... ws --port P`;
`CeilingServer` starts either in a child process and waits until it answers.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.server import free_port

START_TIMEOUT_S = 30.0


def http_app(body: bytes) -> object:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def answer(request: Request) -> Response:
        await request.body()  # read what a real endpoint would read
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST"])])


def serve_http(port: int, body_file: Path) -> None:
    import uvicorn

    uvicorn.run(
        http_app(body_file.read_bytes()),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


async def serve_ws(port: int) -> None:
    import uvloop  # noqa: F401  (the policy is set by the caller)
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: set[ServerConnection] = set()

    async def relay(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            async for message in ws:
                broadcast([c for c in clients if c is not ws], message)
        finally:
            clients.discard(ws)

    async with serve(relay, "127.0.0.1", port, compression=None, max_size=64 * 1024, ping_interval=20.0):
        await asyncio.Future()


class CeilingServer:
    """A ceiling server in a child process on a free port."""

    def __init__(self, kind: str, body: bytes = b"") -> None:
        self.kind = kind
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="socialhub-ceiling-")
        self.body_file = Path(self._tmp.name) / "body"
        self.body_file.write_bytes(body)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "bench.ceiling", self.kind, "--port", str(self.port)]
        cmd += ["--body-file", str(self.body_file)]
        self.proc = subprocess.Popen(cmd)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ceiling server ({self.kind}) exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"ceiling server ({self.kind}) not listening after {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.cleanup()

    def __enter__(self) -> CeilingServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("kind", choices=["http", "ws"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path)
    args = parser.parse_args(argv)
    if args.kind == "http":
        if args.body_file is None:
            parser.error("http needs --body-file")
        serve_http(args.port, args.body_file)
    else:
        import uvloop

        uvloop.run(serve_ws(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
