"""One HTTP/1.1 connection: uvicorn's httptools protocol, with a bound on the request head.

uvicorn bounds what its h11 protocol buffers (h11_max_incomplete_event_size) but not
what httptools does: a header line is gathered in memory until it ends, so a client
streaming one endless header made the server buffer (and re-copy) every byte while other
requests waited. SPEC (Conventions): 431 `too_large` when the request headers or the URL
exceed 32 KiB. The bound holds before the bytes are kept:

- while a head is still arriving, its bytes are counted as they are fed to the parser,
  and past the limit the connection is answered 431 and closed, the rest unread;
- a head that arrives whole within one read is measured when the parser finishes it
  (the URL plus every header line), before the request reaches the app.

WebSocket upgrades are HTTP requests until their head ends, so the same bound holds.
An upgrade request for /ws is then handed, transport and all, to socialhub's own socket
protocol (`serving`: api/ws/endpoint.py), not to uvicorn's WebSocket protocol and the
ASGI app: no ASGI layer per message. Other upgrades go the ASGI way (and find no route).
Wired in by `socialhub serve` (uvicorn.Config(http=HeadLimitedProtocol.serving(...))).
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from socialhub.api.http.codec import JSON_MEDIA_TYPE

# SPEC: request headers or URL over 32 KiB are 431. (nginx's default is 8 KiB a line and
# 32 KiB in all, large_client_header_buffers 4 8k.)
MAX_HEAD_BYTES = 32 * 1024
# Bytes a header line costs besides its name and value: ": " and CRLF.
_LINE_OVERHEAD = 4
_BODY = b'{"error":{"code":"too_large","message":"the request headers or URL are over 32 KiB"}}'


class Sockets(Protocol):
    """Where /ws upgrades go (api/ws/endpoint.py's SocketEndpoint)."""

    def take(self, transport: asyncio.Transport, head: bytes) -> None: ...


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


class HeadLimitedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that answers 431 and closes once a request head exceeds MAX_HEAD_BYTES."""

    # Per connection: bytes fed while the current head is incomplete; whether one is; the
    # count of messages begun (to tell a read that started a new head); refused already.
    _head_bytes = 0
    _in_head = True
    _messages = 0
    _refused = False
    _read = 0  # the size of the read being parsed
    _reads = 0  # reads so far, and the one in which the current head began
    _head_read = 0
    # Where an upgrade request for /ws goes (None: uvicorn's WebSocket protocol and the app).
    sockets: ClassVar[Sockets | None] = None
    sockets_path: ClassVar[bytes] = b"/ws"

    @classmethod
    def serving(cls, sockets: Sockets, path: bytes = b"/ws") -> type[HeadLimitedProtocol]:
        """This protocol, with upgrade requests for `path` handed to `sockets`."""
        return type(cls.__name__, (cls,), {"sockets": sockets, "sockets_path": path})

    def handle_websocket_upgrade(self) -> None:
        sockets = self.sockets
        if sockets is None or self.url.partition(b"?")[0] != self.sockets_path:
            super().handle_websocket_upgrade()
            return
        # The connection is the socket's from now on; uvicorn no longer counts it (as its
        # own handle_websocket_upgrade does). The head is given back as it was read.
        self.connections.discard(self)
        head = [self.scope["method"].encode(), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        sockets.take(self.transport, b"".join(head))

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        messages = self._messages
        self._read = len(data)
        self._reads += 1
        super().data_received(data)
        if self._refused or not self._in_head or self.transport.is_closing():
            return
        # A read in which a new message began is not counted (part of it was the previous
        # request): a head may pass the limit by at most one read before it is refused.
        if self._messages == messages:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._messages += 1
        self._in_head = True
        self._head_bytes = 0
        self._head_read = self._reads

    def on_headers_complete(self) -> None:
        self._in_head = False
        # A head that began and ended in one read within the limit cannot pass it: the
        # common request, whole in a read of a few hundred bytes, costs nothing here. A
        # head that spanned reads, or came in one big read, is measured exactly.
        whole_in_small_read = self._head_read == self._reads and self._read <= MAX_HEAD_BYTES
        if not whole_in_small_read and self._head_size() > MAX_HEAD_BYTES:
            self._refuse()
            # The parser wraps this in HttpParserCallbackError; data_received's 400 for it
            # is suppressed below, and no app sees the request.
            raise _HeadTooLarge
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + _LINE_OVERHEAD for name, value in self.headers)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    def _refuse(self) -> None:
        self._refused = True
        head = [
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
            b"content-type: " + JSON_MEDIA_TYPE.encode() + b"\r\n",
            b"content-length: " + str(len(_BODY)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + _BODY)
        self.transport.close()
