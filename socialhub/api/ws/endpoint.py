"""GET /ws: the handshake, `authenticate`, then every frame until the socket closes.

The HTTP protocol hands an upgrade request for /ws to `take` (api/http/connection.py):
each socket is a Session (api/ws/session.py), an asyncio protocol of its own on the
`websockets` library's sans-I/O ServerProtocol; no ASGI layer is involved.

The first frame must be `authenticate` within AUTH_TIMEOUT_SECONDS, else close 4401. Every
later frame is checked against the socket's budget (30/s, bursts of 60: an `error
rate_limited` and the frame is dropped), decoded and validated (an `error` with the
client's ref; the socket stays open) and dispatched. Frames over 64 KiB close the
socket with 1009 (the library's max_size). `keepalive` pings every socket every 20 s
and drops one that did not answer the last ping.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from socialhub.api.http.codec import JSON_MEDIA_TYPE
from socialhub.api.http.errors import STATUS, error_body
from socialhub.api.ws.codec import decode_frame, encode_error, frame_ref
from socialhub.api.ws.dispatch import Dispatcher
from socialhub.api.ws.hub import Hub
from socialhub.api.ws.session import Session
from socialhub.config import Rate
from socialhub.domain.protocol import (
    AUTH_TIMEOUT_SECONDS,
    CLOSE_CODES,
    CLOSE_RESTART,
    CLOSE_UNAUTHENTICATED,
    PING_INTERVAL_SECONDS,
    Authenticate,
    Authenticated,
    Frame,
    Ping,
    Pong,
)
from socialhub.errors import SocialhubError, Unavailable
from socialhub.services.sessions import SessionGuard

logger = logging.getLogger(__name__)

PATH = b"/ws"

# Sockets pinged in one go before the loop serves others: 10,000 pings at once would hold
# it for tens of milliseconds, a stall every interval in everyone's latency.
KEEPALIVE_BATCH = 256

_encoder = msgspec.json.Encoder()
_PONG = _encoder.encode(Pong())
# Error codes of a frame that leave the socket open: an oversized value in a valid frame
# is that frame's fault, and `unavailable` (the database or broker is down for a moment)
# is answered per frame so the client retries it on the same socket. A broker outage
# that lasts is told by closing with 1012, by the hub (see Hub.watch_broker).
_KEEP_OPEN = frozenset({"too_large", "unavailable"})


class SocketEndpoint:
    def __init__(self, *, guard: SessionGuard, hub: Hub, dispatcher: Dispatcher, rate: Rate | None) -> None:
        self.guard = guard
        self.hub = hub
        self.dispatcher = dispatcher
        self.rate = rate

    def take(self, transport: asyncio.Transport, head: bytes) -> None:
        """Serve a connection whose upgrade request for /ws (`head`, as read) the HTTP
        protocol has parsed: from now on its bytes come to a Session."""
        session = Session(self)
        transport.set_protocol(session)
        session.connection_made(transport)
        session.data_received(head)

    # -- the handshake -------------------------------------------------------------------------

    def answer(self, handshake: ServerProtocol, request: Request) -> Response:
        if self.hub.broker_down:
            return self._refuse(handshake)
        return handshake.accept(request)

    def _refuse(self, handshake: ServerProtocol) -> Response:
        """The broker is down (past the hub's grace): this socket could not hear other
        instances. Answer the upgrade as any request then: 503 `unavailable` with
        Retry-After (what a proxy in front would answer, and what /readyz says), so the
        client backs off and retries rather than meeting a socket that is open but deaf."""
        exc = Unavailable("the message broker is unavailable; reconnect shortly")
        refusal = handshake.reject(HTTPStatus(STATUS[exc.code]), "")
        body = error_body(exc.code, exc.message)
        headers = Headers(
            [
                ("Date", refusal.headers["Date"]),
                ("Connection", "close"),
                ("Content-Length", str(len(body))),
                ("Content-Type", JSON_MEDIA_TYPE),
                ("Retry-After", str(max(1, math.ceil(exc.retry_after)))),
            ]
        )
        return Response(refusal.status_code, refusal.reason_phrase, headers, body)

    def opened(self, session: Session) -> None:
        if self.hub.closing:
            session.close(CLOSE_RESTART, "server restarting")
            return
        session.deadline(AUTH_TIMEOUT_SECONDS, CLOSE_UNAUTHENTICATED, "authenticate within 10 s")

    # -- frames --------------------------------------------------------------------------------

    def receive(self, session: Session, raw: bytes) -> Coroutine[Any, Any, None] | None:
        if not session.user_id:
            return self._authenticate(session, raw)
        if not self._allow(session):
            session.send(encode_error("rate_limited", "more than 30 frames a second; frame dropped", frame_ref(raw)))
            return None
        try:
            frame = decode_frame(raw)
        except SocialhubError as exc:
            session.send(encode_error(exc.code, exc.message, frame_ref(raw), exc.fields))
            return None
        if type(frame) is Ping:  # answered at once: no task
            session.send(_PONG if frame.ref is None else _encoder.encode(Pong(ref=frame.ref)))
            return None
        return self._dispatch(session, frame)

    def _allow(self, session: Session) -> bool:
        """The socket's frame budget (GCRA): `rate.limit` per `rate.period`, bursts of `rate.burst`."""
        rate = self.rate
        if rate is None:
            return True
        now = asyncio.get_running_loop().time()
        interval = rate.interval
        tat = max(session.tat, now)
        if tat + interval - now > rate.burst * interval:
            return False
        session.tat = tat + interval
        return True

    async def _dispatch(self, session: Session, frame: Frame) -> None:
        try:
            await self.dispatcher.dispatch(session, frame)
        except SocialhubError as exc:
            # The message names the field; `fields` is kept to the decoder's own checks.
            session.send(encode_error(exc.code, exc.message, frame.ref))
            if exc.code in CLOSE_CODES and exc.code not in _KEEP_OPEN:
                session.close(CLOSE_CODES[exc.code], exc.message)
        except Exception:
            logger.exception("frame %s failed", type(frame).__name__)
            session.send(encode_error("internal", "internal error", frame.ref))

    async def _authenticate(self, session: Session, raw: bytes) -> None:
        # SPEC: the first frame must be authenticate. Anything else, a frame that is not JSON
        # or is nested too deep included, is answered `error unauthenticated`, then close 4401.
        ref = frame_ref(raw)
        try:
            frame = decode_frame(raw)
            if not isinstance(frame, Authenticate):
                raise SocialhubError("the first frame must be authenticate")
            principal = await self.guard.authenticate(frame.token)
        except Unavailable as exc:
            # The session could not be checked: not the token's fault, so not 4401 (which
            # tells the client to sign in again); it reconnects as after a restart.
            session.send(encode_error(exc.code, exc.message, ref))
            session.close(CLOSE_CODES[exc.code], "unavailable: reconnect shortly")
            return
        except SocialhubError:
            session.send(encode_error("unauthenticated", "authenticate with a valid access token", ref))
            session.close(CLOSE_UNAUTHENTICATED, "unauthenticated")
            return
        if session.closing:
            return
        if self.hub.broker_down:  # went down while this socket authenticated
            session.close(CLOSE_RESTART, "lost the broker connection: reconnect and resume")
            return
        if self.hub.closing:
            session.close(CLOSE_RESTART, "server restarting")
            return
        session.authenticated(principal.user_id, principal.session_id)
        session.in_hub = True  # from here on, the socket's end removes it from the hub
        try:
            await self.hub.add(session)
        except SocialhubError:
            # The broker would not take the subscription: reconnect as after a restart.
            session.close(CLOSE_RESTART, "unavailable: reconnect shortly")
            return
        session.send(_encoder.encode(Authenticated(user_id=str(session.user_id), session_id=str(session.session_id))))

    async def closed(self, session: Session) -> None:
        session.in_hub = False
        await self.hub.remove(session)

    # -- keepalive -----------------------------------------------------------------------------

    async def keepalive(self, stop: asyncio.Event) -> None:
        """A worker: every PING_INTERVAL_SECONDS, ping every socket (one timer for all of
        them, the same frame bytes for each) and drop those that did not answer the last."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), PING_INTERVAL_SECONDS)
            except TimeoutError:
                pass
            else:
                return
            every = [session for sessions in self.hub.users.values() for session in sessions]
            for start in range(0, len(every), KEEPALIVE_BATCH):
                for session in every[start : start + KEEPALIVE_BATCH]:
                    session.ping()
                await asyncio.sleep(0)  # frames of other sockets go in between
