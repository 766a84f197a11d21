"""A minimal HTTP/1.1 keep-alive client over an asyncio protocol, for load generation.

httpx spends ~0.45 ms of CPU per request (bench/README.md), more than the server; on a
2-core machine shared by server and clients that cost is measured as the server's. This
client writes a pre-encoded request and parses the answer with httptools (what uvicorn
uses), a few tens of microseconds per request. One connection, one request at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import cast

import httptools


class ConnectionLost(Exception):
    """The server closed the connection (or it broke) before the answer was complete."""


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionLost(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ConnectionLost(str(exc) if exc else "closed by the server"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))
        self.body = []


class RawHttpConnection:
    """One keep-alive connection to `host:port`; reconnects when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._proto: _Protocol | None = None

    async def request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, bytes]:
        """Send one request; the status and the body of the answer."""
        return await self.send(encode_request(self.host, self.port, method, path, headers, body))

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send a request encoded by `encode_request`."""
        proto = self._proto
        if proto is None or proto.transport is None or not proto.keep_alive:
            await self.close()
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_connection(_Protocol, self.host, self.port)
            self._proto = proto
        if proto.transport is None:
            raise ConnectionLost("closed by the server right after connecting")
        proto.waiter = asyncio.get_running_loop().create_future()
        proto.transport.write(raw)
        return await proto.waiter

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


def encode_request(
    host: str, port: int, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
) -> bytes:
    """The bytes of one HTTP/1.1 request (encoded once, sent many times)."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
