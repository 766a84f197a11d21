"""The client side of RFC 6455, small and cheap: one socialhub socket per `WsClient`.

A frame from the server costs the client microseconds and is time-stamped in
`data_received`, before any parsing (`time.monotonic()`, one clock for every process of
the machine), so that a send stamped in one process and its receipt in another compare.
`deflate` offers `permessage-deflate` as browsers and the `websockets` client do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
import zlib
from collections.abc import Callable
from typing import Any, cast

import msgspec


class SocketClosed(Exception):
    """The socket closed (or the server answered `error`) while a setup step waited."""


class Frame(msgspec.Struct):
    """Just the fields a benchmark client reads from any server frame."""

    type: str
    ref: Any = None
    message: Any = None
    code: Any = None


decode_frame = msgspec.json.Decoder(Frame).decode
_encode = msgspec.json.Encoder().encode
FrameHandler = Callable[["WsClient", bytes, float], None]


class WsClient(asyncio.Protocol):
    """One client socket. Frames from the server go to `handler(client, payload, t)`,
    `t` being the monotonic time their bytes arrived."""

    def __init__(self, host: str, port: int, deflate: bool) -> None:
        self.host, self.port, self.deflate = host, port, deflate
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.handler: FrameHandler = lambda _c, payload, _t: self.inbox.put_nowait(payload)
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self._buf = bytearray()
        self._key = base64.b64encode(os.urandom(16))
        self._inflate: Any = None
        self._reset_inflate = False
        self._parts: list[bytes] = []
        self._compressed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport = self.transport
        ext = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if self.deflate else b""
        transport.write(
            b"GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (self.host.encode(), self.port, self._key, ext)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006
        if not self.upgraded.done():
            self.upgraded.set_exception(SocketClosed("connection lost during the handshake"))
        self.inbox.put_nowait(b"")  # wakes a setup step waiting for a frame

    def data_received(self, data: bytes) -> None:
        t = time.monotonic()
        self._buf += data
        if not self.upgraded.done():
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 4]
            if not head.startswith("HTTP/1.1 101"):
                self.upgraded.set_exception(SocketClosed(head.split("\r\n", 1)[0]))
                return
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                    self._inflate = zlib.decompressobj(wbits=-15)
                    self._reset_inflate = "server_no_context_takeover" in value
            self.upgraded.set_result(None)
        self._frames(t)

    def _frames(self, t: float) -> None:
        buf = self._buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            length, offset = b1 & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, offset = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, offset = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < offset + length:
                return
            payload = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            opcode = b0 & 0x0F
            if opcode in (1, 2, 0):
                if opcode:
                    self._compressed = bool(b0 & 0x40)
                self._parts.append(payload)
                if b0 & 0x80:
                    message = b"".join(self._parts)
                    self._parts.clear()
                    if self._compressed and self._inflate is not None:
                        message = self._inflate.decompress(message + b"\x00\x00\xff\xff")
                        if self._reset_inflate:
                            self._inflate = zlib.decompressobj(wbits=-15)
                    self.handler(self, message, t)
            elif opcode == 9:
                self._write(10, payload)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if self.transport is not None:
                    self._write(8, payload[:2])
                    self.transport.close()

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        # XOR of the whole payload with the repeated mask, as one big-integer operation.
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        self.transport.write(head + mask + masked)

    def send(self, frame: dict[str, Any]) -> None:
        self._write(1, _encode(frame))

    async def expect(self, frame_type: str) -> Frame:
        """The next frame of that type (during setup); an `error` or a close raises."""
        while True:
            payload = await self.inbox.get()
            if not payload:
                raise SocketClosed(f"closed with {self.close_code} while waiting for {frame_type}")
            frame = decode_frame(payload)
            if frame.type == frame_type:
                return frame
            if frame.type == "error":
                raise SocketClosed(f"error {frame.code} while waiting for {frame_type}")

    async def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._write(8, (1000).to_bytes(2, "big"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while self.close_code is None:
                    await asyncio.sleep(0.05)
        self.transport.close()


async def open_socket(host: str, port: int, token: str, deflate: bool, room_id: str | None) -> WsClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: WsClient(host, port, deflate), host, port)
    await client.upgraded
    client.send({"type": "authenticate", "token": token})
    await client.expect("authenticated")
    if room_id is not None:
        client.send({"type": "join_room", "room_id": room_id})
        await client.expect("joined")
    return client
