"""The /ws transport of a real `socialhub serve` (api/ws/session.py: socialhub's own
asyncio protocol on websockets' sans-I/O ServerProtocol, outside ASGI), with real
clients: the handshake and its refusals, fragmented messages and the 64 KiB bound,
messages sent before `authenticated`, the closing handshake, ping/pong and the
keepalive that drops a silent client, replays paced at a slow reader's speed, and a
reader that takes nothing of its replay.

The rest of the socket's rules (close codes of authentication, frame rate, the slow
reader of live frames, 1012 on shutdown) are in test_ws.py, on the same path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.frames import Close, Frame, Opcode

from socialhub.api.ws.session import SEND_BUFFER_BYTES, SLOW_CLIENT_SECONDS
from socialhub.domain.protocol import PING_INTERVAL_SECONDS
from tests.e2e.server import Server
from tests.e2e.test_ws import single_env
from tests.e2e.wsclient import WsClient, connect_ws, signups


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("wst") / "data", env=single_env(database_url, SOCIALHUB_RATELIMIT_ENABLED="false")
    ).start()
    yield srv
    srv.kill()


def upgrade(path: str = "/ws", *, key: str | None = None, extra: str = "") -> bytes:
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade"]
    if key:
        lines.append(f"Sec-WebSocket-Key: {key}")
    lines.append("Sec-WebSocket-Version: 13")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def head_of(sock: socket.socket) -> bytes:
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


class RawSocket:
    """A WebSocket client made of a TCP socket and the library's frame serializer: it
    reads only when told to (or never), and answers nothing by itself."""

    def __init__(self, server: Server, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", server.port))
        self.sock.sendall(upgrade())
        head = head_of(self.sock)
        assert head.startswith(b"HTTP/1.1 101 "), head
        self.buffer = head.partition(b"\r\n\r\n")[2]

    def send_text(self, text: str, fin: bool = True, opcode: Opcode = Opcode.TEXT) -> None:
        self.send_frame(text.encode(), fin, opcode)

    def send_frame(self, data: bytes, fin: bool = True, opcode: Opcode = Opcode.TEXT) -> None:
        self.sock.sendall(Frame(opcode, data, fin=fin).serialize(mask=True))

    def close_code(self) -> int | None:
        """Read frames until the server's close frame: its code (None: no close frame)."""
        try:
            while True:
                opcode, data = self.frame()
                if opcode is Opcode.CLOSE:
                    return Close.parse(data).code
        except (EOFError, ConnectionResetError, TimeoutError):
            return None

    def _fill(self, n: int) -> None:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buffer += chunk

    def frame(self) -> tuple[Opcode, bytes]:
        """The next frame from the server (unmasked, short or 16-bit lengths)."""
        self._fill(2)
        opcode, length = Opcode(self.buffer[0] & 0x0F), self.buffer[1] & 0x7F
        start = 2
        if length == 126:
            self._fill(4)
            length, start = int.from_bytes(self.buffer[2:4], "big"), 4
        elif length == 127:
            self._fill(10)
            length, start = int.from_bytes(self.buffer[2:10], "big"), 10
        self._fill(start + length)
        data, self.buffer = self.buffer[start : start + length], self.buffer[start + length :]
        return opcode, data

    def json(self) -> Any:
        opcode, data = self.frame()
        assert opcode is Opcode.TEXT, (opcode, data)
        return json.loads(data)

    def close(self) -> None:
        self.sock.close()


# -- the handshake --------------------------------------------------------------------------------


def test_handshake_answers(server: Server) -> None:
    # A good upgrade: 101 with the key's accept value, no extension (no per-message deflate).
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(upgrade(key="dGhlIHNhbXBsZSBub25jZQ==", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
        head = head_of(s).lower()
        assert head.startswith(b"http/1.1 101 "), head
        assert b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=" in head
        assert b"sec-websocket-extensions" not in head
    # No key: refused by the library's handshake checks, and the connection closed.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(upgrade(key=""))
        answer = head_of(s)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        while s.recv(4096):
            pass
    # An upgrade to any other path finds no WebSocket route.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(upgrade("/feed"))
        assert head_of(s).startswith(b"HTTP/1.1 403 ")
    # A query string does not change the path; a plain GET /ws is no route.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(upgrade("/ws?v=1"))
        assert head_of(s).startswith(b"HTTP/1.1 101 ")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert head_of(s).startswith(b"HTTP/1.1 404 ")


# -- messages -------------------------------------------------------------------------------------


async def test_frames_sent_before_authenticated_are_answered_in_order(server: Server) -> None:
    (a,) = await signups(server, "a")
    sock = await WsClient.connect(server)
    # All at once: the server handles them one after the other, authenticate first.
    await sock.send({"type": "authenticate", "token": a.token})
    for i in range(20):
        await sock.send({"type": "ping", "ref": f"r{i}"})
    await sock.wait_frames(21)
    assert sock.frames[0]["type"] == "authenticated"
    assert [f.get("ref") for f in sock.frames[1:]] == [f"r{i}" for i in range(20)]
    await sock.close()


async def test_fragmented_messages_and_the_64_kib_bound(server: Server) -> None:
    (a,) = await signups(server, "a")
    sock = await a.socket()
    # A message in fragments is one frame to the server.
    await sock.ws.send(['{"type": ', '"ping", ', '"ref": "frag"}'])
    assert await sock.expect("pong") == {"type": "pong", "ref": "frag"}
    # Binary messages are read as text frames are.
    await sock.ws.send(b'{"type": "ping", "ref": "bin"}')
    await sock.expect("pong", ref="bin")
    # Fragments each under 64 KiB, together over it: closed with 1009.
    await sock.ws.send(["x" * 40_000, "y" * 40_000])
    assert await sock.wait_closed() == 1009


async def test_a_text_frame_that_is_not_utf8_closes_1007(server: Server) -> None:
    (a,) = await signups(server, "a")

    def run(fragmented: bool) -> tuple[Any, int | None]:
        raw = RawSocket(server)
        try:
            raw.send_text(json.dumps({"type": "authenticate", "token": a.token}))
            authenticated = raw.json()
            bad = b'{"type": "ping", "ref": "\xff"}'
            if fragmented:  # the bad byte alone in the last fragment
                raw.send_frame(bad[:-4], fin=False)
                raw.send_frame(bad[-4:], opcode=Opcode.CONT)
            else:
                raw.send_frame(bad)
            return authenticated, raw.close_code()
        finally:
            raw.close()

    for fragmented in (False, True):
        authenticated, code = await asyncio.to_thread(run, fragmented)
        assert authenticated["type"] == "authenticated"
        assert code == 1007, (fragmented, code)
    # The same bytes in a binary frame are an ordinary bad frame: answered, socket open.
    sock = await a.socket()
    await sock.send(b'{"type": "ping", "ref": "\xff"}')
    assert (await sock.expect("error"))["code"] == "bad_request"
    await sock.ping()
    await sock.close()


async def test_closing_handshake_from_the_client(server: Server) -> None:
    (a,) = await signups(server, "a")
    sock = await a.socket()
    await sock.ws.close(1000, "bye")
    await sock.reader
    # The server answered the close frame with its own (else the client would report 1006).
    assert sock.ws.close_code == 1000
    assert sock.ws.protocol.close_rcvd is not None and sock.ws.protocol.close_rcvd.code == 1000
    # And the server holds nothing of it: a new socket of the same user is served.
    again = await a.socket()
    await again.ping()
    await again.close()


# -- keepalive --------------------------------------------------------------------------------------


async def test_ping_pong_and_a_silent_client_is_dropped(server: Server) -> None:
    (a,) = await signups(server, "a")
    # A client's ping is answered with a pong (by the library).
    sock = await a.socket()
    latency = await (await sock.ws.ping(b"hello"))
    assert latency >= 0

    # A silent client: authenticated, then reads nothing and answers nothing.
    silent = await asyncio.to_thread(RawSocket, server)
    silent.send_text(json.dumps({"type": "authenticate", "token": a.token}))
    assert (await asyncio.to_thread(silent.json))["type"] == "authenticated"

    started = time.monotonic()

    def until_closed() -> tuple[list[Opcode], float]:
        """Read the silent client's frames (without answering them) until the server ends it."""
        seen: list[Opcode] = []
        silent.sock.settimeout(3 * PING_INTERVAL_SECONDS)
        try:
            while True:
                opcode, data = silent.frame()
                seen.append(opcode)
                if opcode is Opcode.CLOSE:
                    assert Close.parse(data).code == 1011, data
        except (EOFError, ConnectionResetError):
            pass
        return seen, time.monotonic() - started

    seen, after = await asyncio.to_thread(until_closed)
    assert Opcode.PING in seen, seen
    # The first ping unanswered, the next round closes it: within two intervals.
    assert after <= 2 * PING_INTERVAL_SECONDS + 5, after
    # A client that answers (websockets answers pings by itself) stays.
    assert sock.close_code is None
    await sock.ping()
    silent.close()
    await sock.close()


# -- slow readers -------------------------------------------------------------------------------


async def test_a_replay_goes_at_the_readers_speed(server: Server) -> None:
    a, b = await signups(server, "a", "b")
    room = await a.room(b)
    sender = await a.socket()
    # Far more than the send buffer and the kernel's socket buffers hold: ~24 MB of
    # history, so that the server must wait for the reader.
    body = "\U0001f600" * 4000  # ~16 KB a frame
    n = 1500
    assert n * 16_000 > 40 * SEND_BUFFER_BYTES
    for start in range(0, n, 50):
        for i in range(start, min(n, start + 50)):
            await sender.send({"type": "send_message", "room_id": room, "body": body, "client_msg_id": f"m{i}"})
        await sender.wait_count("ack", min(n, start + 50), timeout=30)

    # A reader with a small receive buffer that reads slowly but steadily gets all of it.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    raw.connect(("127.0.0.1", server.port))
    slow = await connect_ws(server, sock=raw, max_queue=4, compression=None)
    await slow.send(json.dumps({"type": "authenticate", "token": b.token}))
    assert json.loads(await slow.recv())["type"] == "authenticated"
    await slow.send(json.dumps({"type": "join_room", "room_id": room, "since_seq": 0}))
    assert json.loads(await slow.recv())["type"] == "joined"
    seqs = []
    async with asyncio.timeout(120):
        while len(seqs) < n:
            frame = json.loads(await slow.recv())
            seqs.append(frame["message"]["seq"])
            if len(seqs) % 25 == 0:
                await asyncio.sleep(0.05)  # ~2 MB/s at most
    assert seqs == list(range(1, n + 1))
    assert slow.close_code is None
    await slow.close()

    # A reader that takes nothing of its replay is closed with 1008 once it has not
    # read for SLOW_CLIENT_SECONDS.
    stuck = await asyncio.to_thread(RawSocket, server, 16 * 1024)
    stuck.send_text(json.dumps({"type": "authenticate", "token": b.token}))
    assert (await asyncio.to_thread(stuck.json))["type"] == "authenticated"
    stuck.send_text(json.dumps({"type": "join_room", "room_id": room, "since_seq": 0}))
    await asyncio.sleep(SLOW_CLIENT_SECONDS + 3)

    assert await asyncio.to_thread(stuck.close_code) == 1008
    stuck.close()
    # The others were not stalled.
    await sender.ping()
    await sender.close()
