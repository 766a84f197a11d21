"""One /ws socket: socialhub's own asyncio protocol on the `websockets` library's sans-I/O
ServerProtocol (the library parses, unmasks and checks frames and answers the handshake;
this module moves bytes and keeps the socket's rules).

The HTTP protocol hands the transport over once it has read an upgrade request for /ws
(api/http/connection.py), so no ASGI layer stands between a frame and its handler, and
an idle socket holds no task: only this object, the library's protocol and the transport.

Sending never waits: a frame is written straight into the transport. The transport's
write buffer is the bound: a client whose unsent bytes would pass SEND_BUFFER_BYTES
does not read, and it is disconnected (close CLOSE_POLICY, 1008) rather than buffered
without bound; the frames it missed are in PostgreSQL and it resumes with `since_seq`.
A replay (`send_paced`) may be longer than the bound: it waits while the buffer is over
its high-water mark (the transport's pause_writing / resume_writing), so it goes at the
client's reading speed; a client that takes nothing for SLOW_CLIENT_SECONDS meanwhile
does not read.

Incoming messages are handled in order: a task exists only while the socket has
messages being handled, and reading pauses while INBOX_FRAMES wait behind it.

A server-to-client frame is the same bytes for every recipient: `framed` encodes it once
for a fan-out that hands the same payload object to each socket in turn.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol, cast

from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from socialhub.domain.protocol import (
    CLOSE_INTERNAL,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    MAX_FRAME_BYTES,
)

logger = logging.getLogger(__name__)
_library_logger = logging.getLogger("websockets.server")

# Unsent bytes one socket may hold in its transport. A chat burst of a few hundred ~1 KB
# frames fits; more means the client is not reading. (The kernel's socket buffer holds
# more before this fills.)
SEND_BUFFER_BYTES = 512 * 1024
# A replay waits while the unsent bytes are over PACE_HIGH, until they are under PACE_LOW
# (the transport's write-buffer limits): live frames keep the rest of the bound.
PACE_HIGH = 64 * 1024
PACE_LOW = 16 * 1024
# A client that takes no frame of its replay for this long does not read.
SLOW_CLIENT_SECONDS = 10.0
# After the server's close frame, how long the client has to answer it before the TCP
# connection is dropped. Long, because a slow reader gets its close frame after all the
# bytes it has not read yet (at most SEND_BUFFER_BYTES).
CLOSE_TIMEOUT_SECONDS = 60.0
# Messages waiting behind the one being handled before the socket stops reading (TCP
# pushes back on the client); reading resumes when the inbox is empty.
INBOX_FRAMES = 64


class Endpoint(Protocol):
    """What a socket asks of the endpoint (api/ws/endpoint.py)."""

    def answer(self, handshake: ServerProtocol, request: Request) -> Response:
        """The handshake's response: accepted (101) or refused."""
        ...

    def opened(self, session: Session) -> None:
        """The handshake was accepted."""
        ...

    def receive(self, session: Session, raw: bytes) -> Coroutine[Any, Any, None] | None:
        """Handle one message: at once (None), or the work to await before the next one."""
        ...

    async def closed(self, session: Session) -> None:
        """The connection is gone and no message is being handled."""
        ...


_last_framed: tuple[bytes, bytes] = (b"", b"")


def framed(payload: bytes) -> bytes:
    """The text frame carrying `payload`, as written to the wire. The last one is kept: a
    fan-out hands the same payload object to every socket, and frames it once."""
    global _last_framed
    last = _last_framed
    if last[0] is payload:
        return last[1]
    data = Frame(Opcode.TEXT, payload).serialize(mask=False)
    _last_framed = (payload, data)
    return data


# One ping for every socket (the keepalive needs no payload: any frame back answers it).
PING = Frame(Opcode.PING, b"").serialize(mask=False)

# Tasks that clean up after a socket whose connection went while nothing was handled.
_cleanups: set[asyncio.Task[None]] = set()


class Session(asyncio.Protocol):
    """A socket; once authenticated, of `user_id` in session `session_id` (one per device)."""

    __slots__ = (
        "_drain",
        "_endpoint",
        "_inbox",
        "_lost",
        "_parts",
        "_paused",
        "_reading_paused",
        "_task",
        "_text",
        "_timer",
        "_ws",
        "answered",
        "close_code",
        "closing",
        "in_hub",
        "session_id",
        "socket_id",
        "tat",
        "transport",
        "user_id",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        # No extensions (per-message deflate gives every socket its own zlib state) and
        # SPEC's 64 KiB message bound (over it: close 1009, by the library). This one
        # answers the handshake; once open, a fresh one reads the frames (see _on_request).
        self._ws = ServerProtocol(max_size=MAX_FRAME_BYTES, logger=_library_logger)
        self.transport: asyncio.Transport | None = None
        self.user_id = 0
        self.session_id = 0
        # Tells this socket from the other sockets of the same session (two tabs, one token).
        self.socket_id = 0
        self.in_hub = False  # added to the hub: it must be removed when the socket goes
        self.tat = 0.0  # the frame budget's theoretical arrival time (GCRA)
        self.answered = True  # something came from the client since the last ping
        self.closing = False
        self.close_code = CLOSE_NORMAL
        self._inbox: deque[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._parts: list[bytes] | None = None  # a fragmented message so far
        self._text = True  # whether it is a text message
        self._paused = False
        self._reading_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lost = False

    def authenticated(self, user_id: int, session_id: int) -> None:
        self.user_id = user_id
        self.session_id = session_id
        self.socket_id = secrets.randbits(62) + 1

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not registered as an asyncio.Transport; it is one.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=PACE_HIGH, low=PACE_LOW)

    def data_received(self, data: bytes) -> None:
        self.answered = True
        ws = self._ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
            elif isinstance(event, Request):
                self._on_request(event)
        self._flush()

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = self._lost = True
        self._inbox = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()
        if self._task is None and self.in_hub:
            task = asyncio.get_running_loop().create_task(self._endpoint.closed(self))
            _cleanups.add(task)
            task.add_done_callback(_cleanups.discard)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    # -- incoming ------------------------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        response = self._endpoint.answer(self._ws, request)
        self._ws.send_response(response)
        if response.status_code == 101:
            self._flush()
            # The handshake's protocol keeps the request (its headers: ~1.5 KiB) for as
            # long as it parses; the socket's frames go to one that starts OPEN. (The HTTP
            # protocol hands over the head alone, and a client sends no frame before the
            # 101: RFC 6455, 4.1.)
            self._ws = ServerProtocol(max_size=MAX_FRAME_BYTES, logger=_library_logger, state=State.OPEN)
            self._endpoint.opened(self)

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            data = frame.data if isinstance(frame.data, bytes) else bytes(frame.data)
            if frame.fin:
                self._on_message(data, opcode is Opcode.TEXT)
            else:
                self._parts = [data]
                self._text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            parts = self._parts
            if parts is not None:
                parts.append(bytes(frame.data))
                if frame.fin:
                    self._parts = None
                    self._on_message(b"".join(parts), self._text)
        elif opcode is Opcode.CLOSE:
            # The library answers it; nothing more is sent or handled.
            self.closing = True
            self._inbox = None

    def _on_message(self, raw: bytes, text: bool) -> None:
        if self.closing:
            return
        if text and not raw.isascii():
            try:
                raw.decode()
            except UnicodeDecodeError:  # RFC 6455 8.1: a text message must be UTF-8
                self.close(CLOSE_INVALID_DATA, "text frame is not UTF-8")
                return
        if self._task is not None:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            inbox.append(raw)
            if len(inbox) >= INBOX_FRAMES and not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()
            return
        if self._timer is not None:  # the first message: the authentication deadline is met
            self._timer.cancel()
            self._timer = None
        work = self._endpoint.receive(self, raw)
        if work is not None:
            self._task = asyncio.get_running_loop().create_task(self._handle(work))

    async def _handle(self, work: Coroutine[Any, Any, None]) -> None:
        """Await `work`, then handle the messages that came meanwhile, in order."""
        try:
            while True:
                try:
                    await work
                except Exception:  # the endpoint answers errors; this is a bug, not a frame's fault
                    logger.exception("a socket of user %s failed", self.user_id)
                    self.close(CLOSE_INTERNAL, "internal error")
                follow: Coroutine[Any, Any, None] | None = None
                while follow is None and self._inbox and not self.closing:
                    follow = self._endpoint.receive(self, self._inbox.popleft())
                if follow is None:
                    break
                work = follow
        finally:
            self._task = None
            if self._reading_paused and not self._lost:
                self._reading_paused = False
                if self.transport is not None:
                    self.transport.resume_reading()
            if self._lost and self.in_hub:
                await self._endpoint.closed(self)

    # -- outgoing ------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send a frame (JSON bytes); never waits."""
        if not self.closing:
            self.send_framed(framed(data))

    def send_framed(self, data: bytes) -> None:
        """Send a frame already framed (`framed`); never waits."""
        transport = self.transport
        if self.closing or transport is None:
            return
        if self._paused and transport.get_write_buffer_size() + len(data) > SEND_BUFFER_BYTES:
            logger.info("closing a socket of user %s: it does not read", self.user_id)
            self.close(CLOSE_POLICY, "send buffer full: the client does not read")
            return
        transport.write(data)

    async def send_paced(self, data: bytes) -> None:
        """Send a frame of a replay, first waiting while the client has not read the last ones."""
        while self._paused and not self.closing:
            drain = self._drain
            if drain is None or drain.done():
                drain = self._drain = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(drain, SLOW_CLIENT_SECONDS)
            except TimeoutError:
                logger.info("closing a socket of user %s: it does not read its replay", self.user_id)
                self.close(CLOSE_POLICY, "replay not read: the client does not read")
        self.send(data)

    def ping(self) -> None:
        """The keepalive: a client that did not answer the last ping (nor sent anything
        since) is gone; otherwise ping it."""
        if self.closing or self.transport is None:
            return
        if not self.answered:
            logger.info("closing a socket of user %s: no answer to ping", self.user_id)
            self.close(CLOSE_INTERNAL, "keepalive ping timeout", timeout=1.0)
            return
        self.answered = False
        self.transport.write(PING)

    def close(self, code: int, reason: str = "", timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Close from anywhere without waiting: the close frame goes after what is unsent,
        and the connection is dropped if the client has not answered within `timeout`."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self._inbox = None
        if self._timer is not None:  # the authentication deadline, if it still runs
            self._timer.cancel()
            self._timer = None
        self._wake()
        if self._ws.state is State.OPEN:
            self._ws.send_close(code, reason)
        self._flush(timeout)

    def _wake(self) -> None:
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    def _flush(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Write what the library has to send; at its end of stream, close the transport."""
        transport = self.transport
        if transport is None:
            return
        ws = self._ws
        for data in ws.data_to_send():
            if data:
                transport.write(data)
            else:
                transport.close()
        if ws.state is not State.OPEN and ws.state is not State.CONNECTING:
            self.closing = True
        if ws.close_expected() and self._timer is None and not self._lost:
            self._timer = asyncio.get_running_loop().call_later(timeout, transport.abort)

    def deadline(self, seconds: float, code: int, reason: str) -> None:
        """Close with `code` unless a message comes within `seconds`."""
        self._timer = asyncio.get_running_loop().call_later(seconds, self.close, code, reason)
