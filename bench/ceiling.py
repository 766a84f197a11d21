"""The ceilings socialhub is compared with, measured in the same run on the same machine.

- `http`: a bare Starlette app that answers every GET/POST with bytes captured from the
  real server (a feed page, a created post), from memory, under uvicorn with the settings
  of `socialhub serve` (uvloop, httptools, no access log). Whatever socialhub does beyond
  that — authentication, SQL, encoding — is what separates it from this figure.
- `feed`: a bare Starlette app with the four routes `bench.post_to_feed` uses, whose
  "feed" is one in-memory list: `POST /posts/` appends a post (the shape of socialhub's
  post object) and answers it, `GET /feed` answers the newest 20, signup and follow
  only answer. A post is readable the moment its POST is handled: no database, no
  outbox, no consumer, no fan-out. What `post_to_feed --ceiling` measures against it is
  the floor of the method itself (POST round trip, the poll interval, one GET).
- `ws`: a bare `websockets` server that relays every text frame to every other socket
  (one-to-one when two are connected, fan-out when many are).
- `ws-idle`: a bare `websockets` server that holds sockets the way socialhub's `/ws`
  does for an idle client: it answers the first frame (`authenticate`) with an
  `authenticated` frame, keeps the socket in a registry, answers `ping` with `pong`, and
  otherwise waits. Same WebSocket settings as `socialhub serve` (no permessage-deflate,
  64 KiB frames, a ping every 20 s). Its RSS per socket is the floor for `ws-idle`.

Run as `python -m bench.ceiling http --port P --body-file F`, or `... feed|ws|ws-idle
--port P`;
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


# GET /feed's page size in socialhub (domain/pages.py DEFAULT_LIMIT).
FEED_PAGE = 20


def feed_app() -> object:
    import itertools
    from datetime import UTC, datetime

    import msgspec
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    encode = msgspec.json.Encoder().encode
    ids = itertools.count(7_000_000_000_000_000_000)  # snowflake-sized, as socialhub's
    posts: list[dict[str, object]] = []  # the feed: oldest first
    author = {"id": str(next(ids)), "username": "author", "name": "The Author", "avatar_url": None}

    def created(body: dict[str, object]) -> Response:
        return Response(encode(body), status_code=201, media_type="application/json")

    async def signup(request: Request) -> Response:
        form = msgspec.json.decode(await request.body())
        user = {"id": str(next(ids)), "username": form["username"], "name": form["name"], "avatar_url": None}
        return created({"user": user, "token": "bare"})

    async def follow(request: Request) -> Response:
        await request.body()
        return Response(encode({"following": True}), media_type="application/json")

    async def post(request: Request) -> Response:
        form = msgspec.json.decode(await request.body())
        item = {
            "id": str(next(ids)),
            "author": author,
            "content": form["content"],
            "media": [],
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "likes_count": 0,
            "comments_count": 0,
            "liked": False,
        }
        posts.append(item)
        return created(item)

    async def feed(request: Request) -> Response:
        items = posts[: -FEED_PAGE - 1 : -1]
        page = {"items": items, "next": items[-1]["id"] if len(items) == FEED_PAGE else None}
        return Response(encode(page), media_type="application/json")

    return Starlette(
        routes=[
            Route("/auth/signup", signup, methods=["POST"]),
            Route("/users/follow/{id}", follow, methods=["POST"]),
            Route("/posts/", post, methods=["POST"]),
            Route("/feed", feed, methods=["GET"]),
        ]
    )


def serve_http(port: int, body_file: Path | None) -> None:
    """`http` (the bytes of `body_file` for every request) or, without a file, `feed`."""
    import uvicorn

    from socialhub.api.http.connection import HeadLimitedProtocol

    uvicorn.run(
        http_app(body_file.read_bytes()) if body_file is not None else feed_app(),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=HeadLimitedProtocol,
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


# The WebSocket settings of `socialhub serve` (socialhub/cli.py), so that the socket
# ceilings keep what socialhub's sockets keep, no more and no less.
WS_MAX_SIZE = 64 * 1024
WS_PING_INTERVAL_S = 20.0
WS_PING_TIMEOUT_S = 20.0


async def serve_ws_idle(port: int) -> None:
    import msgspec
    import uvloop  # noqa: F401  (the policy is set by the caller)
    from websockets.asyncio.server import ServerConnection, serve

    class Envelope(msgspec.Struct):
        type: str = ""

    decode = msgspec.json.Decoder(Envelope).decode
    encode = msgspec.json.Encoder().encode
    pong = encode({"type": "pong"}).decode()
    # What any server holds per authenticated socket: who it is, to reach it again.
    registry: dict[ServerConnection, int] = {}
    next_id = iter(range(1, 2**62))

    async def session(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                kind = decode(message).type
                if kind == "authenticate" and ws not in registry:
                    user_id = registry[ws] = next(next_id)
                    reply = {"type": "authenticated", "user_id": str(user_id), "session_id": str(user_id)}
                    await ws.send(encode(reply).decode())
                elif kind == "ping":
                    await ws.send(pong)
        finally:
            registry.pop(ws, None)

    async with serve(
        session,
        "127.0.0.1",
        port,
        compression=None,
        max_size=WS_MAX_SIZE,
        ping_interval=WS_PING_INTERVAL_S,
        ping_timeout=WS_PING_TIMEOUT_S,
        backlog=2048,  # uvicorn's default, which socialhub serve keeps
    ):
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
    parser.add_argument("kind", choices=["http", "feed", "ws", "ws-idle"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path)
    args = parser.parse_args(argv)
    if args.kind == "http":
        if args.body_file is None:
            parser.error("http needs --body-file")
        serve_http(args.port, args.body_file)
    elif args.kind == "feed":
        serve_http(args.port, None)
    else:
        import uvloop

        uvloop.run(serve_ws(args.port) if args.kind == "ws" else serve_ws_idle(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
