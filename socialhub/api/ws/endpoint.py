"""GET /ws: authenticate, then read frames until the socket closes.

The first frame must be `authenticate` within AUTH_TIMEOUT_SECONDS, else close 4401. Every
later frame is checked against the socket's budget (30/s, bursts of 60: an `error
rate_limited` and the frame is dropped), decoded and validated (an `error` with the
client's ref; the socket stays open) and dispatched. Frames over 64 KiB close the
socket with 1009 (uvicorn's ws_max_size); uvicorn also pings every 20 s and drops a
socket that does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import math

import msgspec
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from socialhub.api.http.errors import error_response
from socialhub.api.ws.codec import decode_frame, encode_error, frame_ref
from socialhub.api.ws.dispatch import Dispatcher
from socialhub.api.ws.hub import Hub
from socialhub.api.ws.session import Session
from socialhub.config import Rate
from socialhub.domain.protocol import (
    AUTH_TIMEOUT_SECONDS,
    CLOSE_CODES,
    CLOSE_RESTART,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHENTICATED,
    MAX_FRAME_BYTES,
    Authenticate,
    Authenticated,
)
from socialhub.errors import SocialhubError, Unavailable
from socialhub.services.sessions import SessionGuard

logger = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
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

    def routes(self) -> list[WebSocketRoute]:
        return [WebSocketRoute("/ws", self.serve)]

    async def serve(self, websocket: WebSocket) -> None:
        if self.hub.broker_down:
            await self._refuse(websocket)
            return
        await websocket.accept()
        if self.hub.closing:
            await websocket.close(CLOSE_RESTART, "server restarting")
            return
        try:
            session = await self._authenticate(websocket)
        except WebSocketDisconnect:
            return
        if session is None:
            return
        if self.hub.broker_down:  # went down while this socket authenticated
            await websocket.close(CLOSE_RESTART, "lost the broker connection: reconnect and resume")
            return
        session.start()
        await self.hub.add(session)
        try:
            session.send(
                _encoder.encode(Authenticated(user_id=str(session.user_id), session_id=str(session.session_id)))
            )
            await self._read(websocket, session)
        finally:
            await session.flush_and_stop()
            await self.hub.remove(session)

    async def _refuse(self, websocket: WebSocket) -> None:
        """The broker is down (past the hub's grace): this socket could not hear other
        instances. Answer the upgrade as any request then: 503 `unavailable` with
        Retry-After (what a proxy in front would answer, and what /readyz says), so the
        client backs off and retries rather than meeting a socket that is open but deaf.
        A server without the denial extension gets the WebSocket equivalent: close 1013."""
        exc = Unavailable("the message broker is unavailable; reconnect shortly")
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
            await websocket.send_denial_response(error_response(exc.code, exc.message, headers=headers))
            return
        await websocket.accept()
        await websocket.close(CLOSE_TRY_AGAIN_LATER, "broker unavailable: reconnect shortly")

    async def _authenticate(self, websocket: WebSocket) -> Session | None:
        try:
            raw = await asyncio.wait_for(self._receive(websocket), AUTH_TIMEOUT_SECONDS)
        except TimeoutError:
            await websocket.close(CLOSE_UNAUTHENTICATED, "authenticate within 10 s")
            return None
        if raw is None:
            return None
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
            await websocket.send_text(encode_error(exc.code, exc.message, ref).decode())
            await websocket.close(CLOSE_CODES[exc.code], "unavailable: reconnect shortly")
            return None
        except SocialhubError:
            await websocket.send_text(
                encode_error("unauthenticated", "authenticate with a valid access token", ref).decode()
            )
            await websocket.close(CLOSE_UNAUTHENTICATED, "unauthenticated")
            return None
        return Session(websocket, principal.user_id, principal.session_id, self.rate)

    async def _receive(self, websocket: WebSocket) -> bytes | None:
        """The next frame's bytes; None when the socket is gone."""
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        data = message.get("bytes")
        if data is None:
            text = message.get("text") or ""
            data = text.encode()
        if len(data) > MAX_FRAME_BYTES:
            await websocket.close(CLOSE_TOO_BIG, "frame over 64 KiB")
            return None
        return data

    async def _read(self, websocket: WebSocket, session: Session) -> None:
        while not session.closing:
            try:
                raw = await self._receive(websocket)
            except WebSocketDisconnect:
                return
            if raw is None:
                return
            if not session.budget.allow():
                session.send(
                    encode_error("rate_limited", "more than 30 frames a second; frame dropped", frame_ref(raw))
                )
                continue
            try:
                frame = decode_frame(raw)
            except SocialhubError as exc:
                session.send(encode_error(exc.code, exc.message, frame_ref(raw), exc.fields))
                continue
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
